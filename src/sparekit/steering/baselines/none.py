"""``none``: the unsteered model, so every comparison goes through the same interface."""

from __future__ import annotations

from sparekit.steering.base import SteeringMethod, register


@register("none")
class NoSteering(SteeringMethod):
    """No edits, no rewriting, no logits processing; fitting learns nothing."""

    directional = False
    #: nothing to learn, so it steers without fit(): make_method("none").steer(...) is the unsteered model
    fitted_ = True

    def __init__(self) -> None:
        pass
