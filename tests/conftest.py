"""Shared fixtures: tiny random models of every architecture, and the real default model.

Tests never touch the hub. The default model (Gemma 3 270M from PyPI) is loaded once
per session; tests that need it are marked ``slow`` only for selection, they run in CI.
``SPAREKIT_TEST_DEVICE=cuda`` puts these fixtures' models on a GPU (CI has none; the CLI
defaults to a GPU wherever one exists).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
TEST_DEVICE = os.environ.get("SPAREKIT_TEST_DEVICE", "cpu")

from sparekit.models.tiny import TINY_CONFIGS, tiny_model  # noqa: E402

from sparekit.data.loaders import NQSWAP_LOCAL as NQSWAP_DEV  # noqa: E402  (shipped inside the package)


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny_lm(request):
    """A tiny random model for each supported architecture."""
    return _on_test_device(tiny_model(request.param))


@pytest.fixture(scope="session")
def tiny_llama():
    return _on_test_device(tiny_model("llama"))


@pytest.fixture(scope="session")
def tiny_llama_few_shot():
    """The tiny random llama with room for the benchmark's few-shot prompts (hundreds of character tokens)."""
    lm = tiny_model("llama")
    lm.model.config.max_position_embeddings = 2048
    return lm


def _on_test_device(lm):
    lm.model.to(TEST_DEVICE)
    return lm


@pytest.fixture(scope="session")
def default_lm():
    """The embedded default model, Gemma 3 270M (float32)."""
    from sparekit.models import load_model

    return load_model("default", device=TEST_DEVICE)


@pytest.fixture(scope="session")
def nqswap_path() -> Path:
    if not NQSWAP_DEV.is_file():
        pytest.fail(f"the NQ-Swap dev file is missing from the package at {NQSWAP_DEV}")
    return NQSWAP_DEV


@pytest.fixture
def tiny_probe_setup(tiny_llama, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """``(model folder, dataset)`` for a `sparekit probe` run on the tiny model, with memorisation and answers
    faked (it knows nothing) and no shipped assets; the run itself is the test's."""
    import json

    from sparekit.models import assets
    from sparekit.probes import experiment

    folder = tmp_path / "model"
    tiny_llama.model.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    rows = [{"id": f"r{i}", "question": f"q{i}", "org_context": f"it is {i}", "org_answer": [f"o{i}"],
             "sub_context": f"it is x{i}", "sub_answer": [f"s{i}"]} for i in range(16)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(experiment, "memorised_subset", lambda lm, dataset, **kw: dataset)
    monkeypatch.setattr(experiment, "generate_keyed", lambda lm, prompts, *a: {
        k: (f"s{k[1:]}" if int(k[1:]) % 2 else f"o{k[1:]}") for k in prompts})
    monkeypatch.setattr(assets, "ROOT", tmp_path / "no-shipped-assets")
    return folder, data
