"""Environment capture and seeding, recorded with every run for reproducibility."""

from __future__ import annotations

import importlib.metadata
import platform
import random

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


def versions_info() -> dict[str, object]:
    """Python, platform and package versions: what is known without importing torch (``sparekit info``'s start)."""
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": package_versions()}


def environment_info() -> dict[str, object]:
    import torch  # deliberately lazy: versions_info and package_versions stay torch-free for `sparekit info`

    return {**versions_info(), "cuda": torch.cuda.is_available(), "threads": torch.get_num_threads()}


def seed_everything(seed: int) -> None:
    import numpy as np  # deliberately lazy, as in environment_info
    import torch  # lazy, as above

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
