"""Leave-one-format-out: the same items in several prompt formats; the held-out format is never fitted on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sparekit.cli.main import main
from sparekit.data import ConflictDataset, ConflictExample, split_by_group, write_jsonl
from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.probes import ProbingData, experiment, leave_one_out
from sparekit.probes.experiment import cross_validate, stack_formats

TRAINED = {"epochs": 200, "lr": 0.05}
SITE = Site(0)
#: per format, the feature its conflicts move along: a and b share one, c has its own
DIRECTION = {"a": 0, "b": 0, "c": 1}


def _items(n: int = 30) -> ConflictDataset:
    rows = [ConflictExample(id=f"r{i}", question=f"q{i}?", org_context=f"c {i}.", org_answer=("a",),
                            sub_context=f"s {i}.", sub_answer=("b",), relation=f"rel{i % 3}") for i in range(n)]
    return ConflictDataset(rows, "d")


def _per_format(items: ConflictDataset) -> dict[str, ProbingData]:
    """The same items in formats a, b, c; column 3 tags each row with its format (0, 1, 2) for the spy."""
    rng = np.random.default_rng(0)
    found = {}
    for tag, (name, direction) in enumerate(DIRECTION.items()):
        org = torch.as_tensor(rng.normal(size=(len(items), 4)), dtype=torch.float32)
        org[:, 3] = tag
        sub = org.clone()
        sub[:, direction] += 6.0
        found[name] = ProbingData(items, {SITE: org}, {SITE: sub}, ["context", "memory"] * (len(items) // 2))
    return found


def test_stacking_tags_rows_by_format_and_keeps_each_items_question_group():
    items = _items()
    data = stack_formats(_per_format(items))
    assert len(data.items) == 90 and data.formats == ["a"] * 30 + ["b"] * 30 + ["c"] * 30
    assert len({ex.id for ex in data.items}) == 90 and data.items[30].id == "r0@b"
    assert data.items.groups() == items.groups() and data.org[SITE].shape == (90, 4)
    train, test = split_by_group(data.items, [0.7, 0.3], seed=0)  # an item sits on one side in every format
    assert not {ex.group for ex in train} & {ex.group for ex in test}
    other = _per_format(items)
    other["b"] = ProbingData(items.subset(range(29)), {}, {}, [])
    with pytest.raises(SparekitError, match="'b' was captured on other items than 'a'"):
        stack_formats(other)


def test_the_held_out_formats_rows_never_enter_the_fit(monkeypatch):
    fitted: list[set[float]] = []
    scored: list[set[float]] = []

    class Spy(experiment.LinearProbe):
        def fit(self, X, y):
            fitted.append(set(torch.as_tensor(X)[:, 3].tolist()))
            return super().fit(X, y)

        def predict_proba(self, X):
            scored.append(set(torch.as_tensor(X)[:, 3].tolist()))
            return super().predict_proba(X)

    monkeypatch.setattr(experiment, "LinearProbe", Spy)
    result = leave_one_out(stack_formats(_per_format(_items())), "conflict", SITE, [0, 1], TRAINED, "format")
    assert set(result) == {"mean", "a", "b", "c", "skipped"} and len(fitted) == 6
    for fit, score in zip(fitted, scored):
        assert len(score) == 1 and not fit & score and len(fit) == 2  # trained on the two other formats only
    assert [s.pop() for s in scored] == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


def test_a_format_with_its_own_conflict_direction_does_not_transfer_but_is_learned_in_distribution():
    data = stack_formats(_per_format(_items(40)))
    held_out = leave_one_out(data, "conflict", SITE, [0], TRAINED, "format")
    assert held_out["a"]["auroc"]["mean"] > 0.95 and held_out["b"]["auroc"]["mean"] > 0.95  # b carries a's direction
    assert held_out["c"]["auroc"]["mean"] < 0.8 and held_out["mean"]["auroc"]["worst"] == held_out["c"]["auroc"]["mean"]
    assert cross_validate(data, "conflict", SITE, [0], 0.3, TRAINED)["auroc"]["mean"] > 0.95  # every format fitted


def test_a_format_split_needs_two_formats():
    one = _per_format(_items())["a"]
    with pytest.raises(SparekitError, match="at least two prompt formats"):
        leave_one_out(one, "conflict", SITE, [0], TRAINED, "format")


@pytest.mark.parametrize(("formats", "message"), [
    ("three_shot", "--split-by format needs at least two prompt formats"),
    ("three_shot,nope", "unknown prompt format 'nope'")])
def test_probe_cli_refuses_bad_format_splits_before_loading_a_model(tmp_path, capsys, formats, message):
    path = tmp_path / "d.jsonl"
    write_jsonl(list(_items(12)), path)
    args = ["probe", "--dataset", str(path), "--model", str(tmp_path / "no-model"), "--split-by", "format",
            "--prompt-format", formats, "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_probe_cli_fits_across_formats_and_holds_each_out(tiny_probe_setup, tmp_path, capsys):
    """On the tiny model: the same items in two formats, a table per held-out format, a probe fitted on both."""
    folder, data = tiny_probe_setup
    run = tmp_path / "run"
    assert main(["probe", "--dataset", str(data), "--model", str(folder), "--layers", "1", "--seeds", "0",
                 "--k-shot", "1", "--prompt-format", "three_shot,rag", "--split-by", "format", "--out", str(run),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prompt_formats"] == ["three_shot", "rag"] and result["n_items"] == 16
    assert set(result["held_out_formats"]) == {"three_shot", "rag"}
    assert (run / "data-train" / "activations").is_dir() and (run / "data-train-rag" / "activations").is_dir()
    assert json.loads((run / "config.json").read_text())["prompt_format"] == "three_shot,rag"
    assert (run / "probes" / "conflict").is_dir()
