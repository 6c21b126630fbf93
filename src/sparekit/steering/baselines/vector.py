"""``cvec``: a fixed vector added to the residual stream at each of several layers.

Fitted, it is ActAdd at several layers: ``v_L = mean_context(h_L) - mean_memory(h_L)``, the edit
``h_L + sign · strength · v_L`` (what repeng's and llama.cpp's ``cvector-generator --method mean``
compute). It is also what ``sparekit.load("x.gguf")`` makes of a llama.cpp / repeng control vector
(:mod:`sparekit.steering.control_vector`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.models.loading import LoadedModel
from sparekit.models.placement import site_device
from sparekit.steering.base import BehaviourData, ControlVector, Direction, EditFn, register, shift_edit
from sparekit.steering.layered import MultiLayerMethod
from sparekit.steering.control_vector import read_control_vector


@register("cvec")
class VectorSteering(MultiLayerMethod):
    """Add a fixed vector per layer: a multi-layer ActAdd, or a control vector brought from a GGUF.

    ``fit`` learns the context-minus-memory mean difference at each of ``layers`` (what repeng's
    and llama.cpp's ``cvector-generator --method mean`` compute). A loaded GGUF's vectors point
    toward ``toward_`` (the ``sparekit.toward`` it was exported with; ``context`` for a foreign
    file) at strength 1, so ``strength=1`` reproduces the file and the other direction negates it.
    """

    strength_grid = (0.5, 1.0, 2.0, 4.0)
    default_strength = 1.0

    def __init__(self, layers: tuple[int, ...] = (6,)):
        self.layers_param = layers

    def fit(self, data: BehaviourData) -> VectorSteering:
        data.require_both_classes(self.kind)
        self.vector_: dict[int, torch.Tensor] = {}
        for layer in self.layers:
            mean_context, mean_memory = data.group_means(layer, self.kind)
            self.vector_[layer] = mean_context - mean_memory
        self.toward_: Direction = "context"
        self.fitted_ = True
        return self

    def vector(self, layer: int) -> torch.Tensor:
        return self.vector_[layer]

    def control_vector(self, toward: Direction, strength: float) -> ControlVector:
        sign = 1.0 if toward == self.toward_ else -1.0
        return ControlVector({layer: sign * float(strength) * self.vector(layer) for layer in self.layers}, exact=True)

    def edits(self, lm: LoadedModel, toward: Direction, strength: float | None) -> list[tuple[Site, EditFn]]:
        shifts = self.control_vector(toward, float(strength)).vectors
        sizes = {int(shift.numel()) for shift in shifts.values()}
        if sizes != {lm.info.d_model}:
            raise SparekitError(f"cvec: vectors of size {sorted(sizes)} do not fit {lm.info.name} (d_model "
                                f"{lm.info.d_model})", "use vectors fitted on or exported for this model")
        return [(Site(lm.info.check_layer(layer)), shift_edit(shift.to(site_device(lm, layer))))
                for layer, shift in shifts.items()]

    def state_extra(self) -> dict[str, Any]:
        return {"toward": self.toward_}

    def load_extra(self, extra: dict[str, Any]) -> None:
        self.toward_ = extra.get("toward", "context")

    @classmethod
    def from_control_vector(cls, path: str | Path) -> VectorSteering:
        """A fitted ``cvec`` holding the directions of a llama.cpp / repeng control-vector GGUF."""
        vectors, meta = read_control_vector(path)
        toward = meta.get("sparekit.toward", "context")
        if toward not in ("context", "memory"):
            raise SparekitError(f"{path}: sparekit.toward is {toward!r}, not 'context' or 'memory'")
        method = cls(layers=tuple(sorted(vectors)))
        method.vector_ = vectors
        method.toward_ = toward
        method.fitted_ = True
        return method
