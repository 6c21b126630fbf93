"""``sparekit serve``: a conflict-aware answer server (OpenAI-compatible completions, ``/v1/answer``).

Needs the ``serve`` extra (``pip install 'sparekit[serve]'``: FastAPI, uvicorn, prometheus-client)
for the app. :class:`Limits` does not (the command's options are made from it), so the
other names are imported on first use, deliberately.
"""

from __future__ import annotations

import importlib
from typing import Any

from sparekit.serve.limits import Limits

_APP, _ENGINE = "sparekit.serve.app", "sparekit.serve.engine"
_LAZY = {"Server": _APP, "create_app": _APP, "serve_in_thread": _APP, "Engine": _ENGINE, "build_engine": _ENGINE,
         "load_steering": _ENGINE}


def __getattr__(name: str) -> Any:
    """The app's and the engine's names, imported on first use (FastAPI is an optional extra)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = ["Engine", "Limits", "Server", "build_engine", "create_app", "load_steering", "serve_in_thread"]
