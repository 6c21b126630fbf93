"""The steering benchmark loop on the real default model, at a tiny scale, and its resume."""

from __future__ import annotations

import json

import pytest

from sparekit.data import load_dataset
from sparekit.errors import SparekitError
from sparekit.reporting.steering import markdown_table
from sparekit.steering.bench import DEV_SEED, BenchConfig, SteeringBenchmark, eval_prompts
from sparekit.steering.bench.protocol import method_kind
from sparekit.steering import Combined
from sparekit.steering.fitted import FittedBundle
from sparekit.utils.io import atomic_write_json


def test_method_labels_parse():
    assert method_kind("spare+gate") == ("spare", "gate") and method_kind("actadd") == ("actadd", None)
    assert method_kind("cad+recall") == ("cad", "recall") and method_kind("adacad+recall") == ("adacad", "recall")
    with pytest.raises(SparekitError, match="unknown method variant"):
        method_kind("spare+always")


def test_frontier_sweeps_the_dev_grid_plus_extra_strengths():
    from sparekit.steering import make_method

    config = BenchConfig(strength_grids={"actadd": [2.0, 4.0]}, sweep_strengths={"actadd": [1.0, 2.0], "icl": [3.0]})
    assert config.strengths(make_method("actadd")) == (2.0, 4.0)
    assert config.sweep(make_method("actadd")) == (1.0, 2.0, 4.0)
    assert config.sweep(make_method("icl")) == (None,)  # no strength: nothing to sweep
    assert config.sweep(make_method("spare")) == config.strengths(make_method("spare"))


def test_eval_prompts_draw_demos_from_the_pool_never_the_item():
    data = load_dataset("default", limit=60, seed=1)
    pool, items = data[:30], data[30:]
    pool_questions = {ex.question for ex in pool}
    for prompt in eval_prompts(items, pool, "sub", 42, 3):
        assert len(prompt.demos) == 3
        for demo in prompt.demos:
            question = demo.split("question: ", 1)[1].split("\n", 1)[0]
            assert question in pool_questions and question != prompt.example.question
        assert prompt.text.endswith(f"context: {prompt.example.sub_context}\nquestion: {prompt.example.question}\nanswer:")
    again = eval_prompts(items, pool, "sub", 42, 3)
    assert [p.demos for p in again] == [p.demos for p in eval_prompts(items, pool, "sub", 42, 3)]


@pytest.mark.slow
def test_benchmark_runs_and_resumes_without_generating(default_lm, tmp_path, monkeypatch):
    dataset = load_dataset("default", limit=60, seed=3)
    config = BenchConfig(methods=("none", "actadd", "spare", "spare+gate", "spare+cad+gate"), seeds=(42,),
                         layers=(5, 6), pool_groups=12, dev_groups=3, test_limit=6, behaviour_seeds=(0,),
                         param_grids={"spare": {"mi_mass": [0.3]}, "actadd": {"layer": [6]}},
                         strength_grids={"spare": [4.0], "actadd": [8.0], "cad": [0.5]})
    bench = SteeringBenchmark(default_lm, dataset, config, tmp_path, progress=False)
    summary = bench.run()
    assert summary["splits"]["test_items"] == 6 and summary["splits"]["pool_groups"] == 12
    assert set(summary["methods"]) == {"none", "actadd", "spare", "spare+gate", "spare+cad+gate"}
    for result in summary["methods"].values():
        for key in ("em_memory", "em_context", "em_no_conflict"):
            assert 0.0 <= result[key]["mean"] <= 1.0 and result[key]["std"] == 0.0
    # the unsteered method does not move anything relative to itself
    assert summary["methods"]["none"]["conditional"]["memory"]["C→M"]["mean"] in (0.0, None)
    assert "| spare+gate |" in markdown_table(summary)
    exported = FittedBundle.load(tmp_path / "fitted" / "spare+gate", default_lm.info.model_hash)
    assert exported.gate is not None and exported["memory"].strength == 4.0 and len(exported.demos) == 6
    assert exported["memory"].params == summary["methods"]["spare"]["tuned"]["memory"]["params"]
    _check_combined_export(bench, tmp_path, summary)
    # the pool's behaviour prompts, written for SAE training: pool items only, labels as in the behaviour data
    rows = [json.loads(line) for line in (tmp_path / "behaviour_prompts.jsonl").read_text().splitlines()]
    behaviour = json.loads((tmp_path / "behaviour.json").read_text())
    assert [r["uses_context"] for r in rows] == behaviour["labels"] and all(r["text"].endswith("answer:") for r in rows)
    pool_ids = {key.split("|")[0] for key in behaviour["keys"]}
    assert {r["id"].rsplit(":", 1)[0] for r in rows} == pool_ids

    curves = SteeringBenchmark(default_lm, dataset, config, tmp_path, progress=False).frontier(["actadd"])
    for toward in ("memory", "context"):
        (point,) = curves["actadd"][toward]  # one strength in the grid
        assert point["strength"] == 8.0 and point["answer_nll_no_conflict"] > 0
        assert point["em_target"] == summary["methods"]["actadd"]["per_seed"][f"em_{toward}"][0]

    # a rerun reads every cell back: generating anything now would fail
    def no_generation(*args, **kwargs):
        raise AssertionError("resumed run generated again")

    monkeypatch.setattr("sparekit.steering.base.greedy_generate", no_generation)
    monkeypatch.setattr("sparekit.steering.behaviour.greedy_generate", no_generation)
    again = SteeringBenchmark(default_lm, dataset, config, tmp_path, progress=False).run()
    assert json.dumps(again["methods"], sort_keys=True) == json.dumps(summary["methods"], sort_keys=True)

    swept = BenchConfig(**{**config.__dict__, "sweep_strengths": {"actadd": [1.0]}})
    partial = SteeringBenchmark(default_lm, dataset, swept, tmp_path, progress=False).frontier(["actadd"],
                                                                                               cached_only=True)
    assert [p["strength"] for p in partial["actadd"]["memory"]] == [8.0]  # 1.0 not computed yet: skipped

    monkeypatch.undo()
    wider = BenchConfig(**{**config.__dict__, "methods": ("actadd",), "strength_grids": {"spare": [4.0],
                                                                                        "actadd": [8.0, 2.0]}})
    SteeringBenchmark(default_lm, dataset, wider, tmp_path, progress=False).run()
    searched = json.loads((tmp_path / "tuning" / "actadd.json").read_text())["searched"]
    assert searched["strengths"] == [8.0, 2.0]
    assert len(list((tmp_path / "generations" / "dev").glob("actadd-layer=6-2.0-*.jsonl"))) == 2

    # an added seed adds test cells only: no behaviour data, no dev cell, seed 42's numbers unchanged
    dev_cells = sorted((tmp_path / "generations" / "dev").iterdir())
    monkeypatch.setattr("sparekit.steering.behaviour.greedy_generate", no_generation)
    seeded = BenchConfig(**{**config.__dict__, "seeds": (42, 43)})
    more = SteeringBenchmark(default_lm, dataset, seeded, tmp_path, progress=False).run()
    assert sorted((tmp_path / "generations" / "dev").iterdir()) == dev_cells
    for label, result in more["methods"].items():
        assert len(result["per_seed"]["em_context"]) == 2
        assert result["per_seed"]["em_context"][0] == summary["methods"][label]["per_seed"]["em_context"][0]
    monkeypatch.undo()
    # the frontier sweeps every seed, as the tuned rows are measured: each point the seeds' mean
    curves = SteeringBenchmark(default_lm, dataset, seeded, tmp_path, progress=False).frontier(["actadd"])
    for toward in ("memory", "context"):
        (point,) = curves["actadd"][toward]
        assert point["seeds"] == 2
        assert point["em_target"] == pytest.approx(more["methods"]["actadd"]["em_" + toward]["mean"])

    changed = BenchConfig(**{**config.__dict__, "k_shot": 2})
    with pytest.raises(SparekitError, match="different configuration"):
        SteeringBenchmark(default_lm, dataset, changed, tmp_path, progress=False)


def test_frontier_plot_draws_both_harm_measures(tmp_path):
    from PIL import Image

    from sparekit.reporting.frontier import plot_frontier

    point = {"strength": 2.0, "em_target": 0.5, "em_no_conflict": 0.9, "answer_nll_no_conflict": 0.4}
    curves = {f"m{i}": {"memory": [point, {**point, "strength": 4.0, "em_target": 0.6}], "context": [point]}
              for i in range(12)}
    curves["none"] = {"memory": [{**point, "strength": None}], "context": [{**point, "strength": None}]}
    path = plot_frontier(curves, tmp_path / "frontier.png")
    width, height = Image.open(path).size
    assert height > width / 2  # two rows of panels: EM without conflict and answer NLL
    without_nll = {k: {d: [{kk: vv for kk, vv in p.items() if kk != "answer_nll_no_conflict"} for p in pts]
                       for d, pts in v.items()} for k, v in curves.items()}
    assert Image.open(plot_frontier(without_nll, tmp_path / "one-row.png")).size[1] < height


@pytest.mark.slow
def test_dev_em_of_none_is_the_harness_unsteered_em_on_the_same_items(default_lm, tmp_path):
    """Tuning scores dev with the harness's prompts and labels: one builder, one scoring."""
    from statistics import fmean

    from tqdm.auto import tqdm

    from sparekit.evaluation.harness import condition_prompts, generate_keyed
    from sparekit.evaluation.metrics import behaviour_label

    dataset = load_dataset("default", limit=40, seed=5)
    atomic_write_json(tmp_path / "memorised.json", {"ids": [ex.id for ex in dataset]})  # skip the closed-book pass
    config = BenchConfig(methods=("none",), seeds=(42,), pool_groups=20, dev_groups=8, test_limit=4)
    bench = SteeringBenchmark(default_lm, dataset, config, tmp_path, batch_size=1, progress=False)
    pool, dev, test = bench.splits()
    for items, seed in ((dev, DEV_SEED), (test, 42)):
        for context in ("org", "sub"):
            harness = condition_prompts(items, context, seed, config.k_shot, demo_pool=pool)
            assert [p.text for p in eval_prompts(items, pool, context, seed, config.k_shot)] == \
                [harness[ex.id] for ex in items]
    tuned = bench.tuner.tune("none", None, dev, pool)  # type: ignore[arg-type]
    with tqdm(disable=True) as bar:  # batch size 1 on both sides: no padding, the same greedy answers
        answers = generate_keyed(default_lm, condition_prompts(dev, "sub", DEV_SEED, config.k_shot, demo_pool=pool),
                                 1, None, "sub", bar)
    labels = [behaviour_label(answers[ex.id], ex, dev.context_match) for ex in dev]
    assert len(dev) == 6 and 0 < labels.count("context") < len(dev)
    assert tuned["context"]["dev_em"] == pytest.approx(fmean(label == "context" for label in labels))
    assert tuned["memory"]["dev_em"] == pytest.approx(fmean(label == "memory" for label in labels))


def test_a_cached_cell_is_reused_only_for_the_same_prompt_text(tiny_llama, tmp_path):
    from sparekit.data import ConflictDataset
    from sparekit.steering import fitted_without_data

    dataset = ConflictDataset([ex for ex in load_dataset("default", limit=12, seed=1)], "d")
    bench = SteeringBenchmark(tiny_llama, dataset, BenchConfig(methods=("none",)), tmp_path, progress=False)
    none = fitted_without_data("none")
    pool, items = dataset[:8], dataset[8:]
    first = eval_prompts(items, pool, "sub", 1, 2)
    cell = ("dev", "none", {}, none)
    generated = bench.cells.get(*cell, first, "context", None, None)
    assert bench.cells.get(*cell, first, "context", None, None, cached_only=True) == generated
    redrawn = eval_prompts(items, pool, "sub", 2, 2)  # same ids, other demonstrations
    assert [p.example.id for p in redrawn] == [p.example.id for p in first] and redrawn != first
    assert bench.cells.get(*cell, redrawn, "context", None, None, cached_only=True) is None


def test_a_cached_gated_cell_is_reused_only_under_the_same_gate_signature(tiny_llama, tmp_path):
    import torch

    from sparekit.data import ConflictDataset
    from sparekit.steering import fitted_without_data
    from sparekit.steering.base import Gate

    class EveryRow(Gate):
        def __init__(self, revision: int):
            self.revision = revision

        def decide(self, lm, prompts):
            return torch.ones(len(prompts), dtype=torch.bool)

        def signature(self) -> str:
            return f"every-row:{self.revision}"

    dataset = ConflictDataset([ex for ex in load_dataset("default", limit=10, seed=1)], "d")
    bench = SteeringBenchmark(tiny_llama, dataset, BenchConfig(methods=("cad+gate",)), tmp_path, progress=False)
    cad, prompts = fitted_without_data("cad"), eval_prompts(dataset[8:], dataset[:8], "sub", 1, 2)
    cell = ("test", "cad+gate", {}, cad, prompts, "context", 0.5)
    generated = bench.cells.get(*cell, EveryRow(1), 42)
    assert bench.cells.get(*cell, EveryRow(1), 42, cached_only=True) == generated
    assert bench.cells.get(*cell, EveryRow(2), 42, cached_only=True) is None  # the gate changed: decide anew
    assert bench.cells.get(*cell, None, 42, cached_only=True) is None  # nor is a gated cell read as ungated


def test_a_cut_cell_file_is_recomputed_not_a_traceback(tiny_llama, tmp_path, caplog):
    """A crash on a filesystem without atomic rename can leave a cut cell: rerunning recomputes it."""
    import logging

    from sparekit.data.default import build_default_dataset
    from sparekit.steering import make_method
    from sparekit.steering.bench import BenchConfig, SteeringBenchmark, eval_prompts

    data = build_default_dataset(0).subset(list(range(12)))
    bench = SteeringBenchmark(tiny_llama, data, BenchConfig(methods=("none",)), tmp_path, batch_size=4)
    prompts = eval_prompts(data.subset(list(range(4))), data, "sub", seed=42, k_shot=2)
    import numpy as np

    from sparekit.steering.base import BehaviourData

    method = make_method("none").fit(BehaviourData([], np.array([1, 0]), {}))
    first = bench.cells.get("test", "none", {}, method, prompts, "memory", None, None, seed=42)
    path = next((tmp_path / "generations" / "test").glob("*.jsonl"))
    path.write_text(path.read_text()[:25])
    with caplog.at_level(logging.WARNING):
        again = bench.cells.get("test", "none", {}, method, prompts, "memory", None, None, seed=42)
    assert again == first and "damaged" in caplog.text


def _check_combined_export(bench, out, summary) -> None:
    """A combined label exports one bundle (its gate inside) whose methods, read back, generate its test cells
    again."""
    bundle = FittedBundle.load(out / "fitted" / "spare+cad+gate", bench.lm.info.model_hash)
    pool, _, test = bench.splits()
    prompts = bench.test_prompts(test, pool, "sub", 42)
    assert summary["methods"]["spare+cad+gate"]["tuned_partner"]["context"]["strength"] == 0.5
    for toward in ("memory", "context"):
        fitted = bundle[toward]
        assert isinstance(fitted.method, Combined) and fitted.method.second.kind == "cad"
        assert (fitted.method.second_strength, fitted.strength) == (0.5, 4.0)
        with fitted.method.steer(bench.lm, toward, fitted.strength, gate=bundle.require_gate()) as steered:
            again = steered.generate(prompts)
        (cell,) = (out / "generations" / "test").glob(f"spare+cad+gate-*-seed42-sub-{toward}.jsonl")
        assert again == [json.loads(line)["prediction"] for line in cell.open()]
