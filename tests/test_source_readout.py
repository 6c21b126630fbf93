"""benchmarks/source_readout.py: the conflict prompt's readings (cached per chunk) and the held-out folds of the
training-free source prediction."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark_module import benchmark_module
from sparekit.data import load_dataset


@pytest.fixture(scope="module")
def readout():
    yield from benchmark_module("source_readout")


def _rows(n: int = 40, separable: bool = True):
    """Rows of two relations and two formats; ``mem_top`` says memory exactly where the label is memory."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        context = int(i % 8 >= 2)  # 75 % context, as the corpus
        signal = (1 - context) if separable else rng.integers(0, 2)
        values = {name: float(rng.normal()) for name in readout_names()}
        values.update(mem_top=float(signal), mem_first=float(signal) * 3 - 2)
        rows.append((f"rel{i % 2}", f"fmt{i // 8 % 2}", context, values))
    return rows


def readout_names():
    return ("mem_first", "mem_top", "top", "mem_with", "mem_closed", "suppressed", "confidence", "ctx_first",
            "ctx_with", "mem_vs_ctx")


def test_folds_score_each_reading_against_the_other_folds_majority(readout):
    table = readout.fold_table(_rows(), 0)
    assert set(table["folds"]) == {"rel0", "rel1"}
    summary = table["summary"]
    assert summary["majority_accuracy"] == pytest.approx(0.75)
    for reader in ("regression", "mem_top rule"):
        assert summary[reader]["accuracy"] == 1.0 and summary[reader]["over_majority"] == pytest.approx(0.25)
    noise = readout.fold_table(_rows(separable=False), 1)["summary"]
    assert noise["mem_top rule"]["accuracy"] < 0.9  # a reading that says nothing does not look like one that does


def test_readings_are_labelled_cached_and_need_no_context_answer_to_be_read(readout, tiny_llama, tmp_path,
                                                                           monkeypatch):
    data = load_dataset("broad", limit=24, seed=2)
    items = data.subset(list(range(6)))
    recalled = {ex.id: {"closed": ex.org_answer[0], "p_first": 0.5} for ex in items}
    read = readout.readings(tiny_llama, data, items, recalled, tmp_path, "rag")
    assert set(read) == {ex.id for ex in items}
    for row in read.values():
        assert row["label"] in ("context", "memory", "other") and row["mem_top"] in (0.0, 1.0)
        assert row["mem_first"] <= row["top"] <= 0 and row["mem_with"] <= 0 and row["mem_closed"] <= 0
    monkeypatch.setattr(readout, "greedy_generate", lambda *a, **k: pytest.fail("a cached chunk was recomputed"))
    assert readout.readings(tiny_llama, data, items, recalled, tmp_path, "rag") == read
    rows = readout.feature_rows(items, recalled, {"rag": read})
    assert all(set(readout.FEATURES) <= set(values) for *_, values in rows)
