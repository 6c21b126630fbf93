"""Distances between next-token distributions, shared by the decoders that contrast two of them (DoLa,
AdaCAD) and the training-free conflict detector (with vs without the context)."""

from __future__ import annotations

import math

import torch


def jensen_shannon(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """JSD (natural log, in [0, ln 2]) between rows of two log-distributions ``[..., vocab]`` -> ``[...]``."""
    log_m = torch.logaddexp(log_p, log_q) - math.log(2)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    return 0.5 * (kl_pm + kl_qm)
