"""``dola``: decoding by contrasting layers (Chuang et al. 2024).

At every step, with ``p_N`` the final distribution and ``p_j`` the premature layer's
(logit lens: final norm + LM head on the residual stream after block ``j``)::

    score = log p_N - log p_j   on tokens with p_N >= plausibility · max p_N, -inf elsewhere

With several ``premature_layers`` each row picks, per step, the layer whose distribution
has the largest Jensen-Shannon divergence from ``p_N`` (dynamic premature layer).
DoLa is **not directional**: it favours what the upper layers add (factual recall), and
decodes the same way for ``toward="context"`` and ``"memory"``. It has no strength; tune
``premature_layers`` instead. The DoLa paper's repetition penalty is not applied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList

from sparekit.errors import SparekitError
from sparekit.evaluation.divergence import jensen_shannon
from sparekit.hooks import Hooks, Site
from sparekit.models.loading import LoadedModel
from sparekit.steering.base import BehaviourData, Direction, SteeringMethod, SteeringPrompt, register
from sparekit.steering.output_effect import logit_lens
from sparekit.steering.shadow import ShadowForward


def dola_scores(final_logits: torch.Tensor, premature_logits: torch.Tensor, plausibility: float) -> torch.Tensor:
    """``[B, V]`` final and ``[L, B, V]`` candidate logits -> DoLa scores ``[B, V]``."""
    log_final = F.log_softmax(final_logits.float(), dim=-1)
    log_premature = F.log_softmax(premature_logits.float(), dim=-1)
    chosen = jensen_shannon(log_final.unsqueeze(0), log_premature).argmax(0)
    log_premature = log_premature[chosen, torch.arange(final_logits.shape[0], device=chosen.device)]
    plausible = log_final >= log_final.max(-1, keepdim=True).values + math.log(plausibility)
    return (log_final - log_premature).masked_fill(~plausible, float("-inf"))


class LayerContrast(LogitsProcessor):
    """Replace the scores by DoLa scores; the premature residuals come from a shadow pass."""

    def __init__(self, lm: LoadedModel, prompts: list[SteeringPrompt], layers: tuple[int, ...], plausibility: float):
        self.lm, self.sites, self.plausibility = lm, [Site(layer) for layer in layers], plausibility
        self.shadow = ShadowForward(lm, [p.text for p in prompts])

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        hooks = Hooks(self.lm)
        for site in self.sites:
            hooks.capture(site, positions="last", when="always")
        self.shadow.step(input_ids, hooks.stop_after_captures())
        premature = torch.stack([logit_lens(self.lm, hooks[site]) for site in self.sites])
        return dola_scores(scores, premature, self.plausibility).to(scores.dtype)


@register("dola")
class DoLa(SteeringMethod):
    """Final-vs-premature layer contrast at decoding time; learns nothing."""

    directional = False

    def __init__(self, premature_layers: tuple[int, ...] | None = None, plausibility: float = 0.1):
        #: ``None``: every second layer of the lower half (0, 2, 4, 6, 8 on an 18-layer model), the
        #: DoLa paper's early bucket, so the default fits any depth
        self.premature_layers = premature_layers
        self.plausibility = plausibility

    def fit(self, data: BehaviourData) -> DoLa:
        if self.premature_layers is not None and not self.premature_layers:
            raise SparekitError("dola: premature_layers is empty", "give at least one early layer, e.g. (0, 2, 4)")
        if not 0 < self.plausibility <= 1:
            raise SparekitError(f"dola: plausibility must be in (0, 1], got {self.plausibility}")
        self.fitted_ = True
        return self

    def logits_processor(self, lm: LoadedModel, prompts: list[SteeringPrompt], toward: Direction,
                         strength: float | None) -> LogitsProcessorList:
        chosen = self.premature_layers or range(0, max(lm.info.n_layers // 2, 1), 2)
        layers = tuple(lm.info.check_layer(int(layer)) for layer in chosen)
        if max(layers) >= lm.info.n_layers - 1:
            raise SparekitError(f"dola: premature layers must be below the last layer ({lm.info.n_layers - 1})")
        return LogitsProcessorList([LayerContrast(lm, prompts, layers, float(self.plausibility))])
