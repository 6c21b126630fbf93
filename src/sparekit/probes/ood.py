"""How far a hidden state lies from the rows a probe was fitted on (the out-of-distribution flag).

A probe fitted on three-shot ``question:/answer:`` prompts returns a confident number on a
prompt it never saw the like of (a RAG template, a chat turn). :class:`FeatureRange` keeps
the training rows' statistics in the probe's standardised space: the top ``rank`` principal
directions with their variances, and the mean energy left outside them (probabilistic PCA: the
other ``d - rank`` directions share one variance). A row's score is the Mahalanobis distance
under that model, per dimension,

    sqrt((Σ_k proj_k² / var_k + (d - rank) · residual / mean training residual) / d)

(about 1 for a typical training row), and ``threshold_`` is the 99th percentile of the
training rows' scores: above it, a reading says ``in_distribution: false``. Weighting the
residual by its ``d - rank`` dimensions matters: a prompt format the probe never saw moves the
state mostly outside the training rows' main directions.
"""

from __future__ import annotations

import torch

from sparekit.errors import SparekitError

RANK = 32
PERCENTILE = 0.99
TENSORS = ("ood_basis", "ood_var", "ood_residual", "ood_threshold")


class FeatureRange:
    """Low-rank Mahalanobis-style distance from the training rows, with a training-percentile threshold."""

    def __init__(self, rank: int = RANK, percentile: float = PERCENTILE):
        self.rank = rank
        self.percentile = percentile

    def fit(self, Z: torch.Tensor) -> FeatureRange:
        """Fit on standardised training rows ``Z [n, d]`` (already centred by the probe's mean)."""
        if Z.ndim != 2 or len(Z) < 2:
            raise SparekitError(f"feature statistics need at least 2 rows [n, d], got {tuple(Z.shape)}")
        centred = Z - Z.mean(0)
        rank = min(self.rank, *centred.shape)
        basis = torch.linalg.svd(centred, full_matrices=False).Vh[:rank].T.contiguous()
        proj = Z @ basis
        self.basis_ = basis
        self.var_ = proj.var(0).clamp_min(1e-6)
        self.residual_ = self._residual(Z, proj).mean().clamp_min(1e-6).reshape(1)
        self.threshold_ = torch.quantile(self.score(Z), self.percentile).reshape(1)
        return self

    @staticmethod
    def _residual(Z: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        return (Z.pow(2).sum(1) - proj.pow(2).sum(1)).clamp_min(0)

    def score(self, Z: torch.Tensor) -> torch.Tensor:
        """``[n]`` distances of standardised rows ``Z`` (about 1 for a training row)."""
        proj = Z @ self.basis_
        d, rank = self.basis_.shape
        total = (proj.pow(2) / self.var_).sum(1) + (d - rank) * self._residual(Z, proj) / self.residual_
        return (total / d).sqrt()

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(zip(TENSORS, (self.basis_, self.var_, self.residual_, self.threshold_)))

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> FeatureRange | None:
        """The statistics saved with a probe, or ``None`` for a probe saved without them (older folders)."""
        if not all(name in tensors for name in TENSORS):
            return None
        found = cls(rank=tensors["ood_basis"].shape[1])
        found.basis_, found.var_, found.residual_, found.threshold_ = (tensors[name] for name in TENSORS)
        return found
