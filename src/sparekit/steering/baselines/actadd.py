"""``actadd``: add the context-minus-memory mean difference to the residual stream.

``v = mean_context(h) - mean_memory(h)`` at ``layer``; the edit at the last prompt token
is ``h + sign · strength · v`` (sign +1 toward context, -1 toward memory).
"""

from __future__ import annotations

from sparekit.hooks import Site
from sparekit.models.loading import LoadedModel
from sparekit.models.placement import site_device
from sparekit.steering.base import (
    BehaviourData,
    ControlVector,
    Direction,
    EditFn,
    register,
    shift_edit,
    with_strength_sign,
)
from sparekit.steering.layered import OneLayerMethod


@register("actadd")
class ActAdd(OneLayerMethod):
    """Activation addition with the behaviour groups' mean difference at one layer."""

    strength_grid = (1.0, 2.0, 4.0, 8.0)
    default_strength = 4.0

    def __init__(self, layer: int = 6):
        self.layer = layer

    def fit(self, data: BehaviourData) -> ActAdd:
        data.require_both_classes(self.kind)
        mean_context, mean_memory = data.group_means(int(self.layer), self.kind)
        self.vector_ = mean_context - mean_memory
        self.fitted_ = True
        return self

    def control_vector(self, toward: Direction, strength: float) -> ControlVector:
        return ControlVector({int(self.layer): with_strength_sign(toward) * float(strength) * self.vector_}, exact=True)

    def edits(self, lm: LoadedModel, toward: Direction, strength: float | None) -> list[tuple[Site, EditFn]]:
        shift = self.control_vector(toward, float(strength)).vectors[int(self.layer)]
        return [(self.site, shift_edit(shift.to(site_device(lm, int(self.layer)))))]
