"""Shared fixtures: tiny random models of every architecture, and the real default model.

Tests never touch the hub. The default model (Gemma 3 270M from PyPI) is loaded once
per session; tests that need it are marked ``slow`` only for selection, they run in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from sparekit.models.tiny import TINY_CONFIGS, tiny_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
NQSWAP_DEV = SHARED / "data" / "nqswap" / "dev.jsonl.gz"


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny_lm(request):
    """A tiny random model for each supported architecture."""
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def default_lm():
    """The embedded default model, Gemma 3 270M (float32, CPU)."""
    from sparekit.models import load_model

    return load_model("default", device="cpu")


@pytest.fixture(scope="session")
def nqswap_path() -> Path:
    if not NQSWAP_DEV.is_file():
        pytest.fail(f"shared NQ-Swap file missing at {NQSWAP_DEV}: CI must place ../shared beside the repo")
    return NQSWAP_DEV
