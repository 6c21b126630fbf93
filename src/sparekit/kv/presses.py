"""The KV compression methods, each a :class:`~sparekit.kv.compress.Press` registered by name.

``l2`` keeps the lowest key norms (Devoto et al. 2024; kvpress's ``KnormPress``),
``l2-inverse`` the highest (the control that should hurt), ``random`` a seeded draw,
``recent`` the most recent positions (a plain window; StreamingLLM with ``sinks`` first positions kept),
``recent-sinks`` StreamingLLM's default (``recent`` with 4 sinks),
``snapkv`` the positions the prompt's last queries attend to most (Li et al. 2024, as kvpress's ``SnapKVPress``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from sparekit.errors import SparekitError
from sparekit.kv.compress import Press, non_negative_int, register_press


def _norms(keys: torch.Tensor) -> torch.Tensor:
    """Key norms in float32: in bf16 most key norms of a head tie and rounding would choose."""
    return keys.float().norm(dim=-1)


@register_press("l2")
@dataclass(frozen=True)
class L2Press(Press):
    """Keep the keys with the lowest L2 norm (the paper's method)."""

    def scores(self, keys: torch.Tensor, prompt_mask: torch.Tensor, observed: Any) -> torch.Tensor:
        return _norms(keys)


@register_press("l2-inverse")
@dataclass(frozen=True)
class InverseL2Press(Press):
    """Keep the keys with the highest L2 norm: the control that should hurt."""

    def scores(self, keys: torch.Tensor, prompt_mask: torch.Tensor, observed: Any) -> torch.Tensor:
        return -_norms(keys)


@register_press("random")
@dataclass(frozen=True)
class RandomPress(Press):
    """Keep a seeded random draw of positions.

    One number per real position, in order, from a generator seeded by ``seed`` alone,
    so a prompt gets the same draw whatever its padding or batch.
    """

    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SparekitError(f"seed must be an integer, got {self.seed!r}")

    def scores(self, keys: torch.Tensor, prompt_mask: torch.Tensor, observed: Any) -> torch.Tensor:
        batch, heads, seq, _ = keys.shape
        scores = torch.zeros(batch, heads, seq, dtype=torch.float32)
        for row in range(batch):
            real = prompt_mask[row].cpu()
            generator = torch.Generator().manual_seed(self.seed)
            scores[row][:, real] = torch.rand(heads, int(real.sum()), generator=generator)
        return scores.to(keys.device)


@register_press("recent")
@dataclass(frozen=True)
class RecentPress(Press):
    """Keep the most recent positions (a sliding window), and the first ``sinks`` real ones (StreamingLLM)."""

    sinks: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative_int("sinks", self.sinks)

    def scores(self, keys: torch.Tensor, prompt_mask: torch.Tensor, observed: Any) -> torch.Tensor:
        batch, heads, seq, _ = keys.shape
        scores = -torch.arange(seq, dtype=torch.float32, device=keys.device).expand(batch, heads, seq).clone()
        if self.sinks:
            real = prompt_mask.to(keys.device).bool()
            sink = real & (real.long().cumsum(-1) <= self.sinks)  # the first real positions of each row
            scores = scores.masked_fill(sink[:, None], -float(seq))  # ranked just after the protected last ones
        return scores


@register_press("recent-sinks")
@dataclass(frozen=True)
class SinkRecentPress(RecentPress):
    """StreamingLLM as its paper runs it: ``recent`` with the first 4 positions (the attention sinks) kept.

    Its own name so that a grid, which passes no ``sinks``, runs both the plain window and
    the sinks + window (Xiao et al. 2024 found 4 sinks enough).
    """

    sinks: int = 4


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@register_press("snapkv")
@dataclass(frozen=True)
class SnapKVPress(Press):
    """Keep the positions the last ``window`` prompt queries attend to most (SnapKV, query-aware).

    As kvpress's ``SnapKVPress``: the window's queries (projected, normed and rotated as
    the layer does) attend causally to every key at ``1/sqrt(head_dim)``; the weights are
    averaged over the window's real queries, smoothed over ``kernel`` neighbouring
    positions and averaged over the query heads that share a KV head. The window itself
    is always kept (its most attended part when the budget is smaller, after the positions
    every press keeps). Padding is masked, so a prompt keeps the same positions whatever its batch.
    """

    window: int = 64
    kernel: int = 5
    reads_prompt_pass: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative_int("window", self.window)
        non_negative_int("kernel", self.kernel)
        if self.window < 1 or self.kernel % 2 == 0:
            raise SparekitError(f"snapkv needs window >= 1 and an odd kernel, got {self.window} and {self.kernel}")

    def observe(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """The window's queries ``[batch, heads, window, head_dim]``, rotated as the layer rotates them."""
        if not hasattr(module, "q_proj") or kwargs.get("position_embeddings") is None:
            raise SparekitError(f"snapkv reads rotary attention with a q_proj; {type(module).__name__} is not",
                                "use l2, l2-inverse, random or recent on this model")
        hidden = kwargs.get("hidden_states", args[0] if args else None)[:, -self.window:]
        batch, width, _ = hidden.shape
        queries = module.q_proj(hidden).view(batch, width, -1, module.head_dim).transpose(1, 2)
        if hasattr(module, "q_norm"):
            queries = module.q_norm(queries)
        cos, sin = (t[:, -width:, None].transpose(1, 2) for t in kwargs["position_embeddings"])
        return queries * cos + _rotate_half(queries) * sin

    def scores(self, keys: torch.Tensor, prompt_mask: torch.Tensor, observed: Any) -> torch.Tensor:
        if observed is None:
            raise SparekitError("snapkv reads the prompt pass's queries: run the prompt pass inside the press")
        batch, kv_heads, seq, dim = keys.shape
        queries = observed.float()
        width, groups = queries.shape[2], queries.shape[1] // kv_heads
        real = prompt_mask.to(keys.device).bool()
        logits = queries @ keys.float().repeat_interleave(groups, dim=1).transpose(-1, -2) / math.sqrt(dim)
        causal = torch.ones(width, seq, dtype=torch.bool, device=keys.device).tril(seq - width)
        logits = logits.masked_fill(~(causal[None, None] & real[:, None, None]), float("-inf"))
        weights = torch.where(real[:, None, -width:, None], logits.softmax(-1), 0.0)  # padded queries count for nothing
        attention = weights.sum(-2) / real[:, -width:].sum(-1).clamp_min(1)[:, None, None]
        pooled = F.avg_pool1d(attention, kernel_size=self.kernel, padding=self.kernel // 2, stride=1)
        scores = -pooled.view(batch, kv_heads, groups, seq).mean(2)  # in [-1, 0]
        # the window ranks first, by its own attention, but after the protected positions (-inf): a budget
        # smaller than the window still keeps the last and first positions a press must keep
        scores[..., seq - width:] -= 2.0
        return scores
