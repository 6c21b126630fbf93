"""Shape statistics of hidden-state vectors, compared between knowledge-source behaviours.

The probing paper reports that when a model follows the context its residual stream
is more skewed and sparser in later layers; these statistics measure that per vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

STATISTICS = ("kurtosis", "skewness", "hoyer", "gini", "l1", "l2")


def pattern_statistics(h: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-row statistics of ``h [n, d]`` over its ``d`` coordinates, each ``[n]``.

    ``kurtosis`` is excess kurtosis (0 for a Gaussian), ``skewness`` the Fisher skew
    (both biased moment estimates, like ``scipy.stats`` defaults); ``hoyer`` is
    (√d − L1/L2)/(√d − 1) ∈ [0, 1] and ``gini`` the Hurley–Rickard Gini index of |h|,
    both 0 for a constant vector and ~1 for a one-hot one.
    """
    h = h.double()
    d = h.shape[-1]
    centred = h - h.mean(-1, keepdim=True)
    var = centred.pow(2).mean(-1)
    std = var.sqrt().clamp_min(1e-12)
    l1 = h.abs().sum(-1)
    l2 = h.norm(dim=-1)
    sorted_abs = h.abs().sort(-1).values
    k = torch.arange(1, d + 1, dtype=h.dtype)
    gini = 1 - 2 * (sorted_abs / l1.clamp_min(1e-12).unsqueeze(-1) * (d - k + 0.5) / d).sum(-1)
    sqrt_d = d ** 0.5
    return {
        "kurtosis": centred.pow(4).mean(-1) / var.clamp_min(1e-24).pow(2) - 3,
        "skewness": centred.pow(3).mean(-1) / std.pow(3),
        "hoyer": (sqrt_d - l1 / l2.clamp_min(1e-12)) / (sqrt_d - 1),
        "gini": gini,
        "l1": l1,
        "l2": l2,
    }


def compare_behaviours(h: torch.Tensor, labels: Sequence[int]) -> dict[str, dict[str, float]]:
    """Mean and std of each statistic for label 1 (uses context) and label 0 (uses memory)."""
    labels = torch.as_tensor(labels)
    stats = pattern_statistics(h)
    out: dict[str, dict[str, float]] = {}
    for name, values in stats.items():
        row = {}
        for label, tag in ((1, "context"), (0, "memory")):
            chosen = values[labels == label]
            row[f"{tag}_mean"] = float(chosen.mean()) if len(chosen) else float("nan")
            row[f"{tag}_std"] = float(chosen.std()) if len(chosen) > 1 else float("nan")
        out[name] = row
    return out
