"""benchmarks/gate_replay.py: a gate replayed on cached answers takes the steered answer exactly where it fires."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmark_module import benchmark_module
from sparekit.data import ConflictExample
from sparekit.steering import SteeringPrompt
from sparekit.steering.bench.cells import Cells


@pytest.fixture(scope="module")
def replay():
    yield from benchmark_module("gate_replay")


def test_a_replayed_gate_takes_the_steered_answer_only_where_it_fires(replay):
    examples = [ConflictExample(id=f"e{i}", question="q?", org_context="o", org_answer=("Paris",), sub_context="s",
                                sub_answer=("Rome",)) for i in range(2)]
    prompts = {c: [SteeringPrompt(ex, c, ()) for ex in examples] for c in ("sub", "org")}
    answers = {("none", c, t): ["Paris", "Paris"] for c in ("sub", "org") for t in ("memory", "context")}
    answers.update({("cad", "sub", "memory"): ["Paris", "Paris"], ("cad", "sub", "context"): ["Rome", "Rome"],
                    ("cad", "org", "memory"): ["Lyon", "Lyon"], ("cad", "org", "context"): ["Paris", "Paris"]})
    cells = Cells(None, Path("."), 8, "answer")  # scoring reads no model
    ungated = replay.em_cells(cells, prompts, answers, "cad")
    assert ungated == {"memory": 100.0, "context": 100.0, "no_conflict": 50.0, "no_conflict_memory": 0.0,
                       "no_conflict_context": 100.0}
    fired = {(c, t): np.array([True, False]) for c in ("sub", "org") for t in ("memory", "context")}
    gated = replay.em_cells(cells, prompts, answers, "cad", fired)
    # toward context the unfired conflict prompt is answered unsteered (Paris, not Rome); without conflict only the
    # fired prompt takes CAD's wrong "Lyon" toward memory
    assert gated == {"memory": 100.0, "context": 50.0, "no_conflict": 75.0, "no_conflict_memory": 50.0,
                     "no_conflict_context": 100.0}
    result = replay.as_result({"items": 2, "cad+g": gated, "gate g": {"sub": 0.5, "org": 0.5}})
    assert result == {"methods": {"cad+g": {"em_memory": {"mean": 1.0}, "em_context": {"mean": 0.5},
                                            "em_no_conflict_memory": {"mean": 0.5},
                                            "em_no_conflict_context": {"mean": 1.0}}}}
    # a gate that decides per direction (--source-aware): silent toward memory, the org prompt keeps "Paris"
    fired["org", "memory"] = np.array([False, False])
    assert replay.em_cells(cells, prompts, answers, "cad", fired)["no_conflict"] == 100.0
    assert replay.em_cells(cells, prompts, answers, "none")["context"] == 0.0


def test_a_methods_further_strengths_are_labelled_apart_from_its_tuned_one(replay):
    assert replay.method_labels("cad:0.5,adacad:1,cad:0.05,cad:dev") == {
        "cad": ("cad", 0.5), "adacad": ("adacad", 1), "cad@0.05": ("cad", 0.05), "cad@dev": ("cad", "dev")}


def test_dev_reads_each_folds_own_choice_per_direction(replay, tmp_path):
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / "cad.json").write_text('{"context": {"strength": 0.5}, "memory": {"strength": 0.05}}')
    assert replay.fold_strength(tmp_path, "cad", "dev", "memory") == 0.05
    assert replay.fold_strength(tmp_path, "cad", "dev", "context") == 0.5
    assert replay.fold_strength(tmp_path, "cad", 0.25, "memory") == 0.25


def test_a_folds_seeds_are_averaged_cell_by_cell_over_the_rows_every_seed_has(replay):
    rows = [{"items": 20, "cad": {"memory": 50.0, "context": 80.0}, "cad+recall (run)": {"memory": 60.0}},
            {"items": 20, "cad": {"memory": 70.0, "context": 90.0}}]
    assert replay.mean_rows(rows) == {"items": 20, "seeds": 2, "cad": {"memory": 60.0, "context": 85.0}}


def test_rows_on_the_items_a_mask_keeps_score_only_those_items(replay):
    examples = [ConflictExample(id=f"e{i}", question="q?", org_context="o", org_answer=("Paris",), sub_context="s",
                                sub_answer=("Rome",)) for i in range(2)]
    prompts = {c: [SteeringPrompt(ex, c, ()) for ex in examples] for c in ("sub", "org")}
    answers = {(label, c, t): ["Paris", "Lyon"] for label in ("none", "cad") for c in ("sub", "org")
               for t in ("memory", "context")}
    fired = {(c, t): np.array([False, True]) for c in ("sub", "org") for t in ("memory", "context")}
    cells = Cells(None, Path("."), 8, "answer")
    kept_prompts, kept_answers, kept_fired = replay.on_items([True, False], prompts, answers, fired)
    assert [p.example.id for p in kept_prompts["org"]] == ["e0"] and kept_answers["cad", "org", "memory"] == ["Paris"]
    assert kept_fired["org", "memory"].tolist() == [False]
    assert replay.em_cells(cells, prompts, answers, "cad", fired)["no_conflict_memory"] == 50.0
    assert replay.em_cells(cells, kept_prompts, kept_answers, "cad", kept_fired)["no_conflict_memory"] == 100.0
    assert replay.on_items([True, False], None) == [None]
