"""``+recall`` in the steering benchmark: a method gated on the recall gate, with the ungated method's dev
settings, steering exactly the test rows the gate fires on and leaving the others as unsteered."""

from __future__ import annotations

import json
import sys

import pytest

from benchmark_module import benchmark_module
from sparekit.data import ConflictDataset, load_dataset
from sparekit.steering import FittedBundle
from sparekit.steering.bench import BenchConfig, SteeringBenchmark
from sparekit.steering import gate as gate_module
from sparekit.steering.gate import RecallGate
from sparekit.utils.io import atomic_write_json


@pytest.fixture(scope="module")
def broad_sample() -> ConflictDataset:
    return load_dataset("broad", limit=80, seed=2)


def test_a_recall_gated_method_steers_only_where_the_gate_fires(tiny_llama_few_shot, broad_sample, tmp_path,
                                                                monkeypatch):
    memorised_answer = {ex.question: ex.org_answer[0] for ex in broad_sample}

    def knows_every_item(lm, questions, batch_size=8):  # a model whose closed-book answer is the memorised one
        return [memorised_answer[q] for q in questions], None

    monkeypatch.setattr(gate_module, "recall_answers", knows_every_item)
    lm = tiny_llama_few_shot
    memorised = tmp_path / "memorised.json"
    atomic_write_json(memorised, {"ids": [ex.id for ex in broad_sample]})  # the tiny model knows nothing: pretend
    config = BenchConfig(methods=("none", "cad", "cad+recall"), seeds=(42,), layers=(1,), pool_groups=10,
                         dev_groups=4, test_limit=6, behaviour_seeds=(0,), k_shot=1, strength_grids={"cad": [1.0]})
    bench = SteeringBenchmark(lm, broad_sample, config, tmp_path / "run", batch_size=16, progress=False,
                              memorised_file=memorised)
    summary = bench.run()
    out = tmp_path / "run"
    gated, plain = summary["methods"]["cad+recall"], summary["methods"]["cad"]
    assert gated["tuned"] == plain["tuned"] and "gate_fired" not in plain
    assert not (out / "gate_probe").exists()  # no conflict probe is fitted for +recall
    pool, _, test = bench.splits()
    fired_rates = {}
    for context in ("sub", "org"):
        prompts = bench.test_prompts(test, pool, context, 42)
        fired = RecallGate().decide(lm, prompts).tolist()
        fired_rates[context] = sum(fired) / len(fired)
        unsteered = _cell(out, f"none-default-None-seed42-{context}-any")
        for toward in ("memory", "context"):
            cad = _cell(out, f"cad-default-1.0-seed42-{context}-{toward}")
            recall = _cell(out, f"cad+recall-default-1.0-seed42-{context}-{toward}")
            assert recall == [c if f else u for c, u, f in zip(cad, unsteered, fired)]
            assert any(c != u for c, u in zip(cad, unsteered))  # CAD changes answers: the rows tell them apart
    assert {c: gated["gate_fired"][c]["mean"] for c in ("sub", "org")} == fired_rates
    assert fired_rates["org"] == 0 and fired_rates["sub"] > 0.5  # the true passage names the memorised answer
    bundle = FittedBundle.load(out / "fitted" / "cad+recall", lm.info.model_hash)
    assert isinstance(bundle.gate, RecallGate)


def _cell(out, name: str) -> list[str]:
    return [json.loads(line)["prediction"] for line in (out / "generations" / "test" / f"{name}.jsonl").open()]


@pytest.fixture(scope="module")
def report():
    yield from benchmark_module("steer_fold_report")


def test_a_gated_row_is_compared_with_the_baseline_at_the_same_em_without_conflict(report, tmp_path):
    sweep = [{"strength": 0.5, "em_no_conflict": 0.6, "em_target": 0.8},
             {"strength": 0.25, "em_no_conflict": 0.8, "em_target": 0.6}]
    curve = report.baseline_curve(sweep, (1.0, 0.2))  # strength 0 is the unsteered model
    assert report.matched(curve, 0.9) == pytest.approx(0.4)  # halfway between strength 0.25 and unsteered
    assert report.matched(curve, 0.7) == pytest.approx(0.7) and report.matched(curve, 0.5) == pytest.approx(0.8)
    worse = report.baseline_curve([*sweep, {"strength": 1.0, "em_no_conflict": 0.5, "em_target": 0.1}], (1.0, 0.2))
    assert report.matched(worse, 0.5) == pytest.approx(0.8)  # a strength that is worse on both counts is ignored
    stat = {"mean": 0.5}
    fold = {"methods": {"none": {"em_memory": {"mean": 0.2}, "em_no_conflict_memory": {"mean": 1.0},
                                 "em_context": stat, "em_no_conflict_context": stat},
                        "cad+recall": {"em_memory": {"mean": 0.7}, "em_no_conflict_memory": {"mean": 0.9},
                                       "em_context": stat, "em_no_conflict_context": stat,
                                       "gate_fired": {"sub": {"mean": 0.9}, "org": {"mean": 0.05}}}}}
    rows = report.matched_rows(fold, {"cad": {"memory": sweep, "context": sweep}}, ["cad"], ["cad+recall"])
    assert rows[1] == ("cad+recall", "memory", 0.9, 0.7, pytest.approx(0.4))  # the curve above, toward memory
    assert rows[0][:2] == ("cad+recall", "context")
    fold["methods"]["adacad"] = {"em_memory": {"mean": 0.75}, "em_no_conflict_memory": {"mean": 0.95},
                                 "em_context": stat, "em_no_conflict_context": stat}
    best = report.matched_rows(fold, {"cad": {"memory": sweep, "context": sweep}}, ["cad", "adacad"], ["cad+recall"])
    assert best[1][4] == pytest.approx(0.75)  # adacad's one setting (no sweep) is ahead of cad's sweep at 0.9
    assert "| cad+recall | 90 / 5 | 90.0 / 5.0 |" in report.fire_table({"x": fold}, ["none", "cad+recall"])
    (tmp_path / "held-out-x").mkdir()  # a fold without frontier.json: each baseline at its tuned setting
    fold["methods"]["cad"] = fold["methods"]["adacad"]
    table = report.matched_table(tmp_path, {"x": fold}, ["none", "cad", "cad+recall"], ["cad"])
    assert "| cad+recall | memory | 90.0 / 70.0 / 75.0 | 70 / 75 | 0 / 0 / 1 |" in table  # cad's tuned setting wins
    assert "| cad+recall | context | 50.0 / 50.0 / 50.0 | 50 / 50 | 0 / 1 / 0 |" in table  # level: the same EM


def test_em_without_conflict_is_reported_per_direction_against_unsteered(report):
    def fold(none_memory, gated_memory, items):
        stat = {"mean": 1.0}
        return {"splits": {"test_items": items},
                "methods": {"none": {"em_no_conflict_memory": {"mean": none_memory}, "em_no_conflict_context": stat},
                            "cad+recall": {"em_no_conflict_memory": {"mean": gated_memory},
                                           "em_no_conflict_context": stat}}}

    table = report.no_conflict_table({"a": fold(1.0, 0.9, 10), "b": fold(0.8, 0.8, 30)}, ["none", "cad+recall"])
    # toward memory: mean 85.0 against none's 90.0; pooled (10 x 90 + 30 x 80) / 40 = 82.5; worst fold 80.0
    assert "| cad+recall | 100.0 (+0.0) / 100.0 / 100.0 | 85.0 (-5.0) / 82.5 / 80.0 |" in table


def test_a_run_without_a_fold_holding_every_method_is_one_line_error(report, tmp_path, monkeypatch, capsys):
    fold = tmp_path / "held-out-x"
    fold.mkdir()
    (fold / "results.json").write_text(json.dumps({"methods": {"none": {}, "cad+recall": {}}}))
    assert list(report.finished_folds(tmp_path, ["none", "cad+recall"])) == ["x"]
    monkeypatch.setattr(sys, "argv", ["steer_fold_report.py", str(tmp_path), "--methods", "none,adacad+recall"])
    with pytest.raises(SystemExit) as exit_info:
        report.main()
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in error and "none,adacad+recall" in error
