"""Leave one kind out in the steering benchmark: nothing of the held-out kind is fitted, gated or tuned on."""

from __future__ import annotations

import json

import pytest

from sparekit.cli.main import main
from sparekit.data import ConflictDataset, ConflictExample, load_dataset, write_jsonl
from sparekit.errors import SparekitError
from sparekit.steering.bench import BenchConfig, SteeringBenchmark
from sparekit.steering.bench import data as bench_data
from sparekit.steering.bench import gating
from sparekit.steering.bench import runner as benchmark
from sparekit.utils.io import atomic_write_json

HELD = "language"


@pytest.fixture(scope="module")
def broad_sample() -> ConflictDataset:
    """A small seeded sample of the broad corpus: every kind, a few dozen held-out rows."""
    return load_dataset("broad", limit=120, seed=1)


def _memorised(dataset: ConflictDataset, tmp_path) -> object:
    path = tmp_path / "memorised.json"
    atomic_write_json(path, {"ids": [ex.id for ex in dataset]})  # the tiny model knows nothing: pretend
    return path


def test_a_held_out_kind_never_enters_behaviour_data_gate_tuning_or_export(tiny_llama_few_shot, broad_sample, tmp_path,
                                                                          monkeypatch):
    gate_prompts, behaviour = [], []
    fit, collect = gating.fit_probe_gate, bench_data.collect_behaviour_data

    def gate_spy(lm, train, held_out, *args):  # every prompt the gate is fitted or calibrated on
        gate_prompts.extend(train + held_out)
        return fit(lm, train, held_out, *args)

    def behaviour_spy(lm, prompts, *args, **kwargs):  # every prompt read for behaviour data (features, vectors)
        behaviour.extend(prompts)
        return collect(lm, prompts, *args, **kwargs)

    monkeypatch.setattr(gating, "fit_probe_gate", gate_spy)
    monkeypatch.setattr(bench_data, "collect_behaviour_data", behaviour_spy)
    # CAD fits nothing: a random model's answers give behaviour data no class to fit a vector on, but it is
    # collected all the same, and the gate, dev tuning and the export run as for any method
    config = BenchConfig(methods=("none", "cad", "cad+gate"), seeds=(42,), layers=(1, 2), pool_groups=12,
                         dev_groups=6, test_limit=4, behaviour_seeds=(0,), k_shot=1, held_out_kind=HELD,
                         strength_grids={"cad": [1.0]})
    bench = SteeringBenchmark(tiny_llama_few_shot, broad_sample, config, tmp_path / "run", batch_size=16,
                              progress=False, memorised_file=_memorised(broad_sample, tmp_path))
    summary = bench.run()
    kind_of = {ex.id: ex.kind for ex in broad_sample}
    held_questions = [ex.question for ex in broad_sample if ex.kind == HELD]
    assert summary["splits"]["test_items"] == 4 and summary["splits"]["pool_groups"] == 12
    out = tmp_path / "run"

    def item_kinds(folder: str) -> set[str]:
        return {kind_of[json.loads(line)["id"].rsplit(":", 1)[0]] for path in (out / folder).glob("*.jsonl")
                for line in path.read_text().splitlines()}

    for prompts in (behaviour, gate_prompts):  # neither the items nor their demonstrations
        assert prompts and HELD not in {p.example.kind for p in prompts}
        assert not any(q in p.text for p in prompts for q in held_questions)
    assert item_kinds("generations/dev") and HELD not in item_kinds("generations/dev")
    assert item_kinds("generations/test") == {HELD}
    pool = bench.splits()[0]
    for prompt in bench.test_prompts(bench.splits()[2], pool, "sub", 42):  # test demonstrations come from the pool
        assert not any(q in demo for demo in prompt.demos for q in held_questions)
    exported = (out / "fitted" / "cad" / "config.json").read_text()
    assert not any(json.dumps(q)[1:-1] in exported for q in held_questions)


def test_held_out_kind_splits_and_its_errors(tiny_llama, broad_sample, tmp_path):
    memorised = _memorised(broad_sample, tmp_path)
    config = BenchConfig(methods=("none",), pool_groups=30, dev_groups=10, test_limit=None, held_out_kind="geography")
    pool, dev, test = SteeringBenchmark(tiny_llama, broad_sample, config, tmp_path / "run", progress=False,
                                        memorised_file=memorised).splits()
    assert {ex.kind for ex in test} == {"geography"} and len(test) == sum(ex.kind == "geography" for ex in broad_sample)
    assert "geography" not in {ex.kind for ex in pool} | {ex.kind for ex in dev}
    assert len({ex.relation for ex in test}) > 1  # every relation of the kind
    config.held_out_kind = "astrology"
    with pytest.raises(SparekitError, match="no kind 'astrology'"):
        SteeringBenchmark(tiny_llama, broad_sample, config, tmp_path / "other", progress=False,
                          memorised_file=memorised).splits()
    with pytest.raises(SparekitError, match="both a held-out relation and a held-out kind"):
        BenchConfig(held_out_relation="capital", held_out_kind="geography")


def test_leave_one_kind_out_holds_each_kind_out_in_turn(tiny_llama, broad_sample, tmp_path, monkeypatch):
    seen = []

    def fake_run(self):
        seen.append((self.config.held_out_kind, self.config.held_out_relation, self.out.name))
        stat = {"mean": len(seen) / 10, "std": 0.0}
        return {"methods": {"none": {"em_memory": stat, "em_context": stat, "em_no_conflict": stat}}}

    monkeypatch.setattr(benchmark.SteeringBenchmark, "run", fake_run)
    summary = benchmark.leave_one_out(tiny_llama, broad_sample, BenchConfig(methods=("none",)), tmp_path,
                                      field="kind")
    kinds = list(dict.fromkeys(ex.kind for ex in broad_sample))
    assert [s[0] for s in seen] == kinds == summary["folds"] and len(kinds) == 6
    assert all(s[1] is None and s[2] == f"held-out-{s[0]}" for s in seen)
    assert summary["split_by"] == "kind" and summary["methods"]["none"]["em_memory"]["worst"] == pytest.approx(0.1)


def test_a_run_recorded_before_held_out_kind_existed_still_resumes():
    assert "held_out_kind" not in BenchConfig().record()  # the old record compares equal
    assert BenchConfig(held_out_kind="numbers").record()["held_out_kind"] == "numbers"


def test_cli_refuses_a_kind_split_of_rows_without_kinds_before_loading_a_model(tmp_path, capsys):
    rows = [ConflictExample(id=f"r{i}", question=f"q{i}?", org_context=f"c {i}.", org_answer=("a",),
                            sub_context=f"s {i}.", sub_answer=("b",), relation="x") for i in range(12)]
    write_jsonl(rows, tmp_path / "d.jsonl")
    code = main(["bench", "steer", "--dataset", str(tmp_path / "d.jsonl"), "--split-by", "kind",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "12 of 12 rows have no 'kind' field" in err and err.count("\n") == 1
