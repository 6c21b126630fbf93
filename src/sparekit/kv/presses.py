"""The KV compression methods, each a :class:`~sparekit.kv.compress.Press` registered by name.

``l2`` keeps the lowest key norms (Devoto et al. 2024; kvpress's ``KnormPress``),
``l2-inverse`` the highest (the control that should hurt), ``random`` a seeded draw,
``recent`` the most recent positions (StreamingLLM with ``sinks`` first positions kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

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
