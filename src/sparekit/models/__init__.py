"""Model loading and architecture description (see :mod:`sparekit.models.architecture` for layer indexing).

Imported on first use, deliberately (:mod:`sparekit.utils.lazy`): ``from sparekit.models.x import y``
runs this file, and :mod:`sparekit.models.loading` pulls in transformers (seconds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparekit.utils.lazy import lazy_attributes

if TYPE_CHECKING:
    from sparekit.models.architecture import SUPPORTED_ARCHITECTURES, ModelInfo, describe
    from sparekit.models.loading import LoadedModel, default_device, from_modules, load_model, parameter_hash

_ARCH, _LOAD = "sparekit.models.architecture", "sparekit.models.loading"
__getattr__, __dir__ = lazy_attributes(__name__, {
    "SUPPORTED_ARCHITECTURES": _ARCH, "ModelInfo": _ARCH, "describe": _ARCH, "LoadedModel": _LOAD,
    "default_device": _LOAD, "from_modules": _LOAD, "load_model": _LOAD, "parameter_hash": _LOAD})

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "LoadedModel",
    "ModelInfo",
    "default_device",
    "describe",
    "from_modules",
    "load_model",
    "parameter_hash",
]
