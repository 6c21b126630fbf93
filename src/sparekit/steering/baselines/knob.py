"""``knob``: one direction at one layer that switches context vs memory (Minder et al.).

A standardised, seeded logistic regression separates uses-context from uses-memory
hidden states at ``layer``; ``u`` is its weight mapped back to activation space
(``w / σ``), unit length, oriented so the context group projects higher. With ``p_C``
and ``p_M`` the groups' mean projections and ``gap = p_C - p_M``, the edit sets the
coordinate along ``u`` to a target and leaves the orthogonal part alone::

    h' = h + (t - u·h) u,   t = p_C + strength · gap (context)  or  p_M - strength · gap (memory)
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from sparekit.hooks import Site
from sparekit.models.loading import LoadedModel
from sparekit.models.placement import site_device
from sparekit.steering.base import BehaviourData, ControlVector, Direction, EditFn, register
from sparekit.steering.layered import OneLayerMethod
from sparekit.utils.arrays import to_numpy


@register("knob")
class Knob(OneLayerMethod):
    """Set the activation's coordinate on the learned 1-D knob to the target side."""

    strength_grid = (0.0, 1.0, 2.0)
    default_strength = 1.0

    def __init__(self, layer: int = 6, C: float = 1.0, seed: int = 0):
        self.layer = layer
        self.C = C
        self.seed = seed

    def fit(self, data: BehaviourData) -> Knob:
        hidden = self.labelled_hidden(data)
        h = to_numpy(hidden.double())
        scaler = StandardScaler().fit(h)
        probe = LogisticRegression(C=self.C, random_state=self.seed, max_iter=1000).fit(scaler.transform(h), data.labels)
        direction = probe.coef_[0] / np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
        u = torch.as_tensor(direction / np.linalg.norm(direction), dtype=torch.float32)
        projection = hidden @ u
        labels = torch.as_tensor(data.labels)
        p_context, p_memory = projection[labels == 1].mean(), projection[labels == 0].mean()
        if p_context < p_memory:
            u, p_context, p_memory = -u, -p_context, -p_memory
        self.direction_ = u
        self.projections_ = torch.stack([p_context, p_memory])
        self.fitted_ = True
        return self

    def target(self, toward: Direction, strength: float) -> float:
        """The coordinate along ``u`` the edit sets."""
        p_context, p_memory = (float(x) for x in self.projections_)
        gap = p_context - p_memory
        return p_context + strength * gap if toward == "context" else p_memory - strength * gap

    def control_vector(self, toward: Direction, strength: float) -> ControlVector:
        """Approximate: the shift that takes the *mean* projection of the group steered away from to the target."""
        p_context, p_memory = (float(x) for x in self.projections_)
        source = p_memory if toward == "context" else p_context
        return ControlVector({int(self.layer): (self.target(toward, float(strength)) - source) * self.direction_},
                             exact=False, note="knob: its edit depends on the input's coordinate along u; this is the "
                                               "shift of the other behaviour group's mean coordinate to the target")

    def edits(self, lm: LoadedModel, toward: Direction, strength: float | None) -> list[tuple[Site, EditFn]]:
        u = self.direction_.to(site_device(lm, int(self.layer)))
        t = self.target(toward, float(strength))

        def edit(h: torch.Tensor) -> torch.Tensor:
            coordinate = h.float() @ u
            return (h.float() + (t - coordinate)[:, None] * u).to(h.dtype)

        return [(self.site, edit)]
