"""sparekit: detect, predict and steer context-memory knowledge conflicts in causal LMs.

Layer L everywhere in sparekit is the output of decoder block L (``hidden_states[L + 1]``).
"""

from sparekit.saved import load
from sparekit.errors import SparekitError
from sparekit.hooks import Hooks, Site
from sparekit.models import LoadedModel, ModelInfo, load_model

__version__ = "0.1.0"

__all__ = ["Hooks", "LoadedModel", "ModelInfo", "Site", "SparekitError", "__version__", "load",
           "load_model"]
