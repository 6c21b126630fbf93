"""sparekit: detect, predict and steer context-memory knowledge conflicts in causal LMs.

Layer L everywhere in sparekit is the output of decoder block L (``hidden_states[L + 1]``).

The public names below are imported on first use, deliberately (:mod:`sparekit.utils.lazy`):
``import sparekit``, and so ``sparekit --help``, must not pay for torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparekit.errors import SparekitError
from sparekit.utils.lazy import lazy_attributes

if TYPE_CHECKING:
    from sparekit.hooks import Hooks, Site
    from sparekit.models import LoadedModel, ModelInfo, load_model
    from sparekit.probes.detect import detect
    from sparekit.saved import load

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_attributes(__name__, {
    "Hooks": "sparekit.hooks", "Site": "sparekit.hooks", "LoadedModel": "sparekit.models",
    "ModelInfo": "sparekit.models", "load_model": "sparekit.models", "load": "sparekit.saved",
    "detect": "sparekit.probes.detect"})

__all__ = ["Hooks", "LoadedModel", "ModelInfo", "Site", "SparekitError", "__version__", "detect", "load",
           "load_model"]
