"""``adacad``: context-aware decoding with a per-token weight (Wang et al., NAACL 2025).

CAD's contrast (:mod:`~sparekit.steering.baselines.cad`) with the weight set, per row and
decoding step, by how much the context changes the prediction::

    α_t = strength · JSD(p(· | context, x, y<t) ‖ p(· | x, y<t))      (natural log, so α_t ≤ strength · ln 2)

toward context ``(1 + α_t) ℓ_c - α_t ℓ_0`` (the paper's rule; ``strength = 1`` is the paper),
toward memory the mirrored contrast ``(1 + α_t) ℓ_0 - α_t ℓ_c`` (the paper steers toward the
context only; this is the same construction as sparekit's CAD toward memory). Where the two
distributions agree (no conflict) α_t ≈ 0 and decoding is left almost as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparekit.evaluation.divergence import jensen_shannon
from sparekit.steering.base import register
from sparekit.steering.baselines.cad import ContextAwareDecoding, ContextContrast


class AdaptiveContextContrast(ContextContrast):
    """CAD's contrast with α_t = strength × the JSD between the with- and without-context distributions."""

    def weight(self, scores: torch.Tensor, without: torch.Tensor) -> torch.Tensor:
        divergence = jensen_shannon(F.log_softmax(scores.float(), -1), F.log_softmax(without.float(), -1))
        return (self.alpha * divergence.clamp(min=0))[:, None].to(scores.dtype)


@register("adacad")
class AdaptiveContextAwareDecoding(ContextAwareDecoding):
    """CAD whose contrast weight follows the per-token divergence; learns nothing."""

    strength_grid = (1.0, 2.0, 4.0)
    default_strength = 1.0
    contrast = AdaptiveContextContrast
