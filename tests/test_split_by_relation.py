"""Leave-one-relation-out: bad input fails clearly, and nothing of the held-out relation is fitted on."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from sparekit.cli.main import main
from sparekit.data import ConflictDataset, ConflictExample, load_dataset, write_jsonl
from sparekit.data.dataset import held_out_relations
from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.probes import ProbingData, leave_one_out, leave_one_relation_out
from sparekit.probes.experiment import breadth_curve

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
@pytest.mark.parametrize("command", [["probe"], ["bench", "steer"], ["bench", "frontier"]])
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
    assert set(result) == {"mean", "x", "y", "skipped"} and result["skipped"] == []
    for relation in ("x", "y"):
        assert result[relation]["auroc"]["mean"] < 0.3
    in_distribution = leave_one_relation_out(
        ProbingData(ConflictDataset(_rows(["x", "y"] * 40), "d"), {site: org}, {site: sub}, ["context"] * 80),
        "conflict", site, seeds=[0], probe_params=TRAINED)
    assert in_distribution["mean"]["auroc"]["mean"] > 0.95  # both patterns seen in training
    assert result["mean"]["auroc"]["mean"] == pytest.approx(np.mean([result[r]["auroc"]["mean"] for r in "xy"]))


def _kinds_data() -> tuple[ProbingData, Site]:
    """Relations a1, a2 (kind a) shift conflicts along one direction, b1, b2 (kind b) along another."""
    rng = np.random.default_rng(1)
    rows = [ConflictExample(id=f"r{i}", question=f"q{i}?", org_context="c.", org_answer=("a",), sub_context="s.",
                            sub_answer=("b",), relation=r, kind=r[0]) for i, r in enumerate(["a1", "a2", "b1", "b2"] * 20)]
    org = torch.as_tensor(rng.normal(size=(80, 4)), dtype=torch.float32)
    sub = org.clone()
    for i, ex in enumerate(rows):
        sub[i, 0 if ex.kind == "a" else 1] += 6.0
    behaviour = ["context" if i % 3 else "memory" for i in range(80)]
    return ProbingData(ConflictDataset(rows, "d"), {Site(0): org}, {Site(0): sub}, behaviour), Site(0)


def test_leave_one_kind_out_holds_out_every_relation_of_a_kind():
    data, site = _kinds_data()
    by_relation = leave_one_out(data, "conflict", site, [0], TRAINED, "relation")
    by_kind = leave_one_out(data, "conflict", site, [0], TRAINED, "kind")
    assert set(by_kind) == {"mean", "a", "b", "skipped"}
    assert by_relation["mean"]["auroc"]["mean"] > 0.95  # a sibling relation of the same kind was seen
    assert by_kind["mean"]["auroc"]["mean"] < 0.8  # no relation of the held-out kind was
    mean = by_relation["mean"]["accuracy"]
    folds = [by_relation[r]["accuracy"]["mean"] for r in ("a1", "a2", "b1", "b2")]
    assert mean["worst"] == min(folds) and mean["best"] == max(folds) and mean["mean"] == pytest.approx(np.mean(folds))


def test_a_fold_with_one_class_is_skipped_and_named():
    data, site = _kinds_data()
    data.behaviour = ["memory" if ex.relation == "b2" else b for ex, b in zip(data.items, data.behaviour)]
    result = leave_one_out(data, "source", site, [0], TRAINED, "relation")
    assert result["skipped"] == ["b2"] and "b2" not in result and {"a1", "a2", "b1"} <= set(result)


def test_breadth_curve_draws_training_relations_and_scores_the_held_out_one():
    data, site = _kinds_data()
    curve = breadth_curve(data, site, [1, 3], draws=6, probe_params=TRAINED)
    assert set(curve) == {1, 3} and curve[3]["n"] == 6
    assert curve[3]["accuracy"]["mean"] > curve[1]["accuracy"]["mean"]  # with 3 of 4, a sibling is always seen
    with pytest.raises(SparekitError, match="cannot fit on 4 relations"):
        breadth_curve(data, site, [4], draws=1)


def test_breadth_plot_is_written(tmp_path):
    from sparekit.probes.plots import plot_breadth

    curve = {k: {"accuracy": {"mean": 0.6 + 0.02 * k, "std": 0.05}, "auroc": {"mean": 0.7, "std": 0.04}}
             for k in (1, 2, 4, 8, 15)}
    assert plot_breadth(curve, tmp_path / "b.png", "toy", in_distribution=0.9).stat().st_size > 10_000


def test_benchmark_holds_a_relation_out_of_pool_and_dev(tiny_llama, tmp_path):
    from sparekit.steering.bench import BenchConfig, SteeringBenchmark
    from sparekit.utils.io import atomic_write_json

    dataset = load_dataset("default", limit=160, seed=2)
    memorised = tmp_path / "memorised.json"
    atomic_write_json(memorised, {"ids": [ex.id for ex in dataset]})
    config = BenchConfig(methods=("none",), pool_groups=30, dev_groups=10, test_limit=None,
                         held_out_relation="currency")
    pool, dev, test = SteeringBenchmark(tiny_llama, dataset, config, tmp_path / "run", progress=False,
                                        memorised_file=memorised).splits()
    assert {ex.relation for ex in test} == {"currency"}
    assert len(test) == sum(ex.relation == "currency" for ex in dataset)
    assert "currency" not in {ex.relation for ex in pool} | {ex.relation for ex in dev}
    assert len(pool.groups()) == 30 and len(dev.groups()) == 10 and not set(pool.groups()) & set(dev.groups())
    config.held_out_relation = "planets"
    with pytest.raises(SparekitError, match="no relation 'planets'"):
        SteeringBenchmark(tiny_llama, dataset, config, tmp_path / "other", progress=False,
                          memorised_file=memorised).splits()


def test_leave_one_relation_out_runs_each_relation_and_averages(tiny_llama, tmp_path, monkeypatch):
    from sparekit.reporting.steering import fold_table
    from sparekit.steering.bench import BenchConfig
    from sparekit.steering.bench import runner as benchmark

    em = {"capital": 0.2, "continent": 0.4, "currency": 0.6, "city_country": 0.8}
    seen = []

    def fake_run(self):
        relation = self.config.held_out_relation
        seen.append((relation, self.out.name, self.memorised_file))
        stat = {"mean": em[relation], "std": 0.0}
        return {"methods": {"none": {"em_memory": stat, "em_context": stat, "em_no_conflict": stat}}}

    monkeypatch.setattr(benchmark.SteeringBenchmark, "run", fake_run)
    summary = benchmark.leave_one_out(tiny_llama, load_dataset("default"), BenchConfig(methods=("none",)), tmp_path)
    assert [s[0] for s in seen] == list(em) and all(s[1] == f"held-out-{s[0]}" for s in seen)
    assert {s[2] for s in seen} == {tmp_path / "memorised.json"}  # one closed-book pass for all runs
    assert summary["methods"]["none"]["em_memory"]["mean"] == pytest.approx(0.5)
    assert summary["methods"]["none"]["em_memory"]["worst"] == pytest.approx(0.2)
    assert json.loads((tmp_path / "results.json").read_text())["folds"] == list(em)
    table = fold_table(summary)
    assert "| none | 20.0 / 20.0 / 20.0 | 40.0 / 40.0 / 40.0 |" in table and "| 50.0 ± 22.4 / 50.0 ± 22.4" in table
    assert table.rstrip().endswith("| 20.0 / 20.0 / 20.0 |")  # the worst fold


def test_leave_one_relation_out_frontier_keeps_points_every_relation_has(tiny_llama, tmp_path, monkeypatch):
    from sparekit.steering.bench import BenchConfig
    from sparekit.steering.bench import runner as benchmark

    def point(strength, em):
        return {"strength": strength, "em_target": em, "em_no_conflict": 1.0 - em, "answer_nll_no_conflict": em}

    curves = {"capital": [{**point(1.0, 0.2), "seeds": 3}, point(2.0, 0.4)], "continent": [point(1.0, 0.6)],
              "currency": [point(1.0, 0.4), point(2.0, 0.8)], "city_country": [point(2.0, 0.0), point(1.0, 0.8)]}

    def fake_frontier(self, cached_only=False):
        return {"actadd": {"memory": curves[self.config.held_out_relation]}}

    monkeypatch.setattr(benchmark.SteeringBenchmark, "frontier", fake_frontier)
    result = benchmark.leave_one_out_frontier(tiny_llama, load_dataset("default"), BenchConfig(methods=("actadd",)),
                                              tmp_path)
    (mean,) = result["mean"]["actadd"]["memory"]  # strength 2 is missing on continent: left out of the mean
    assert mean["strength"] == 1.0 and mean["em_target"] == pytest.approx(0.5)
    assert mean["em_no_conflict"] == pytest.approx(0.5) and set(result["held_out"]) == set(curves)
    assert "seeds" not in mean  # a key one fold's frontier lacks (an older run's) is left out, not an error
    assert json.loads((tmp_path / "frontier.json").read_text())["mean"] == result["mean"]


def test_probe_cli_refuses_a_kind_split_of_rows_without_kinds_before_loading_a_model(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    write_jsonl(_rows(["x", "y"] * 6), path)
    assert main(["probe", "--dataset", str(path), "--split-by", "kind", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "12 of 12 rows have no 'kind' field" in err and err.count("\n") == 1 and "Traceback" not in err


def test_breadth_draws_hold_out_a_fixed_set_or_one_relation_and_draw_the_training_relations():
    import random

    from sparekit.data.dataset import breadth_draws

    relations = [f"r{i}" for i in range(8)]
    fixed = breadth_draws(relations, 3, draws=5, seed=1, held_out=["r0", "r5"])
    assert all(held == ["r0", "r5"] and len(train) == 3 and not {"r0", "r5"} & set(train) for held, train in fixed)
    assert len({tuple(train) for _, train in fixed}) > 1 and fixed == breadth_draws(relations, 3, 5, 1, ["r0", "r5"])
    rng = random.Random("0:2:0")  # one random held-out relation: the probe curve's draws, unchanged
    held = rng.choice(relations)
    assert breadth_draws(relations, 2, draws=1)[0] == ([held], rng.sample([r for r in relations if r != held], 2))
    with pytest.raises(SparekitError, match="cannot fit on 7 relations and hold 2 out of 8"):
        breadth_draws(relations, 7, draws=1, held_out=["r0", "r1"])


def test_folds_in_separate_folders_make_one_closed_book_pass(tiny_llama, tmp_path, monkeypatch):
    """`--held-out-relation` fold by fold, each in its own --out: the memorised ids come from sparekit's cache
    after the first fold (keyed by model, rows and k_shot), instead of a closed-book pass over the whole
    dataset per fold; another model or k_shot is a new pass."""
    from sparekit.steering.bench import data as bench_data
    from sparekit.steering.bench.data import memorised_items

    monkeypatch.setenv("SPAREKIT_CACHE", str(tmp_path / "cache"))
    passes = []

    def counted(lm, dataset, seed, k_shot, batch_size):
        passes.append(k_shot)
        return dataset.subset(range(0, len(dataset), 2))

    monkeypatch.setattr(bench_data, "memorised_subset", counted)
    dataset = load_dataset("default", limit=40, seed=2)
    first = memorised_items(tiny_llama, dataset, tmp_path / "held-out-capital" / "memorised.json", 3, 8)
    second = memorised_items(tiny_llama, dataset, tmp_path / "held-out-currency" / "memorised.json", 3, 8)
    assert passes == [3] and [ex.id for ex in first] == [ex.id for ex in second] == [ex.id for ex in dataset][::2]
    assert json.loads((tmp_path / "held-out-currency" / "memorised.json").read_text())["ids"] == [ex.id for ex in first]
    memorised_items(tiny_llama, dataset, tmp_path / "zero-shot" / "memorised.json", 0, 8)
    memorised_items(tiny_llama, dataset.subset(range(10)), tmp_path / "fewer-rows" / "memorised.json", 3, 8)
    assert passes == [3, 0, 3]
    # a hub snapshot without a commit names no one set of weights: nothing shared, a pass per folder
    unpinned = tiny_llama._replace(info=dataclasses.replace(tiny_llama.info, model_hash="hub:m@unknown"))
    assert tiny_llama.info.pins_weights and not unpinned.info.pins_weights
    for fold in ("a", "b"):
        memorised_items(unpinned, dataset, tmp_path / fold / "memorised.json", 3, 8)
    assert passes == [3, 0, 3, 3, 3] and len(list((tmp_path / "cache" / "memorised").glob("*.json"))) == 3


def test_memorised_under_several_seeds_keeps_what_every_seed_answers_and_a_file_keeps_its_seeds(
        tiny_llama, tmp_path, monkeypatch):
    """--memorised-seeds 42,0: an item counts where the model answers it right under each seed's closed-book
    demonstrations; a memorised.json written for other seeds is refused (one line), not silently reused."""
    from sparekit.errors import SparekitError
    from sparekit.steering.bench import BenchConfig
    from sparekit.steering.bench import data as bench_data
    from sparekit.steering.bench.data import memorised_items

    monkeypatch.setenv("SPAREKIT_CACHE", str(tmp_path / "cache"))
    seeds_asked = []

    def by_seed(lm, dataset, seed, k_shot, batch_size):  # seed 42 knows the even rows, seed 0 every third
        seeds_asked.append(seed)
        return dataset.subset(range(0, len(dataset), 2 if seed == 42 else 3))

    monkeypatch.setattr(bench_data, "memorised_subset", by_seed)
    dataset = load_dataset("default", limit=40, seed=2)
    both = memorised_items(tiny_llama, dataset, tmp_path / "both" / "memorised.json", 3, 8, (42, 0))
    assert [ex.id for ex in both] == [ex.id for ex in dataset][::6] and seeds_asked == [42, 0]
    one = memorised_items(tiny_llama, dataset, tmp_path / "one" / "memorised.json", 3, 8)
    assert [ex.id for ex in one] == [ex.id for ex in dataset][::2] and seeds_asked == [42, 0]  # each seed's pass once
    memorised_items(tiny_llama, dataset, tmp_path / "three" / "memorised.json", 3, 8, (42, 0, 1))
    assert seeds_asked == [42, 0, 1]  # only the new seed's pass
    with pytest.raises(SparekitError, match="memorised under closed-book seeds 42, not 42,0"):
        memorised_items(tiny_llama, dataset, tmp_path / "one" / "memorised.json", 3, 8, (42, 0))
    assert "memorised_seeds" not in BenchConfig().record()  # run directories from before the option resume
    assert BenchConfig(memorised_seeds=(42, 0)).record()["memorised_seeds"] == (42, 0)
    with pytest.raises(SparekitError, match="distinct seeds"):
        BenchConfig(memorised_seeds=(1, 1))
