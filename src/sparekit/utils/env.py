"""Environment capture and seeding, recorded with every run for reproducibility."""

from __future__ import annotations

import importlib.metadata
import platform
import random

import numpy as np
import torch

_PACKAGES = ("sparekit", "torch", "transformers", "safetensors", "numpy", "scikit-learn", "gguf", "accelerate")


def environment_info() -> dict[str, object]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "cuda": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
