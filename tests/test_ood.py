"""The out-of-distribution flag: probes keep their training rows' statistics and say when a row is far."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparekit.artifacts import read_artifact, save_artifact
from sparekit.hooks import Site
from sparekit.probes.linear import LinearProbe
from sparekit.probes.ood import TENSORS, FeatureRange
from sparekit.probes.reading import ProbeSet


def _rows(n: int, d: int = 48, seed: int = 0, shift: float = 0.0) -> tuple[torch.Tensor, np.ndarray]:
    """Correlated Gaussian rows (a few strong directions, like hidden states), labels on the first one."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(8, d, generator=torch.Generator().manual_seed(99))
    X = torch.randn(n, 8, generator=gen) @ mixing + 0.1 * torch.randn(n, d, generator=gen) + shift
    return X, (X[:, 0] > X[:, 0].median()).numpy().astype(np.int64)


def test_training_rows_are_flagged_at_the_percentile_and_shifted_rows_always():
    X, y = _rows(600)
    probe = LinearProbe(epochs=5).fit(X, y)
    fresh, _ = _rows(600, seed=1)
    assert np.mean(probe.distance(fresh) > probe.distance_threshold) < 0.1  # 32 directions fitted on 600 rows
    assert np.mean(probe.distance(X) > probe.distance_threshold) == pytest.approx(0.01, abs=0.005)
    far, _ = _rows(200, seed=2, shift=3.0)
    assert np.all(probe.distance(far) > probe.distance_threshold)
    off_subspace = fresh + 2.0 * torch.randn(600, 48, generator=torch.Generator().manual_seed(3))
    assert np.mean(probe.distance(off_subspace) > probe.distance_threshold) > 0.9  # seen by the residual term


def test_statistics_survive_save_and_load_and_old_folders_load_without_them(tmp_path):
    X, y = _rows(300)
    probe = LinearProbe(epochs=5, site="resid.0").fit(X, y)
    loaded = LinearProbe.load(probe.save(tmp_path / "new"))
    assert np.allclose(loaded.distance(X), probe.distance(X)) and loaded.distance_threshold == probe.distance_threshold
    old = {k: v for k, v in probe.tensors().items() if k not in TENSORS}  # a folder saved before the flag
    save_artifact(tmp_path / "old", "linear_probe", probe.get_params(), old, {"n_features_in": 48})
    legacy = LinearProbe.load(tmp_path / "old")
    assert legacy.distance(X) is None and legacy.distance_threshold is None
    assert np.allclose(legacy.predict_proba(X), probe.predict_proba(X))
    assert set(read_artifact(tmp_path / "old", "linear_probe").tensors) == {"coef", "intercept", "mean", "scale"}


def test_every_reading_carries_the_flag_only_where_the_probe_has_statistics(tmp_path):
    X, y = _rows(300)
    site = Site(0)
    probe = LinearProbe(epochs=5, site=str(site)).fit(X, y)
    far, _ = _rows(1, seed=5, shift=5.0)
    typical = X[np.argsort(probe.distance(X))[150]][None]  # the median training row
    readings = ProbeSet({"conflict": probe}).read({site: torch.cat([typical, far])})
    assert [r["in_distribution"] for r in readings] == [True, False]
    assert readings[1]["distance"] > readings[0]["distance"]
    old = {k: v for k, v in probe.tensors().items() if k not in TENSORS}
    save_artifact(tmp_path / "old", "linear_probe", probe.get_params(), old, {"n_features_in": 48})
    legacy = ProbeSet({"conflict": LinearProbe.load(tmp_path / "old")}).read({site: X[:2]})
    assert "in_distribution" not in legacy[0] and "distance" not in legacy[0]


def test_feature_range_refuses_too_few_rows():
    from sparekit.errors import SparekitError

    with pytest.raises(SparekitError, match="at least 2 rows"):
        FeatureRange().fit(torch.zeros(1, 4))
