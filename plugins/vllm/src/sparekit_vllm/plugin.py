"""The ``vllm.general_plugins`` entry point: vLLM calls :func:`register` in each of its processes.

It checks, once per process, that sparekit's transformers-free readers are importable (sparekit
installed with ``pip install --no-deps`` beside vLLM), so a missing install is one clear line at
start-up rather than an error on the first request. The work itself is the worker extension
(:mod:`sparekit_vllm.worker`) and the API middleware (:mod:`sparekit_vllm.api`).
"""

from __future__ import annotations

import importlib.util
import logging

log = logging.getLogger(__name__)


def register() -> None:
    if importlib.util.find_spec("sparekit") is None:
        raise RuntimeError("sparekit-vllm needs sparekit in vLLM's environment: pip install --no-deps sparekit")
    log.debug("sparekit-vllm plugin loaded")
