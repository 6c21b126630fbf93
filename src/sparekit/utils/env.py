"""Environment capture and seeding, recorded with every run for reproducibility."""

from __future__ import annotations

import importlib.metadata
import platform
import random

import numpy as np
import torch

_PACKAGES = ("sparekit", "torch", "transformers", "safetensors", "numpy", "scikit-learn", "gguf", "accelerate")


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None when missing)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment_info() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "cuda": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
