"""Shared by the real-engine tests (``test_vllm_engine.py``, ``test_vllm_chunked.py``): the reference that
``make_reference.py`` writes, an engine on the default model with the plugin, and one batched generate."""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

vllm = pytest.importorskip("vllm")

from sparekit.serve.options import RowSteer  # noqa: E402

from sparekit_vllm.options import Plan  # noqa: E402

MODEL = Path.home() / ".cache/sparekit/models/gemma-3-270m"
REFERENCE = os.environ.get("SPAREKIT_VLLM_REFERENCE", "")
NEEDS = pytest.mark.skipif(not Path(REFERENCE).is_file() or not MODEL.is_dir(),
                           reason="needs SPAREKIT_VLLM_REFERENCE (make_reference.py) and the cached default model")


def load_reference() -> dict:
    return json.loads(Path(REFERENCE).read_text())


def engine_with_plugin(reference: dict, **engine_args: Any) -> Iterator[tuple[Any, list]]:
    """The engine on the reference's fitted folders, and its plain answers (logprobs included) taken before
    the plugin is installed; shut down afterwards, so the next module's engine has the memory.

    The engine core runs in this process: every ``generate`` then schedules the same batches from the same
    prompts (a separate core process starts stepping while requests still arrive, so a batch's make-up, and
    the last bits of its logprobs, would follow the machine's load rather than the plugin)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["SPAREKIT_VLLM_MODEL"] = str(MODEL)
    os.environ["SPAREKIT_VLLM_FITTED"] = os.pathsep.join(reference.get("fitted", []))
    llm = vllm.LLM(model=str(MODEL), dtype="float32", enforce_eager=True, max_model_len=1024, seed=0,
                   worker_extension_cls="sparekit_vllm.worker.SparekitWorkerExtension", **engine_args)
    plain = generate(llm, reference["prompts"], [None] * len(reference["prompts"]), reference["max_tokens"])
    llm.collective_rpc("sparekit_install")
    yield llm, plain
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def generate(llm, prompts: list[str], plans: list[Plan | None], max_tokens: int) -> list:
    """Each prompt's request output (``outputs[0]``: token ids, text, logprobs; ``num_cached_tokens``)."""
    params = [vllm.SamplingParams(temperature=0, max_tokens=max_tokens, logprobs=1,
                                  extra_args=plan.extra_args() if plan else None) for plan in plans]
    return llm.generate(prompts, params, use_tqdm=False)


def take(llm, key: str) -> dict:
    return next(r for r in llm.collective_rpc("sparekit_take", args=(key,)) if r is not None)


def steer_of(reference: dict, key: str) -> RowSteer:
    """The reference's setting ``method/toward`` at its tuned strength."""
    method, toward = key.split("/")
    return RowSteer(method, toward, reference["strengths"][key])


def settings(reference: dict) -> list[str]:
    """Every steered setting of the reference (``method/toward``)."""
    return [k for k in reference["answers"] if k != "none"]


def agreement(ours: list[str], theirs: list[str]) -> float:
    return sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(theirs)
