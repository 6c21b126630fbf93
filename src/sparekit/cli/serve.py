"""``sparekit serve``: the conflict-aware answer server, one model per process."""

from __future__ import annotations

from pathlib import Path

import click

from sparekit.cli.common import device_option, model_option
from sparekit.cli.config import dataclass_options
from sparekit.serve.limits import Limits


@click.command()
@model_option
@device_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--probe", "probe_dir", type=click.Path(path_type=Path), default=None,
              help="Conflict/source probes (default: the last `sparekit probe` run, then the shipped ones).")
@click.option("--fitted", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="A fitted method folder (<run>/fitted/<method>); repeatable. Default: the shipped ones.")
@click.option("--kv-compress", "kv_ratio", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Share of each prompt's KV cache to evict by key L2 norm after the prompt pass (sparekit.kv).")
@click.option("--prefix-cache/--no-prefix-cache", default=True, show_default=True,
              help="Compute a prompt prefix that requests share (the demonstrations) once and reuse its KV cache.")
@dataclass_options(Limits, "limits")
def serve(model, device, host, port, probe_dir, fitted, kv_ratio, prefix_cache, limits: Limits) -> None:
    """Serve MODEL over HTTP: OpenAI-compatible /v1/completions, /v1/answer, /metrics, a playground at /.

    \b
    Example:
      sparekit serve --port 8000 &
      curl -s localhost:8000/v1/answer -d '{"context": "The capital of France is Porto-Novo.",
        "question": "What is the capital of France?", "steer": {"toward": "memory"}}'
    """
    try:
        from sparekit.serve import Server, build_engine, create_app
    except ImportError as exc:
        from sparekit.errors import SparekitError

        raise SparekitError(f"sparekit serve needs {exc.name}", "pip install 'sparekit[serve]'") from None
    from sparekit.models import load_model

    engine = build_engine(load_model(model, device=device), probe_dir, fitted, kv_ratio, prefix_cache)
    detect = "yes" if engine.can_detect else "no"
    click.echo(f"sparekit serve: {engine.lm.info.name} on http://{host}:{port}  (detect: {detect}; "
               f"methods: {', '.join(engine.method_names())}; playground at /)", err=True)
    Server(create_app(engine, limits), host=host, port=port, log_level="warning").run()
