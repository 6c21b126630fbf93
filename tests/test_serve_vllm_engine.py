"""``sparekit serve --engine vllm``: the launch command, and one error line where vLLM or the plugin is missing
(the plugin itself is tested in its own environment: plugins/vllm/tests, scripts/test_vllm.sh)."""

from __future__ import annotations

import socket
import subprocess
import sys

from sparekit.serve.vllm import VLLM_EXTENSION, VLLM_MIDDLEWARE, vllm_command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_without_vllm_it_is_one_error_line():
    out = subprocess.run([sys.executable, "-m", "sparekit", "serve", "--engine", "vllm", "--vllm-python",
                          sys.executable, "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: --engine vllm needs vLLM and the sparekit-vllm plugin in ")
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_builtin_only_options_are_refused_with_vllm():
    out = subprocess.run([sys.executable, "-m", "sparekit", "serve", "--engine", "vllm", "--kv-compress", "0.5",
                          "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--kv-compress and --device are options of the builtin engine" in out.stderr


def test_the_vllm_command_loads_the_plugin_in_eager_mode():
    cmd = vllm_command("/venv/bin/python", "/models/gemma", "default", "0.0.0.0", 8001, "--max-model-len 2048")
    assert cmd[:4] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model"]
    assert "--enforce-eager" in cmd and cmd[cmd.index("--worker-extension-cls") + 1] == VLLM_EXTENSION
    assert cmd[cmd.index("--middleware") + 1] == VLLM_MIDDLEWARE and cmd[-2:] == ["--max-model-len", "2048"]
