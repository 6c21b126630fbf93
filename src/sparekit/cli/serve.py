"""``sparekit serve``: the conflict-aware answer server, one model per process."""

from __future__ import annotations

import socket
from pathlib import Path

import click

from sparekit.cli.common import device_option, model_option
from sparekit.cli.config import dataclass_options
from sparekit.errors import SparekitError
from sparekit.serve.limits import Limits


def check_port(host: str, port: int) -> None:
    """Refuse an address another process holds (or a host that does not resolve) before the model loads:
    uvicorn would only find out after it, and exit 3 with its own log line."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as exc:
        raise SparekitError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                            "choose another --port or --host, or stop the process using it") from None


@click.command()
@model_option
@device_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535),
              help="Port to listen on (refused before the model loads if another process holds it).")
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
      curl -s localhost:8000/v1/answer -H 'Content-Type: application/json' \\
        -d '{"context": "The capital of France is Porto-Novo.", "question": "What is the capital of France?",
             "steer": {"toward": "memory"}}'
    """
    try:
        from sparekit.serve import Server, build_engine, create_app
    except ImportError as exc:
        raise SparekitError(f"sparekit serve needs {exc.name}", "pip install 'sparekit[serve]'") from None
    from sparekit.models import load_model

    from sparekit.probes.detect import resolve_probe_dir

    check_port(host, port)
    if probe_dir is not None:
        resolve_probe_dir(probe_dir)  # a missing or damaged probe folder fails before the model loads
    engine = build_engine(load_model(model, device=device), probe_dir, fitted, kv_ratio, prefix_cache)
    detect = "yes" if engine.can_detect else "no"
    click.echo(f"sparekit serve: {engine.lm.info.name} on http://{host}:{port}  (detect: {detect}; "
               f"methods: {', '.join(engine.method_names())}; playground at /)", err=True)
    Server(create_app(engine, limits), host=host, port=port, log_level="warning").run()
