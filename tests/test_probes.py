"""Linear probes, pattern statistics and the probing experiment helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from sparekit.data import ConflictDataset, ConflictExample
from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.probes import LinearProbe, ProbingData, compare_behaviours, cross_validate, layer_table, pattern_statistics


def _separable(n: int = 200, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    y = torch.arange(n) % 2
    # Margin of 6 along one direction, plus a large offset that standardisation must handle.
    X = torch.randn(n, d, generator=g) + 3 * (2 * y[:, None] - 1) * direction + 100
    return X, y


def test_probe_fits_a_separable_problem():
    X, y = _separable()
    probe = LinearProbe(epochs=30).fit(X[:150], y[:150])
    assert probe.fit(X[:150], y[:150]) is probe
    accuracy = (probe.predict(X[150:]) == y[150:].numpy()).mean()
    assert accuracy > 0.9
    proba = probe.predict_proba(X[150:])
    assert proba.shape == (50, 2) and np.allclose(proba.sum(1), 1)
    assert probe.coef_.shape == (16,)


def test_probe_without_signal_predicts_the_majority_class():
    """The bias starts at the log prior odds: an uninformative feature must not pull accuracy below the prior."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(600, 4, generator=g)
    y = (torch.rand(600, generator=g) < 0.75).long()
    probe = LinearProbe(epochs=5).fit(X[:400], y[:400])
    assert abs(float(probe.predict_proba(X[400:])[:, 1].mean()) - float(y[:400].float().mean())) < 0.05
    assert (probe.predict(X[400:]) == y[400:].numpy()).mean() >= (y[400:] == 1).float().mean() - 0.02


def test_l1_shrinks_weights():
    X, y = _separable()
    weak = LinearProbe(l1=0.0, epochs=30).fit(X, y).coef_.abs().sum()
    strong = LinearProbe(l1=0.05, epochs=30).fit(X, y).coef_.abs().sum()
    assert strong < weak


def test_probe_is_seeded():
    X, y = _separable()
    a = LinearProbe(seed=3).fit(X, y).coef_
    assert torch.equal(a, LinearProbe(seed=3).fit(X, y).coef_)
    assert not torch.equal(a, LinearProbe(seed=4).fit(X, y).coef_)


def test_probe_errors():
    X, y = _separable()
    with pytest.raises(SparekitError, match="one class"):
        LinearProbe().fit(X, torch.ones(len(X)))
    with pytest.raises(SparekitError, match="0 or 1"):
        LinearProbe().fit(X, y + 1)
    with pytest.raises(SparekitError, match="expected X"):
        LinearProbe().fit(X, y[:10])
    with pytest.raises(SparekitError, match="not fitted"):
        LinearProbe().predict(X)
    with pytest.raises(SparekitError, match="features"):
        LinearProbe().fit(X, y).predict(X[:, :3])


def test_save_load_round_trip_and_hash_check(tmp_path):
    X, y = _separable()
    probe = LinearProbe(seed=1, site="resid.6", model_hash="abc123").fit(X, y)
    probe.save(tmp_path / "p")
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["kind"] == "linear_probe" and config["params"]["site"] == "resid.6" and "sparekit_version" in config
    loaded = LinearProbe.load(tmp_path / "p", model_hash="abc123")
    assert loaded.get_params() == probe.get_params()
    np.testing.assert_allclose(loaded.predict_proba(X), probe.predict_proba(X))
    with pytest.raises(SparekitError, match="another model"):
        LinearProbe.load(tmp_path / "p", model_hash="other")
    config["params"]["surprise"] = 1
    (tmp_path / "p" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SparekitError, match="unknown probe parameters"):
        LinearProbe.load(tmp_path / "p")


def test_save_keeps_how_the_probe_was_fitted(tmp_path):
    X, y = _separable()
    probe = LinearProbe(seed=1).fit(X, y)
    probe.save(tmp_path / "p", formats=["three_shot", "rag"], seed=1)
    state = json.loads((tmp_path / "p" / "config.json").read_text())["state"]
    assert state["report"] == {"formats": ["three_shot", "rag"], "seed": 1} and state["n_features_in"] == X.shape[1]
    np.testing.assert_allclose(LinearProbe.load(tmp_path / "p").predict_proba(X), probe.predict_proba(X))
    probe.save(tmp_path / "q")
    assert "report" not in json.loads((tmp_path / "q" / "config.json").read_text())["state"]


def test_pattern_statistics_on_known_vectors():
    one_hot = torch.zeros(1, 100)
    one_hot[0, 7] = 3.0
    constant = torch.full((1, 100), -2.0)
    s = pattern_statistics(torch.cat([one_hot, constant]))
    assert s["hoyer"][0] == pytest.approx(1.0) and s["hoyer"][1] == pytest.approx(0.0, abs=1e-9)
    assert s["gini"][0] == pytest.approx(1 - 1 / 100) and s["gini"][1] == pytest.approx(0.0, abs=1e-9)
    assert s["l1"].tolist() == pytest.approx([3.0, 200.0]) and s["l2"].tolist() == pytest.approx([3.0, 20.0])
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0)) ** 3
    s = pattern_statistics(x)
    np.testing.assert_allclose(s["kurtosis"].numpy(), scipy_stats.kurtosis(x.numpy(), axis=1), rtol=1e-5)
    np.testing.assert_allclose(s["skewness"].numpy(), scipy_stats.skew(x.numpy(), axis=1), rtol=1e-5)


def test_compare_behaviours_splits_by_label():
    h = torch.cat([torch.zeros(3, 10).index_fill_(1, torch.tensor([0]), 1.0), torch.ones(2, 10)])
    out = compare_behaviours(h, [1, 1, 1, 0, 0])
    assert out["hoyer"]["context_mean"] == pytest.approx(1.0)
    assert out["hoyer"]["memory_mean"] == pytest.approx(0.0, abs=1e-9)


def _synthetic_data(n_groups: int = 12, per_group: int = 3, d: int = 8) -> ProbingData:
    items = ConflictDataset([ConflictExample(f"{g}-{k}", f"q{g}", "o", ("a",), "s", ("b",))
                             for g in range(n_groups) for k in range(per_group)], "synthetic")
    n = len(items)
    g = torch.Generator().manual_seed(0)
    org = {Site(0): torch.randn(n, d, generator=g), Site(1): torch.randn(n, d, generator=g)}
    sub = {Site(0): torch.randn(n, d, generator=g), Site(1): torch.randn(n, d, generator=g) + 3}  # layer 1 separates
    behaviour = ["context" if i % 2 else "memory" for i in range(n)]
    return ProbingData(items, org, sub, behaviour)


def test_cross_validate_finds_the_informative_layer():
    data = _synthetic_data()
    per_site = {s: cross_validate(data, "conflict", s, seeds=[0, 1]) for s in (Site(0), Site(1))}
    table = layer_table(per_site, [Site(0), Site(1)])
    assert table["best_layer"] == 1
    assert table["accuracy"]["mean"][1] > 0.9 and table["auroc"]["mean"][1] > 0.95
    assert table["accuracy"]["mean"][0] < table["accuracy"]["mean"][1]
    X, y, ids = data.target("source", Site(0))
    assert len(X) == len(y) == len(ids) == len(data.items)


def test_cross_validate_errors():
    data = _synthetic_data(n_groups=3)
    with pytest.raises(SparekitError, match="too few question groups"):
        cross_validate(data, "conflict", Site(0), seeds=[0])
    data = _synthetic_data()
    data.behaviour = ["context"] * len(data.items)
    with pytest.raises(SparekitError, match="one class|single class"):
        cross_validate(data, "source", Site(0), seeds=[0])


def test_probe_and_detect_cli_on_a_tiny_model(tiny_probe_setup, tmp_path, capsys):
    """End to end on a tiny random model; memorisation and answers are faked (it knows nothing)."""
    from sparekit.cli.main import main

    folder, data = tiny_probe_setup
    run = tmp_path / "run"
    args = ["probe", "--dataset", str(data), "--model", str(folder), "--layers", "1-2", "--seeds", "0,1",
            "--k-shot", "1", "--out", str(run), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["layers"] == [1, 2] and result["counts"] == {"context": 8, "memory": 8, "other": 0}
    for target in ("conflict", "source"):
        assert result[target]["best_layer"] in (1, 2)
        assert len(result[target]["auroc"]["mean"]) == 2 and len(result[target]["accuracy"]["std"]) == 2
    assert set(result["stats"]) == {"kurtosis", "skewness", "hoyer", "gini", "l1", "l2"}
    assert (run / "probe_metrics.png").stat().st_size > 10_000 and (run / "config.json").is_file()
    assert main(["detect", "--probe", str(run), "--question", "q3", "--context", "it is x3", "--json"]) == 0
    detected = json.loads(capsys.readouterr().out)
    assert 0 <= detected["conflict_probability"] <= 1 and detected["predicted_source"] in ("context", "memory")
    demo = json.loads((run / "probes" / "detect.json").read_text())["demos"][0]  # the run's own demonstration
    assert detected["prompt"] == demo + "context: it is x3\nquestion: q3\nanswer:"
    assert main(["detect", "--probe", str(run), "--question", "q3", "--context", "a", "--context", "b",
                 "--prompt-format", "rag", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == "Passage: a\nPassage: b\nQuestion: q3\nAnswer:"
    assert main(["detect", "hello", "--prompt-format", "rag"]) == 2
    assert "--context and --prompt-format go with --question" in capsys.readouterr().err
    assert main(["detect", "hello"]) == 2
    assert "run `sparekit probe` first" in capsys.readouterr().err


def test_component_plot_draws_every_component(tmp_path):
    from sparekit.probes.plots import plot_components

    def table(level: float) -> dict:
        block = {m: {"mean": [level, level + 0.1], "std": [0.01, 0.02]} for m in ("accuracy", "auroc", "auprc")}
        return {**block, "majority_accuracy": {"mean": [0.6, 0.6], "std": [0.0, 0.0]}, "best_layer": 1}

    result = {"layers": [3, 4], "components": {c: {"conflict": table(0.7), "source": table(0.65)}
                                               for c in ("resid", "attn", "mlp")}}
    result["components"]["mlp"]["source"] = {"error": "too few items"}
    path = plot_components(result, tmp_path / "components.png", "toy")
    assert path.stat().st_size > 10_000


def test_collect_without_answers_or_with_given_items(tiny_llama, tiny_probe_setup, tmp_path, monkeypatch):
    """The conflict target needs features only: answers=False never generates (the breadth runs rely on it)."""
    from sparekit.data import load_dataset
    from sparekit.probes import experiment

    _, data = tiny_probe_setup
    monkeypatch.setattr(experiment, "generate_keyed", lambda *a, **k: pytest.fail("generated answers"))
    dataset = load_dataset(str(data))
    found = experiment.collect(tiny_llama, dataset, [Site(1)], tmp_path / "work", k_shot=1,
                               progress=False, answers=False)
    assert found.behaviour == [] and found.target("conflict", Site(1))[0].shape[0] == 32
    monkeypatch.setattr(experiment, "memorised_subset", lambda *a, **k: pytest.fail("re-read memorisation"))
    given = experiment.collect(tiny_llama, dataset, [Site(1)], tmp_path / "given", k_shot=1, progress=False,
                               answers=False, items=dataset.subset(list(range(5, 13))))
    assert torch.equal(given.sub[Site(1)][0], found.sub[Site(1)][5])  # same prompt: demos from all of dataset
