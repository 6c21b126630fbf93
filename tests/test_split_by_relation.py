"""Leave-one-relation-out: bad input fails clearly, and nothing of the held-out relation is fitted on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sparekit.cli.main import main
from sparekit.data import ConflictDataset, ConflictExample, load_dataset, write_jsonl
from sparekit.data.dataset import held_out_relations
from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.probes import ProbingData, leave_one_relation_out

TRAINED = {"epochs": 200, "lr": 0.05}  # a well-trained probe on this small synthetic set


def _rows(relations: list[str | None]) -> list[ConflictExample]:
    return [ConflictExample(id=f"r{i}", question=f"q{i}?", org_context=f"c {i}.", org_answer=("a",),
                            sub_context=f"s {i}.", sub_answer=("b",), relation=r) for i, r in enumerate(relations)]


def test_held_out_relations_need_every_row_labelled_and_two_relations():
    assert held_out_relations(ConflictDataset(_rows(["x", "y", "x"]), "d")) == ["x", "y"]
    with pytest.raises(SparekitError, match="1 of 3 rows have no 'relation'"):
        held_out_relations(ConflictDataset(_rows(["x", None, "y"]), "d"))
    with pytest.raises(SparekitError, match="only one relation"):
        held_out_relations(ConflictDataset(_rows(["x", "x"]), "d"))
    assert held_out_relations(load_dataset("default")) == ["capital", "continent", "currency", "city_country"]


@pytest.mark.parametrize("relations", [[None] * 12, ["x"] * 12])
@pytest.mark.parametrize("command", [["probe"], ["bench", "steer"]])
def test_cli_refuses_bad_relation_splits_before_loading_a_model(tmp_path, capsys, relations, command):
    path = tmp_path / "d.jsonl"
    write_jsonl(_rows(relations), path)
    assert main([*command, "--dataset", str(path), "--split-by", "relation", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert ("no 'relation' field" in err or "only one relation" in err) and "Traceback" not in err


def test_probe_is_fitted_on_the_other_relations_and_scored_on_the_held_out_one():
    """Conflicts of relation 'x' move along (+6, -6), those of 'y' along (0, +6): one direction separates
    both, but a probe fitted on one relation alone ranks the other's conflicts *below* its non-conflicts."""
    rng = np.random.default_rng(0)
    items = ConflictDataset(_rows(["x"] * 40 + ["y"] * 40), "d")
    site = Site(0)
    org = torch.as_tensor(rng.normal(size=(80, 4)), dtype=torch.float32)
    sub = org.clone()
    sub[:40, 0] += 6.0
    sub[:40, 1] -= 6.0
    sub[40:, 1] += 6.0
    data = ProbingData(items, {site: org}, {site: sub}, ["context"] * 80)
    result = leave_one_relation_out(data, "conflict", site, seeds=[0], probe_params=TRAINED)
    assert set(result) == {"mean", "x", "y"}
    for relation in ("x", "y"):
        assert result[relation]["auroc"]["mean"] < 0.3
    in_distribution = leave_one_relation_out(
        ProbingData(ConflictDataset(_rows(["x", "y"] * 40), "d"), {site: org}, {site: sub}, ["context"] * 80),
        "conflict", site, seeds=[0], probe_params=TRAINED)
    assert in_distribution["mean"]["auroc"]["mean"] > 0.95  # both patterns seen in training
    assert result["mean"]["auroc"]["mean"] == pytest.approx(np.mean([result[r]["auroc"]["mean"] for r in "xy"]))
