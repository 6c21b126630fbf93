"""benchmarks/ship_probes.py's splits, weighting and per-format scoring on a synthetic table (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from sparekit.hooks import Site

from benchmark_module import benchmark_module

FORMATS = ("three_shot", "zero_shot")


@pytest.fixture(scope="module")
def ship():
    yield from benchmark_module("ship_probes")


def _table(ship, n_broad: int = 20):
    """org/sub rows of ``n_broad`` broad items and one pool, dev and test item, in two formats."""
    parts = ["broad"] * n_broad + ["pool", "dev", "test"]
    rows = [(fmt, part, i, label) for fmt in FORMATS for i, part in enumerate(parts) for label in (0, 1)]
    col = [np.array(values, dtype=object) for values in zip(*rows)]
    conflict = col[3].astype(int)
    X = np.where(conflict[:, None] == 1, 1.0, -1.0) * np.ones((len(rows), 3)) + np.arange(len(rows))[:, None] * 1e-3
    return ship.Table({Site(10): X.astype(np.float32)}, conflict, np.array([""] * len(rows), dtype=object), col[0],
                      col[1], np.array(["r"] * len(rows), dtype=object), np.array(["k"] * len(rows), dtype=object),
                      np.array([f"g{i}" for i in col[2]], dtype=object))


def test_splits_keep_question_groups_apart_and_never_fit_the_test_split(ship):
    table = _table(ship)
    masks = ship.split_masks(table, seed=0)
    assert not set(table.group[masks["fit"]]) & set(table.group[masks["dev"]])
    assert set(table.part[masks["test"]]) == {"test"} and not (masks["test"] & (masks["fit"] | masks["dev"])).any()
    assert "pool" in set(table.part[masks["fit"]]) and "dev" in set(table.part[masks["dev"]])
    assert 4 <= len(set(table.group[masks["dev"] & (table.part == "broad")])) <= 8  # about 30 % of 20 groups


def test_weighting_repeats_only_the_default_rows(ship):
    table = _table(ship)
    everything = np.ones(len(table.conflict), bool)
    once, thrice, alone = (ship.weighted(table, everything, w) for w in (1, 3, 0))
    default = np.sum(table.part != "broad")
    assert len(thrice) == len(once) + 2 * default and len(alone) == default
    assert set(table.part[alone]) == {"pool", "dev", "test"}


def test_scores_per_format_and_the_best_offset(ship):
    table = _table(ship)
    idx = np.arange(len(table.conflict))
    logit = np.where(table.conflict == 1, 2.0, -2.0)
    logit[table.fmt == "zero_shot"] += 3.0  # one format's classes sit above the shared threshold
    scores = ship.by_format(table, idx, logit, "conflict")
    assert scores["three_shot"]["accuracy"] == 1.0 and scores["zero_shot"]["accuracy"] == 0.5
    assert scores["zero_shot"]["auroc"] == 1.0 and scores["all"]["n"] == len(idx)
    offset = ship.best_offset(table.conflict[table.fmt == "zero_shot"], logit[table.fmt == "zero_shot"])
    assert 1.0 <= offset < 5.0  # between the format's org logits (1) and sub logits (5)
    assert ship.by_format(table, idx, logit, "conflict", {"zero_shot": offset})["zero_shot"]["accuracy"] == 1.0
