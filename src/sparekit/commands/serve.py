"""``sparekit serve``: the conflict-aware answer server, one model per process.

Its options are the server's :class:`~sparekit.serve.limits.Limits` (inherited field by field) and
what to serve; built without FastAPI, so ``sparekit serve --help`` needs no ``serve`` extra.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sparekit.errors import SparekitError
from sparekit.serve import vllm
from sparekit.serve.limits import Limits
from sparekit.utils.config import device_field, model_field, option


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


def _quiet(served: dict) -> None:
    """The default ``on_ready``: say nothing."""


@dataclass(frozen=True)
class ServeCommand(Limits):
    """What to serve and how, plus every bound the server enforces (:class:`Limits`' fields)."""

    __cli__ = {}  # noqa: RUF012  (names this class's own fields, so they lead --help, before the limits)

    model: str = model_field()
    device: str | None = device_field()
    host: str = option("127.0.0.1", help="Interface to listen on (0.0.0.0: all).")
    port: int = option(8000, min=1, max=65535,
                       help="Port to listen on (refused before the model loads if another process holds it).")
    probe: str | None = option(None, metavar="PATH",
                               help="Conflict/source probes (default: the last `sparekit probe` run, then the "
                                    "shipped ones).")
    fitted: tuple[str, ...] = option((), multiple=True, metavar="DIRECTORY",
                                     help="A fitted method folder (<run>/fitted/<method>); repeatable. Default: the "
                                          "shipped ones.")
    kv_ratio: float = option(0.0, flag="--kv-compress", min=0, max=1, max_open=True,
                             help="Share of each prompt's KV cache to evict by key L2 norm after the prompt pass "
                                  "(sparekit.kv).")
    prefix_cache: bool = option(True, flag="--prefix-cache/--no-prefix-cache",
                                help="Compute a prompt prefix that requests share (the demonstrations) once and reuse "
                                     "its KV cache.")
    batching: str = option("retire", choices=("retire", "continuous", "static"),
                           help="retire: a finished row leaves the batch at once; continuous: waiting requests also "
                                "join a running batch (slower on a CPU: BENCHMARKS.md); static: rows wait for the "
                                "batch's longest.")
    engine: str = option("builtin", choices=("builtin", "vllm"),
                         help="builtin: sparekit's own server; vllm: vLLM's OpenAI server with the sparekit-vllm "
                              "plugin.")
    vllm_python: str | None = option(None, show_default="$SPAREKIT_VLLM_PYTHON, else this Python",
                                     help="--engine vllm: the Python of the environment holding vLLM and the plugin.")
    vllm_args: str = option("", show_default=False,
                            help="--engine vllm: more `vllm serve` options, in one quoted string.")

    def __post_init__(self) -> None:
        if self.engine == "vllm" and (self.kv_ratio or self.device):
            raise SparekitError("--kv-compress and --device are options of the builtin engine",
                                "vLLM picks its device itself; pass its options with --vllm-args")

    def limits(self) -> Limits:
        """The server's bounds, built by name (reordering :class:`Limits` cannot swap two of them)."""
        return Limits(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Limits)})

    def run(self, on_ready: Callable[[dict], None] = _quiet) -> dict:
        """Serve until stopped; ``on_ready`` hears what is served (model, url, engine …) once it can answer,
        and the same is returned when the server stops. ``--engine vllm`` replaces this process."""
        check_port(self.host, self.port)
        if self.engine == "vllm":
            self._exec_vllm(on_ready)
        # deliberately lazy: the model stack imports torch and transformers
        from sparekit.models import load_model
        from sparekit.probes.detect import resolve_probe_dir  # lazy, as above
        from sparekit.serve.engine import build_engine  # lazy, as above

        try:
            from sparekit.serve.app import Server, create_app  # optional dependencies: the `serve` extra (FastAPI)
        except ImportError as exc:
            raise SparekitError(f"sparekit serve needs {exc.name}", "pip install 'sparekit[serve]'") from None

        if self.probe is not None:
            resolve_probe_dir(self.probe)  # a missing or damaged probe folder fails before the model loads
        engine = build_engine(load_model(self.model, device=self.device), None if self.probe is None else
                              Path(self.probe), tuple(map(Path, self.fitted)), self.kv_ratio, self.prefix_cache,
                              self.batching)
        served = {"model": engine.lm.info.name, "url": f"http://{self.host}:{self.port}", "engine": "builtin",
                  "detect": engine.can_detect, "methods": engine.method_names()}
        on_ready(served)
        Server(create_app(engine, self.limits()), host=self.host, port=self.port, log_level="warning").run()
        return served

    def _exec_vllm(self, on_ready: Callable[[dict], None]) -> None:
        """Replace this process by vLLM's OpenAI server with the plugin, on sparekit's cached model folder."""
        python = self.vllm_python or os.environ.get("SPAREKIT_VLLM_PYTHON", sys.executable)
        vllm.check_vllm(python)
        folder = vllm.vllm_folder(self.model)
        on_ready({"model": self.model, "url": f"http://{self.host}:{self.port}", "engine": "vllm", "python": python})
        vllm.exec_vllm(python, vllm.vllm_command(python, str(folder), self.model, self.host, self.port, self.vllm_args),
                       vllm.plugin_env(folder, self.probe, self.fitted, self.max_strength))
