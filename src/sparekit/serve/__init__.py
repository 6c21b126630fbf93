"""``sparekit serve``: a conflict-aware answer server (OpenAI-compatible completions, ``/v1/answer``).

Needs the ``serve`` extra (``pip install 'sparekit[serve]'``: FastAPI, uvicorn, prometheus-client).
"""

from sparekit.serve.app import Limits, Server, create_app, serve_in_thread
from sparekit.serve.engine import Engine, build_engine, load_steering

__all__ = ["Engine", "Limits", "Server", "build_engine", "create_app", "load_steering", "serve_in_thread"]
