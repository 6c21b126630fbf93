"""Shared bases of the methods that learn from, and edit, the residual stream after one block or several."""

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


class MultiLayerMethod(SteeringMethod):
    """Subclasses take a ``layers`` parameter (stored as ``layers_param``: ``layers`` is the base's property)."""

    layers_param: tuple[int, ...]

    @property
    def layers(self) -> tuple[int, ...]:  # type: ignore[override]
        return tuple(int(x) for x in self.layers_param)

    @layers.setter
    def layers(self, value) -> None:
        self.layers_param = tuple(int(x) for x in value)
