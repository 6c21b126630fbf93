"""Model loading and architecture description (see :mod:`sparekit.models.architecture` for layer indexing)."""

from sparekit.models.architecture import SUPPORTED_ARCHITECTURES, ModelInfo, describe
from sparekit.models.loading import LoadedModel, default_device, from_modules, load_model, parameter_hash

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
