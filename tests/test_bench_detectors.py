"""benchmarks/bench_detectors.py: the held-out (relation, format) folds and the recall signal it scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark_module import benchmark_module
from sparekit.data import ConflictDataset, ConflictExample
from sparekit.data.formats import prompt_format
from sparekit.hooks import Site
from sparekit.probes import ProbingData
from sparekit.probes.experiment import stack_formats

SITE = Site(0)
FORMATS = ("a", "b", "c")


@pytest.fixture(scope="module")
def bench():
    yield from benchmark_module("bench_detectors")


def _items(n: int = 48) -> ConflictDataset:
    rows = [ConflictExample(id=f"r{i}", question=f"What is x{i}?", org_context=f"x{i} is red.", org_answer=("red",),
                            sub_context=f"x{i} is blue.", sub_answer=("blue",), relation=f"rel{i % 8}")
            for i in range(n)]
    return ConflictDataset(rows, "d")


def _stacked(items: ConflictDataset) -> ProbingData:
    """The items in formats a, b, c; column 3 tags a row's relation (0-7) and column 4 its format (0-2)."""
    rng = np.random.default_rng(0)
    found = {}
    for tag, name in enumerate(FORMATS):
        org = torch.as_tensor(rng.normal(size=(len(items), 5)), dtype=torch.float32)
        org[:, 3] = torch.tensor([int(ex.relation[3:]) for ex in items], dtype=torch.float32)
        org[:, 4] = tag
        sub = org.clone()
        sub[:, 0] += 4.0
        found[name] = ProbingData(items, {SITE: org}, {SITE: sub}, [])
    return stack_formats(found)


def test_a_held_out_relation_and_format_never_enter_the_probe_fit(bench, monkeypatch):
    seen: list[np.ndarray] = []
    real = bench.LinearProbe.fit

    def spy(self, X, y):
        seen.append(X.numpy()[:, 3:5])
        return real(self, X, y)

    monkeypatch.setattr(bench.LinearProbe, "fit", spy)
    data = _stacked(_items())
    n = len(data.items)
    perfect = np.repeat([0.1, 0.9], n)  # a signal right on every row
    perfect[:6] = np.nan  # not computed on six org rows: they leave dev and test
    fold = bench.fold_scores(data, {"recall": perfect}, [SITE], "rel3", seed=0, test_fmt="b")
    tags = seen[0]
    assert not ((tags[:, 0] == 3) | (tags[:, 1] == 1)).any()  # neither rel3 nor format b was fitted on
    assert not np.isin(tags[:, 0], [int(r[3:]) for r in fold["dev_relations"]]).any()
    assert fold["recall"]["test_accuracy"] == 1.0 and fold["recall"]["test_auroc"] == 1.0
    assert fold["probe"]["test_accuracy"] > 0.8 and set(fold) >= {"probe+recall", "format", "site"}
    every_format = bench.fold_scores(data, {"recall": perfect}, [SITE], "rel3", seed=0)  # one format's protocol
    assert every_format["format"] is None and every_format["recall"]["test_accuracy"] == 1.0
    assert (seen[-1][:, 1] == 1).any() and not (seen[-1][:, 0] == 3).any()  # every format fitted, never rel3
    folds = {r: [bench.fold_scores(data, {"recall": perfect}, [SITE], r, 0, f, {}) for f in FORMATS]
             for r in ("rel0", "rel1")}
    table = bench.summarise(folds)
    assert set(table["recall"]["by_format"]["folds"]) == set(FORMATS)
    assert table["recall"]["test_accuracy"]["worst"] == 1.0 and "jsd" not in table


def test_the_recall_signal_reads_the_context_against_the_closed_book_answer(bench):
    items = _items(8)
    answers = {ex.id: {"closed": "Red" if i % 2 else "the colour green", "p_first": 0.8} for i, ex in enumerate(items)}
    found = bench.recall_signal(items, items, answers, prompt_format("rag"))
    odd, even = found["r1"], found["r0"]
    assert odd["recall_org"] == pytest.approx(0.1) and odd["recall_sub"] == pytest.approx(0.9)
    assert even["recall_org"] == pytest.approx(0.9)  # "green" is in neither context: both read as conflicts
    rows = bench.signal_rows(items, found, ["recall"])["recall"]
    assert rows.shape == (16,) and rows[1] == pytest.approx(0.1) and rows[9] == pytest.approx(0.9)


def test_probe_recall_is_stacked_on_logits_of_probes_that_never_saw_the_relation(bench, monkeypatch, tmp_path):
    from sparekit.probes.training_free import load_combination, save_combinations

    fitted_on: list[set[int]] = []
    real = bench.LinearProbe.fit

    def spy(self, X, y):
        fitted_on.append(set(X.numpy()[:, 3].astype(int).tolist()))
        return real(self, X, y)

    monkeypatch.setattr(bench.LinearProbe, "fit", spy)
    data = _stacked(_items())
    n = len(data.items)
    save_combinations(tmp_path, [bench.Combination("jsd", (1.0, 2.0), 0.5)], "jsd: fitted before")
    recall = np.where(np.arange(2 * n) < n, 0.2, 0.8)  # the recall score, right on every row
    recall[:3] = 0.8  # ... but three false positives
    result = bench.fit_recall_combination(data, recall, tmp_path, SITE)
    left_out = [set(range(8)) - relations for relations in fitted_on]  # one probe per relation, never fitted on it
    assert all(len(out) == 1 for out in left_out) and sorted(out.pop() for out in left_out) == list(range(8))
    combination = load_combination(tmp_path, "recall")
    assert combination.coef[1] > 0 and list(result["coef"]) == list(combination.coef)
    assert load_combination(tmp_path, "jsd").coef == (1.0, 2.0)  # the other combinations are kept
    assert set(result["folds"]) == {f"rel{r}" for r in range(8)}
    assert result["held_out_relation_mean"]["recall"]["accuracy"] == pytest.approx(1 - 3 / (2 * n))
    bench.fit_recall_combination(data, recall, tmp_path, SITE)  # refitting replaces, not repeats, its note
    note = (tmp_path / "detectors.json").read_text()
    assert note.count("recall: stacked") == 1 and "jsd: fitted before" in note
