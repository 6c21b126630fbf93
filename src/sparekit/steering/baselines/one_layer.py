"""Shared base of the methods that learn from, and edit, the residual stream after one block."""

from __future__ import annotations

import torch

from sparekit.hooks import Site
from sparekit.steering.base import BehaviourData, SteeringMethod


class OneLayerMethod(SteeringMethod):
    """Subclasses take a ``layer`` parameter; this reads its behaviour hidden states."""

    layer: int

    @property
    def layers(self) -> tuple[int, ...]:
        return (int(self.layer),)

    @property
    def site(self) -> Site:
        return Site(int(self.layer))

    def labelled_hidden(self, data: BehaviourData) -> torch.Tensor:
        """``[n, d]`` float32 hidden states at ``layer``, after checking both behaviours occur."""
        data.require_both_classes(self.kind)
        return data.layer(int(self.layer), self.kind)
