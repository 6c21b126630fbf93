"""``cad``: context-aware decoding (Shi et al. 2023), both ways.

At every decoding step, with ``ℓ_c`` the logits of the prompt (with the test item's
context) and ``ℓ_0`` those of the same prompt without it
(:attr:`SteeringPrompt.text_without_context`):

- toward context: ``(1 + α) · ℓ_c - α · ℓ_0`` (amplify what the context adds);
- toward memory:  ``(1 + α) · ℓ_0 - α · ℓ_c`` (the reverse contrast).

``ℓ_0`` comes from a :class:`ShadowForward` fed the tokens greedy decoding picks.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from sparekit.errors import SparekitError
from sparekit.models.loading import LoadedModel
from sparekit.steering.base import Direction, SteeringMethod, SteeringPrompt, register
from sparekit.steering.shadow import ShadowForward


class ContextContrast(LogitsProcessor):
    """Mix the main logits with the no-context logits of the same generated sequence."""

    def __init__(self, lm: LoadedModel, prompts: list[SteeringPrompt], toward: Direction, alpha: float):
        self.shadow = ShadowForward(lm, [p.text_without_context for p in prompts])
        self.toward, self.alpha = toward, alpha

    def weight(self, scores: torch.Tensor, without: torch.Tensor) -> torch.Tensor | float:
        """The contrast weight α: fixed here, per row and step in AdaCAD."""
        return self.alpha

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        without = self.shadow.step(input_ids).logits[:, -1].to(scores.dtype)
        alpha = self.weight(scores, without)
        if self.toward == "context":
            return (1 + alpha) * scores - alpha * without
        return (1 + alpha) * without - alpha * scores


@register("cad")
class ContextAwareDecoding(SteeringMethod):
    """Contrast the logits with and without the test item's context; learns nothing."""

    strength_grid = (0.5, 1.0, 2.0)
    default_strength = 1.0
    #: the processor that mixes the two distributions (AdaCAD swaps in its per-token weight)
    contrast: type[ContextContrast] = ContextContrast

    def __init__(self) -> None:
        pass

    def logits_processor(self, lm: LoadedModel, prompts: list[SteeringPrompt], toward: Direction,
                         strength: float | None) -> LogitsProcessorList:
        alpha = float(strength)
        if alpha < 0:
            raise SparekitError(f"{self.kind}: strength α must be >= 0, got {alpha}")
        return LogitsProcessorList([self.contrast(lm, prompts, toward, alpha)])
