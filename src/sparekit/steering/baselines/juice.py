"""``juice``: JUICE, "Just Run Twice" attention-head intervention (Li, Chen & Tong, ICML 2025).

Training-free, in two stages, as in the paper and its released code (GaotangLi/JUICE):

1. **Head identification** (``fit``), on a handful of behaviour prompts: score every attention
   head by how scaling its output changes the answer, keep the heads whose effect has the same
   sign on every kind of prompt (the paper's "reliable" heads: its clean, substitution and
   coherent-conflict prompts; here the prompts the model answered from the context and those it
   answered from memory), and rank them by the summed effect. Heads that push toward the
   context answer and heads that push toward the memory answer form two sets of ``n_heads``.
2. **Dual run** (at decoding): at every step a clean run records the chosen heads' outputs,
   then a second run adds ``α ×`` those *clean* outputs to the same heads (``α = +strength``
   for the heads that push toward the target, ``-strength`` for those that push away), at every
   position, and its logits pick the token. Adding the clean-run outputs, not rescaling in place,
   is what makes JUICE "run twice": upstream interventions do not change what is added downstream.

A head's output is its slice of the attention output projection's input (the ``heads`` site of
:class:`~sparekit.hooks.Hooks`), mapped by the projection. Deviations from the paper, stated:

- Scores are first-order (attribution patching): the gradient of the answer margin with respect to
  a per-head scale at 1, i.e. the effect of scaling the head by ``1 + α`` per unit ``α``, at all
  positions, from one forward and backward pass per batch. The paper measures the change in
  probability by actually rescaling each head (α ∈ {1, 3, 5, 10, 30} up, {-1, -2, -5} down), a
  forward pass per head and α, which is out of a CPU budget; to first order, the heads that help
  when scaled down are those that help toward the other side when scaled up, so one score serves both.
- The scored quantity is the margin ``log p(first token of sub_answer) - log p(first token of org_answer)``
  at the last prompt token (the paper: the probability of the target's first token), which scores
  both directions at once.
- The paper tunes the two scales separately (α_s ∈ 0..3 down, α_l ∈ 0..5 up); here one ``strength``
  sets both, and ``n_heads`` (per set) is a parameter to tune on dev.
- Decoding costs three forward passes per step: ``generate``'s own (unused), the clean and the
  intervened run, each with its own KV cache (:class:`ShadowForward`).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from sparekit.errors import SparekitError
from sparekit.evaluation.generation import batches, tokenize
from sparekit.hooks import Hooks, Site
from sparekit.models.loading import LoadedModel
from sparekit.steering.base import BehaviourData, Direction, SteeringMethod, SteeringPrompt, register
from sparekit.steering.output_effect import answer_first_tokens, logit_lens
from sparekit.steering.shadow import ShadowForward


def n_attention_heads(lm: LoadedModel) -> int:
    config = lm.model.config
    return int((config.get_text_config() if hasattr(config, "get_text_config") else config).num_attention_heads)


def scale_heads(h: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``h`` ``[..., n_heads * head_dim]`` with each head's slice multiplied by ``scale`` ``[..., n_heads]``."""
    shape = h.shape
    return (h.reshape(*shape[:-1], scale.shape[-1], -1) * scale[..., None]).reshape(shape)


def head_attributions(lm: LoadedModel, prompts: list[SteeringPrompt], batch_size: int = 4) -> torch.Tensor:
    """``[n_prompts, n_layers, n_heads]``: d(answer margin)/d(head scale) at scale 1, per prompt.

    The margin is ``log p(sub_answer's first token) - log p(org_answer's first token)`` at the last
    prompt token; positive: scaling the head up moves the answer toward the context.
    """
    n_layers, n_heads = lm.info.n_layers, n_attention_heads(lm)
    last = Site(n_layers - 1)
    rows = []
    for chunk in batches(prompts, batch_size):
        chunk = list(chunk)
        context = answer_first_tokens(lm, [p.example.sub_answer[0] for p in chunk])
        memory = answer_first_tokens(lm, [p.example.org_answer[0] for p in chunk])
        gates = [torch.ones(len(chunk), n_heads, requires_grad=True) for _ in range(n_layers)]
        final: list[torch.Tensor] = []
        hooks = Hooks(lm)
        for layer, gate in enumerate(gates):
            hooks.edit(Site(layer, "heads"), lambda h, g=gate: scale_heads(h, g.to(h.device, h.dtype)[:, None]),
                       positions="all")
        hooks.edit(last, lambda h: final.append(h) or h, positions="last").stop_after(last)
        with torch.enable_grad():
            with hooks:
                lm.model(**tokenize(lm, [p.text for p in chunk]))
            log_probs = torch.log_softmax(logit_lens(lm, final[0]).float(), -1)
            index = torch.arange(len(chunk), device=log_probs.device)
            margin = log_probs[index, context.to(log_probs.device)] - log_probs[index, memory.to(log_probs.device)]
            grads = torch.autograd.grad(margin.sum(), gates)
        rows.append(torch.stack(grads, 1))
    return torch.cat(rows).float()


def reliable_heads(scores_by_group: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From ``[n_groups, n_layers, n_heads]`` mean scores: the ``k`` heads pushing toward the context on
    every group (largest summed score first) and the ``k`` pushing toward memory on every group, as
    ``[m, 2]`` (layer, head) index tensors."""
    total = scores_by_group.sum(0).flatten()
    n_heads = scores_by_group.shape[-1]
    chosen = []
    for sign in (1.0, -1.0):
        consistent = ((sign * scores_by_group) > 0).all(0).flatten()
        order = torch.argsort(sign * total, descending=True, stable=True)
        flat = order[consistent[order]][:k]
        chosen.append(torch.stack([flat // n_heads, flat % n_heads], 1))
    return chosen[0], chosen[1]


class DualRun(LogitsProcessor):
    """Replace the scores by those of a run that adds ``coefficient ×`` the clean run's head outputs."""

    def __init__(self, lm: LoadedModel, prompts: list[SteeringPrompt], coefficients: dict[int, torch.Tensor]):
        texts = [p.text for p in prompts]
        self.lm, self.coefficients = lm, coefficients
        self.clean, self.steered = ShadowForward(lm, texts), ShadowForward(lm, texts)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sites = {layer: Site(layer, "heads") for layer in self.coefficients}
        reading = Hooks(self.lm)
        for site in sites.values():
            reading.capture(site, positions="all", when="always")
        self.clean.step(input_ids, reading.stop_after_captures())
        steering = Hooks(self.lm)
        for layer, site in sites.items():
            added = scale_heads(reading[site], self.coefficients[layer].to(reading[site].device))
            steering.edit(site, lambda h, a=added: h + a.to(h.dtype), positions="all", when="always")
        return self.steered.step(input_ids, steering).logits[:, -1].to(scores.dtype)


@register("juice")
class JUICE(SteeringMethod):
    """Scale the outputs of the heads that push toward each side, from a clean first run; learns the heads."""

    strength_grid = (0.5, 1.0, 2.0)
    default_strength = 1.0

    def __init__(self, n_heads: int = 3, n_prompts: int = 16, seed: int = 0):
        self.n_heads = n_heads
        self.n_prompts = n_prompts
        self.seed = seed

    def fit(self, data: BehaviourData) -> JUICE:
        if not isinstance(self.n_heads, int) or self.n_heads < 1:
            raise SparekitError(f"juice: n_heads must be a positive integer, got {self.n_heads!r}")
        data.require_both_classes(self.kind)
        lm = data.model(self.kind)
        rng = np.random.default_rng(self.seed)
        per_group = max(1, int(self.n_prompts) // 2)
        groups = [rng.permutation(np.flatnonzero(data.labels == label))[:per_group] for label in (1, 0)]
        chosen = np.concatenate(groups)
        scores = head_attributions(lm, [data.prompts[i] for i in chosen])
        by_group = torch.stack([scores[: len(groups[0])].mean(0), scores[len(groups[0]):].mean(0)])
        self.head_scores_ = by_group.mean(0)
        self.context_heads_, self.memory_heads_ = reliable_heads(by_group, self.n_heads)
        if len(self.context_heads_) + len(self.memory_heads_) == 0:
            raise SparekitError("juice: no head pushes the answer the same way on both behaviour groups",
                                "use more prompts (n_prompts)")
        self.fitted_ = True
        return self

    def coefficients(self, toward: Direction, strength: float, n_heads: int) -> dict[int, torch.Tensor]:
        """Per layer, the ``α`` of each head: ``+strength`` on the heads toward ``toward``, ``-strength`` away."""
        up, down = ((self.context_heads_, self.memory_heads_) if toward == "context"
                    else (self.memory_heads_, self.context_heads_))
        out: dict[int, torch.Tensor] = {}
        for heads, alpha in ((up, strength), (down, -strength)):
            for layer, head in heads.tolist():
                out.setdefault(layer, torch.zeros(n_heads))[head] = alpha
        return out

    def logits_processor(self, lm: LoadedModel, prompts: list[SteeringPrompt], toward: Direction,
                         strength: float | None) -> LogitsProcessorList:
        n_heads = n_attention_heads(lm)
        if self.head_scores_.shape != (lm.info.n_layers, n_heads):
            raise SparekitError(f"juice: heads were identified on a model with {tuple(self.head_scores_.shape)} "
                                f"(layers, heads), not {lm.info.name}", "fit it on this model")
        return LogitsProcessorList([DualRun(lm, prompts, self.coefficients(toward, float(strength), n_heads))])
