"""``sea``: spectral editing of activations, linear variant (Qiu et al. 2024).

SEA keeps the directions along which the activations covary with the positive behaviour
and removes those along which they covary with the negative one. At ``layer``, with ``μ``
the mean of all behaviour hidden states and rows centred by it:

- each behaviour group is subsampled (seeded) to the smaller group's size ``m``, so both
  spectra weigh the same number of prompts;
- SEA pairs every neutral activation with the positive/negative activation of the *same*
  input; a behaviour prompt has one activation, so it is its own partner and the
  cross-covariance of group ``G`` is ``Ω_G = X_Gᵀ X_G / m``;
- ``U_G``: left singular vectors of ``Ω_G`` whose singular values cover ``energy`` of
  its spectrum (the smallest such top prefix).

With target group ``+`` and the other group ``-`` (context/memory, or the reverse),
``P± = U± U±ᵀ`` and::

    edited = μ + ((P+ + (I - P-)) / 2)(h - μ),     h' = h + strength · (edited - h)

Both groups' bases are fitted, so one fitted method steers both ways.
"""

from __future__ import annotations

import numpy as np
import torch

from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.models.loading import LoadedModel
from sparekit.models.placement import site_device
from sparekit.steering.base import BehaviourData, Direction, EditFn, register
from sparekit.steering.layered import OneLayerMethod
from sparekit.steering.spare import select_by_mi_mass
from sparekit.utils.arrays import to_numpy


def spectral_basis(centred: torch.Tensor, energy: float) -> torch.Tensor:
    """``[d, k]`` top left singular vectors of ``centredᵀ centred / m`` covering ``energy`` of its spectrum."""
    _, singular, vh = torch.linalg.svd(centred.double(), full_matrices=False)
    spectrum = to_numpy(singular**2 / centred.shape[0])
    keep = np.sort(select_by_mi_mass(spectrum, energy))
    return vh[torch.as_tensor(keep, dtype=torch.long)].T.float().contiguous()


@register("sea")
class SpectralEditing(OneLayerMethod):
    """Linear SEA at one layer: keep the target group's spectrum, remove the other's."""

    strength_grid = (0.5, 1.0)
    default_strength = 1.0

    def __init__(self, layer: int = 6, energy: float = 0.99, seed: int = 0):
        self.layer = layer
        self.energy = energy
        self.seed = seed

    def fit(self, data: BehaviourData) -> SpectralEditing:
        if not 0 < self.energy <= 1:
            raise SparekitError(f"sea: energy must be in (0, 1], got {self.energy}")
        h = self.labelled_hidden(data)
        self.mean_ = h.mean(0)
        rng = np.random.default_rng(self.seed)
        groups = {name: np.flatnonzero(data.labels == label) for name, label in (("context", 1), ("memory", 0))}
        m = min(len(rows) for rows in groups.values())
        self.basis_: dict[str, torch.Tensor] = {}
        for name, rows in groups.items():
            chosen = torch.as_tensor(np.sort(rng.choice(rows, size=m, replace=False)), dtype=torch.long)
            self.basis_[name] = spectral_basis(h[chosen] - self.mean_, float(self.energy))
        self.fitted_ = True
        return self

    def edits(self, lm: LoadedModel, toward: Direction, strength: float | None) -> list[tuple[Site, EditFn]]:
        other = "memory" if toward == "context" else "context"
        device = site_device(lm, int(self.layer))
        keep, remove = self.basis_[toward].to(device), self.basis_[other].to(device)
        mean, s = self.mean_.to(device), float(strength)

        def edit(h: torch.Tensor) -> torch.Tensor:
            x = h.float() - mean
            edited = mean + 0.5 * (x + (x @ keep) @ keep.T - (x @ remove) @ remove.T)
            return (h.float() + s * (edited - h.float())).to(h.dtype)

        return [(self.site, edit)]
