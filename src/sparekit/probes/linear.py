"""L1-regularised logistic-regression probe, trained with Adam as in the probing paper.

sklearn conventions: ``__init__`` only stores arguments, ``fit`` validates and returns
``self``, learned state ends in ``_``. A fitted probe saves to a folder with
``config.json`` (hyper-parameters, the ``site`` it reads and the ``model_hash`` it was
fitted on) and ``tensors.safetensors``; loading it for another model raises.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sparekit.artifacts import KINDS, Artifact, read_artifact, save_artifact
from sparekit.errors import SparekitError
from sparekit.probes.ood import FeatureRange
from sparekit.utils.arrays import to_numpy
from sparekit.utils.guards import MIN_PROBE_ROWS_PER_CLASS, warn_small_data
from sparekit.utils.params import Params


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float().cpu()


@KINDS.register("linear_probe")
class LinearProbe(Params):
    """Binary linear probe on hidden states: ``p(y=1 | h) = sigmoid(w·standardise(h) + b)``.

    ``l1`` is the L1 penalty on ``w`` (added to the mean BCE); ``standardize`` scales
    each feature by its training mean/std, which keeps Gemma's few huge residual
    dimensions from dominating. ``site`` and ``model_hash`` are recorded, not used.
    """

    def __init__(self, l1: float = 6e-4, lr: float = 2e-3, epochs: int = 20, batch_size: int = 64,
                 standardize: bool = True, seed: int = 0, site: str | None = None, model_hash: str | None = None):
        self.l1 = l1
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.standardize = standardize
        self.seed = seed
        self.site = site
        self.model_hash = model_hash

    def fit(self, X, y) -> LinearProbe:
        """Fit on features ``X [n, d]`` and labels ``y`` in {0, 1}; needs both classes."""
        X, y = _as_tensor(X), _as_tensor(y)
        if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
            raise SparekitError(f"expected X [n, d] and y [n], got {tuple(X.shape)} and {tuple(y.shape)}")
        if not bool(((y == 0) | (y == 1)).all()):
            raise SparekitError("probe labels must be 0 or 1")
        counts = [int((y == c).sum()) for c in (0, 1)]
        if min(counts) == 0:
            raise SparekitError(f"cannot fit a probe on one class ({counts[0]} negatives, {counts[1]} positives)",
                                "this split has a single label: use more data or another seed")
        warn_small_data("probe fit", {"negatives": counts[0], "positives": counts[1]}, MIN_PROBE_ROWS_PER_CLASS,
                        "fit on more rows (sparekit probe: a larger --limit or dataset)")
        if self.l1 < 0 or self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise SparekitError("probe needs l1 >= 0, lr > 0, epochs >= 1, batch_size >= 1")
        self.mean_ = X.mean(0) if self.standardize else torch.zeros(X.shape[1])
        self.scale_ = X.std(0).clamp_min(1e-6) if self.standardize else torch.ones(X.shape[1])
        Z = (X - self.mean_) / self.scale_
        generator = torch.Generator().manual_seed(self.seed)
        weight = torch.zeros(X.shape[1], requires_grad=True)
        prior = float(y.mean())  # start at the log prior odds, so a few epochs still respect class balance
        bias = torch.tensor(float(np.log(prior / (1 - prior))), requires_grad=True)
        optimizer = torch.optim.Adam([weight, bias], lr=self.lr)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        with torch.enable_grad():
            for _ in range(self.epochs):
                for idx in torch.randperm(len(Z), generator=generator).split(self.batch_size):
                    optimizer.zero_grad()
                    loss = loss_fn(Z[idx] @ weight + bias, y[idx]) + self.l1 * weight.abs().sum()
                    loss.backward()
                    optimizer.step()
        self.coef_ = weight.detach().clone()
        self.intercept_ = bias.detach().clone()
        self.n_features_in_ = X.shape[1]
        self.range_: FeatureRange | None = FeatureRange().fit(Z)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise SparekitError("this LinearProbe is not fitted yet", "call fit(X, y) or LinearProbe.load(path)")

    def decision_function(self, X) -> np.ndarray:
        """Logits ``[n]``."""
        return to_numpy(self._standardise(X) @ self.coef_ + self.intercept_)

    def _standardise(self, X) -> torch.Tensor:
        """``X`` checked and scaled by the training mean/std (the space the weights and statistics live in)."""
        self._check_fitted()
        X = _as_tensor(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise SparekitError(f"probe expects [n, {self.n_features_in_}] features, got {tuple(X.shape)}")
        return (X - self.mean_) / self.scale_

    def distance(self, X) -> np.ndarray | None:
        """How far each row lies from the training rows (:mod:`sparekit.probes.ood`), with ``threshold``;
        ``None`` for a probe saved without the statistics."""
        if self.range_ is None:
            return None
        return to_numpy(self.range_.score(self._standardise(X)))

    @property
    def distance_threshold(self) -> float | None:
        """Above this :meth:`distance` a row is out of distribution (99th percentile of the training rows)."""
        return None if self.range_ is None else float(self.range_.threshold_[0])

    def predict_proba(self, X) -> np.ndarray:
        """``[n, 2]`` probabilities of class 0 and class 1 (sklearn layout)."""
        p1 = 1.0 / (1.0 + np.exp(-self.decision_function(X).astype(np.float64)))
        return np.stack([1 - p1, p1], axis=1)

    def predict(self, X) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(np.int64)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The learned tensors under their saved names."""
        self._check_fitted()
        stats = {} if self.range_ is None else self.range_.tensors()
        return {"coef": self.coef_, "intercept": self.intercept_.reshape(1), "mean": self.mean_, "scale": self.scale_,
                **stats}

    def save(self, path: str | Path, **report) -> Path:
        """Write ``config.json`` and ``tensors.safetensors`` into the folder ``path`` (:mod:`sparekit.artifacts`);
        ``report`` (how the probe was fitted: data, formats, seed) is kept in the config's ``state``."""
        state = {"n_features_in": self.n_features_in_, **({"report": report} if report else {})}
        return save_artifact(path, self.kind, self.get_params(), self.tensors(), state)

    @classmethod
    def load(cls, path: str | Path, model_hash: str | None = None) -> LinearProbe:
        """Read a saved probe; with ``model_hash``, refuse a probe fitted on another model."""
        return cls.from_artifact(read_artifact(path, "linear_probe"), model_hash=model_hash)

    @classmethod
    def from_artifact(cls, artifact: Artifact, model_hash: str | None = None) -> LinearProbe:
        """Rebuild from ``params``, ``state`` and tensors (also the probe inside a saved gate)."""
        path, params = artifact.path, artifact.params
        unknown = set(params) - set(cls.param_names())
        if unknown:
            raise SparekitError(f"{path}/config.json has unknown probe parameters {sorted(unknown)}",
                                f"valid: {', '.join(cls.param_names())}")
        if model_hash is not None and params.get("model_hash") != model_hash:
            raise SparekitError(f"the probe in {path} was fitted on another model "
                                f"(hash {str(params.get('model_hash'))[:12]}…, this model {model_hash[:12]}…)",
                                "fit a probe for this model with `sparekit probe`")
        missing = {"coef", "intercept", "mean", "scale"} - set(artifact.tensors)
        if missing:
            raise SparekitError(f"{path} lacks the probe tensors {sorted(missing)}")
        probe = cls(**params)
        tensors = artifact.tensors
        probe.coef_, probe.mean_, probe.scale_ = tensors["coef"], tensors["mean"], tensors["scale"]
        probe.intercept_ = tensors["intercept"][0]
        probe.n_features_in_ = int(artifact.state["n_features_in"])
        probe.range_ = FeatureRange.from_tensors(tensors)
        return probe
