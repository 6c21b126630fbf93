"""Steering methods behind one interface (see :mod:`sparekit.steering.base`).

Importing this package registers every method; ``make_method(kind, **params)`` builds one
and ``sparekit.load(path, expect=SteeringMethod)`` restores a saved one; a :class:`FittedBundle`
holds a label's dev-tuned methods per direction and its gate.
"""

from sparekit.steering.base import (
    DIRECTIONS,
    REGISTRY,
    BehaviourData,
    Direction,
    Gate,
    Steered,
    SteeringMethod,
    SteeringPrompt,
    fitted_without_data,
    make_method,
)
from sparekit.steering.behaviour import behaviour_prompts, collect_behaviour_data
from sparekit.steering import baselines  # noqa: F401  (registers the baselines)
from sparekit.steering.baselines import VectorSteering
from sparekit.steering.combined import Combined
from sparekit.steering.fitted import FittedBundle, FittedSteering
from sparekit.steering.spare import SpARE

__all__ = [
    "DIRECTIONS", "REGISTRY", "BehaviourData", "Combined", "Direction", "FittedBundle", "FittedSteering", "Gate",
    "SpARE", "Steered", "SteeringMethod", "SteeringPrompt", "VectorSteering", "behaviour_prompts",
    "collect_behaviour_data", "fitted_without_data", "make_method",
]
