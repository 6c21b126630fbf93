"""Prompt formats in the steering benchmark: a held-out test format (only the test prompts change format, and a
finished run takes it as test cells beside its three_shot ones, never refitting or retuning), and fitting across
formats (behaviour data, the gate and dev asked in several)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_module import benchmark_module

from sparekit.data import ConflictDataset, ConflictExample, load_dataset
from sparekit.data.formats import LlamaIndexQA
from sparekit.data.prompts import THREE_SHOT, item_format
from sparekit.errors import SparekitError
from sparekit.steering.base import SteeringPrompt
from sparekit.steering.behaviour import behaviour_prompts
from sparekit.cli.main import main
from sparekit.steering.bench import BenchConfig, SteeringBenchmark, leave_one_out
from sparekit.steering.bench import runner as bench_runner
from sparekit.steering.bench.cells import Cells
from sparekit.steering.bench import data as bench_data
from sparekit.steering.bench import tuning
from sparekit.utils.io import atomic_write_json


@pytest.fixture(scope="module")
def sample() -> ConflictDataset:
    return load_dataset("default", limit=80, seed=3)


@pytest.fixture(scope="module")
def answer_form():
    yield from benchmark_module("answer_form")


def _bench(lm, dataset, tmp_path, **overrides) -> SteeringBenchmark:
    memorised = tmp_path / "memorised.json"
    atomic_write_json(memorised, {"ids": [ex.id for ex in dataset]})  # the tiny model knows nothing: pretend
    config = BenchConfig(methods=("none", "cad"), seeds=(42,), layers=(1,), pool_groups=10, dev_groups=5,
                         test_limit=4, behaviour_seeds=(0,), k_shot=2, strength_grids={"cad": [1.0]}, **overrides)
    return SteeringBenchmark(lm, dataset, config, tmp_path / "run", batch_size=16, progress=False,
                             memorised_file=memorised)


def test_a_test_format_adds_test_cells_only_and_its_own_results(tiny_llama_few_shot, sample, tmp_path, monkeypatch):
    first = _bench(tiny_llama_few_shot, sample, tmp_path)
    first.run()
    out = tmp_path / "run"
    three_shot_results = (out / "results.json").read_bytes()
    dev_cells = sorted(p.name for p in (out / "generations" / "dev").iterdir())
    refits = []
    monkeypatch.setattr(bench_data, "collect_behaviour_data", lambda *a, **k: refits.append("behaviour"))
    tune = tuning.Tuner.tune
    monkeypatch.setattr(tuning.Tuner, "tune", lambda self, *a, **k: refits.append("tune") or tune(self, *a, **k))

    rag = _bench(tiny_llama_few_shot, sample, tmp_path, test_format="rag")  # the same run directory accepts it
    summary = rag.run()
    assert set(summary["methods"]) == {"none", "cad"}
    assert "behaviour" not in refits  # read back from the run directory
    assert sorted(p.name for p in (out / "generations" / "dev").iterdir()) == dev_cells  # no dev cell generated
    assert (out / "results.json").read_bytes() == three_shot_results
    assert (out / "results-rag.json").is_file()
    assert sorted(p.name for p in (out / "generations" / "test-rag").iterdir()) == \
        sorted(p.name for p in (out / "generations" / "test").iterdir())

    pool, _, test = rag.splits()
    for prompt in rag.test_prompts(test, pool, "sub", 42):  # rag takes no demonstrations
        assert prompt.text.startswith("Passage: ") and prompt.text.endswith("\nAnswer:")
        assert prompt.example.sub_context in prompt.text and "question:" not in prompt.text
    three_shot = first.test_prompts(test, pool, "sub", 42)
    assert all(p.text.count("question:") == 3 for p in three_shot)  # two demonstrations and the item


def test_answer_form_rescores_the_runs_own_cells(tiny_llama_few_shot, sample, tmp_path, answer_form):
    rag = _bench(tiny_llama_few_shot, sample, tmp_path, test_format="rag")
    rag.run()
    out = tmp_path / "run"
    rows = {ex.id: ex for ex in sample}
    fold = answer_form.fold_scores(out, rag.config.output, rag.config.test_split, ["none", "cad"], rows)
    results = json.loads((out / "results-rag.json").read_text())["methods"]
    for label in ("none", "cad"):  # EM recomputed from the cells the run scored
        expected = [results[label][k]["mean"] for k in ("em_memory", "em_context", "em_no_conflict")]
        assert fold["scores"][label]["em"] == pytest.approx(expected)


def test_containment_counts_a_sentence_that_names_one_side_only(answer_form):
    assert answer_form.contains("The Taka is the official currency.", ["Taka"])
    assert not answer_form.contains("Europe", ["Euro"]) and not answer_form.contains("", ["Euro"])
    ex = ConflictExample(id="x", question="What is the currency of Cyprus?", org_context="Cyprus pays with the Euro.",
                         org_answer=["Euro"], sub_context="Cyprus pays with the Lek.", sub_answer=["Lek"])
    conflict, no_conflict = SteeringPrompt(ex, "sub", ()), SteeringPrompt(ex, "org", ())
    assert answer_form.contained_hit("It is the Lek.", conflict, "context")
    assert not Cells(None, Path("."), 1, "answer").hit("It is the Lek.", conflict, "context")  # not by EM
    assert not answer_form.contained_hit("The Lek, not the Euro.", conflict, "context")  # both sides named
    assert answer_form.contained_hit("The Euro.", no_conflict, "memory")


def test_test_format_errors_and_the_old_record(tiny_llama_few_shot, sample, tmp_path):
    with pytest.raises(SparekitError, match="unknown prompt format 'nope'"):
        BenchConfig(test_format="nope")
    with pytest.raises(SparekitError, match="paper protocol fits and tests its own"):
        BenchConfig(protocol="paper", test_format="rag")
    with pytest.raises(SparekitError, match="needs the model's chat template"):
        _bench(tiny_llama_few_shot, sample, tmp_path, test_format="chat")
    assert "test_format" not in BenchConfig().record()  # run directories from before still resume
    assert BenchConfig(test_format="zero_shot").output("results.json") == "results-zero_shot.json"
    assert BenchConfig().output("frontier.png") == "frontier.png"


def test_fit_formats_ask_every_fitted_item_in_one_of_them(sample):
    formats = (THREE_SHOT, LlamaIndexQA())
    prompts = behaviour_prompts(sample, seeds=(0,), formats=formats)
    by_item: dict[str, set[str]] = {}
    for prompt in prompts:
        by_item.setdefault(prompt.example.id, set()).add(prompt.fmt.name)
        assert prompt.fmt == item_format(prompt.example, formats)
        # demonstrations stay (they push the model to either side), rendered in the item's format
        assert prompt.demos and all(("Query: " in d) == (prompt.fmt.name == "llamaindex") for d in prompt.demos)
    assert all(len(names) == 1 for names in by_item.values())  # an item's flavours share its format
    shares = [name for names in by_item.values() for name in names]
    assert 0.3 < shares.count("llamaindex") / len(shares) < 0.7
    assert [p.text for p in behaviour_prompts(sample, seeds=(0,))] == \
        [p.text for p in behaviour_prompts(sample, seeds=(0,), formats=(THREE_SHOT,))]
    reordered = sample.subset(list(reversed(range(len(sample)))))
    assert all(item_format(ex, formats) == item_format(sample[i], formats)  # by id, not by position
               for ex, i in zip(reordered, reversed(range(len(sample)))))


def test_a_run_fitted_across_formats_tunes_in_them_and_tests_the_held_out_one(tiny_llama_few_shot, sample, tmp_path,
                                                                               monkeypatch):
    dev_prompts: list[SteeringPrompt] = []
    search = tuning.Tuner._search
    monkeypatch.setattr(tuning.Tuner, "_search", lambda self, *a: dev_prompts.extend(a[-1]) or search(self, *a))
    bench = _bench(tiny_llama_few_shot, sample, tmp_path, fit_formats=("three_shot", "llamaindex"),
                   test_format="rag")
    bench.run()
    names = {p.fmt.name for p in dev_prompts}
    assert names == {"three_shot", "llamaindex"}  # dev in both fit formats, never the held-out rag
    for prompt in dev_prompts:  # demonstrations where the format takes them, as at request time
        assert len(prompt.demos) == (2 if prompt.fmt.name == "three_shot" else 0)
    pool, _, test = bench.splits()
    assert all(p.text.startswith("Passage: ") for p in bench.test_prompts(test, pool, "sub", 42))
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["fit_formats"] == ["three_shot", "llamaindex"]
    with pytest.raises(SparekitError, match="fit_formats"):  # fits are not extended: another directory
        _bench(tiny_llama_few_shot, sample, tmp_path, fit_formats=("three_shot", "zero_shot"), test_format="rag")
    _bench(tiny_llama_few_shot, sample, tmp_path / "other")  # records a run fitted on three_shot alone ...
    with pytest.raises(SparekitError, match="fit_formats"):  # ... which does not take other fit formats either
        _bench(tiny_llama_few_shot, sample, tmp_path / "other", fit_formats=("three_shot", "rag"))


def test_fit_formats_errors():
    with pytest.raises(SparekitError, match="unknown prompt format 'nope'"):
        BenchConfig(fit_formats=("three_shot", "nope"))
    with pytest.raises(SparekitError, match="one or more distinct formats"):
        BenchConfig(fit_formats=("rag", "rag"))
    with pytest.raises(SparekitError, match="one or more distinct formats"):
        BenchConfig(fit_formats=())
    with pytest.raises(SparekitError, match="paper protocol fits and tests its own"):
        BenchConfig(protocol="paper", fit_formats=("three_shot", "rag"))
    assert "fit_formats" not in BenchConfig().record()  # run directories from before still resume
    assert BenchConfig(fit_formats=("rag",)).record()["fit_formats"] == ("rag",)


def test_a_recorded_config_reads_back_as_the_config_that_wrote_it():
    """What scripts rebuild from a run's config.json (its JSON: lists for tuples, extra keys beside) is the run's
    config, so the splits they recompute are the run's."""
    config = BenchConfig(methods=("none", "spare+cad+recall"), seeds=(42, 43), layers=(9, 10), held_out_kind="numbers",
                         fit_formats=("three_shot", "rag"), param_grids={"spare": {"layers": [[9, 10]]}})
    stored = json.loads(json.dumps({"kind": "bench-steer", "model": "default", **config.record()}))
    assert BenchConfig.from_record(stored) == config
    assert BenchConfig.from_record(json.loads(json.dumps(BenchConfig().record()))) == BenchConfig()


def test_leave_one_format_out_tests_each_fit_format_fitted_on_the_others(tiny_llama, sample, tmp_path, monkeypatch):
    seen = []

    def fake_run(self):
        seen.append((self.config.test_format, self.config.fit_formats, self.out.name))
        stat = {"mean": len(seen) / 10, "std": 0.0}
        return {"methods": {"none": {"em_memory": stat, "em_context": stat, "em_no_conflict": stat}}}

    monkeypatch.setattr(bench_runner.SteeringBenchmark, "run", fake_run)
    formats = ("three_shot", "zero_shot", "rag")
    summary = leave_one_out(tiny_llama, sample, BenchConfig(methods=("none",), fit_formats=formats), tmp_path,
                            field="format")
    assert summary["folds"] == list(formats) and summary["split_by"] == "format"
    assert seen == [("three_shot", ("zero_shot", "rag"), "held-out-three_shot"),
                    ("zero_shot", ("three_shot", "rag"), "held-out-zero_shot"),
                    ("rag", ("three_shot", "zero_shot"), "held-out-rag")]
    assert summary["methods"]["none"]["em_memory"]["worst"] == pytest.approx(0.1)


def test_leave_one_format_out_refuses_what_it_cannot_split_before_loading_a_model(tmp_path, capsys):
    base = ["bench", "steer", "--dataset", "default", "--split-by", "format", "--out", str(tmp_path / "run")]
    assert main(base) == 2  # three_shot alone: nothing left to fit on
    err = capsys.readouterr().err
    assert "at least two --fit-formats" in err and err.count("\n") == 1
    assert main([*base, "--fit-formats", "three_shot,rag", "--test-format", "rag"]) == 2
    err = capsys.readouterr().err
    assert "tests each of --fit-formats in turn" in err and err.count("\n") == 1


def test_frontier_split_by_format_plots_each_fold_in_its_own_format(tiny_llama, tmp_path, monkeypatch):
    from sparekit import models
    from sparekit.steering.experiment import BenchFrontierExperiment

    monkeypatch.setattr(models, "load_model", lambda *a, **k: tiny_llama)
    point = {"strength": 1.0, "em_target": 0.5, "em_no_conflict": 0.5, "answer_nll_no_conflict": 1.0}
    tested = []
    monkeypatch.setattr(bench_runner.SteeringBenchmark, "frontier", lambda self, cached_only=False: tested.append(
        self.config.test_format) or {"cad": {"memory": [point], "context": [point]}})
    result = BenchFrontierExperiment(dataset="default", methods=("cad",), fit_formats=("three_shot", "rag"),
                                     split_by="format", out=str(tmp_path / "run")).run(progress=False)
    assert tested == ["three_shot", "rag"] and set(result["held_out"]) == {"three_shot", "rag"}
    assert (tmp_path / "run" / "held-out-rag" / "frontier-rag.png").is_file()  # beside its frontier-rag.json
    assert (tmp_path / "run" / "held-out-three_shot" / "frontier.png").is_file()
    assert (tmp_path / "run" / "frontier.png").is_file()


def test_answer_form_pairs_two_methods_item_by_item(tiny_llama_few_shot, sample, tmp_path, answer_form):
    """``--paired``'s discordant counts agree with EM from the same cells: only-A minus only-B is n x (EM_A - EM_B)."""
    bench = _bench(tiny_llama_few_shot, sample, tmp_path)
    bench.run()
    out = tmp_path / "run"
    rows = {ex.id: ex for ex in sample}
    args = (out, bench.config.output, bench.config.test_split)
    assert answer_form.paired_counts(*args, ("cad", "cad"), rows) == {"memory": [0, 0], "context": [0, 0]}
    (cell,) = (out / "generations" / "test").glob("cad-*-sub-context.jsonl")  # CAD now answers every conflict right
    answers = [json.loads(line) for line in cell.read_text().splitlines()]
    cell.write_text("".join(json.dumps({**c, "prediction": rows[c["id"].rsplit(":", 1)[0]].sub_answer[0]}) + "\n"
                            for c in answers))
    counts = answer_form.paired_counts(*args, ("cad", "none"), rows)
    em = answer_form.fold_scores(*args, ["cad", "none"], rows)["scores"]
    assert counts["context"][0] > 0 and counts["context"][1] == 0
    for toward, column in (("memory", 0), ("context", 1)):
        gap = em["cad"]["em"][column] - em["none"]["em"][column]
        assert counts[toward][0] - counts[toward][1] == round(len(answers) * gap)
    assert answer_form.sign_test(20, 2) == pytest.approx(0.000121, abs=1e-6) and answer_form.sign_test(0, 0) == 1.0
    # paired by item, not by line: unsteered right on the first half of the items, CAD on the second half, CAD's
    # file in reverse order (a pairing by position would see both right on the same rows)
    (plain,) = (out / "generations" / "test").glob("none-*-sub-any.jsonl")
    half = {c["id"] for c in answers[: len(answers) // 2]}
    for path, right, order in ((plain, half, 1), (cell, {c["id"] for c in answers} - half, -1)):
        cells = [json.loads(line) for line in path.read_text().splitlines()][::order]
        path.write_text("".join(json.dumps({**c, "prediction": _answer(rows, c, c["id"] in right)}) + "\n"
                                for c in cells))
    assert answer_form.paired_counts(*args, ("cad", "none"), rows)["context"] == [len(answers) - len(half), len(half)]
    cell.write_text("".join(cell.read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(SparekitError, match="different items"):
        answer_form.paired_counts(*args, ("cad", "none"), rows)


def test_a_lost_answer_is_sorted_by_what_it_says(answer_form):
    example = ConflictExample(id="x", question="What is the capital of Egypt?", org_context="", org_answer=("Cairo",),
                              sub_context="The capital of Egypt is Prague.", sub_answer=("Prague",))
    prompt = SteeringPrompt(example, "sub", ())
    countries = {"france", "egypt"}
    kinds = [answer_form.loss_kind(said, prompt, toward, countries) for said, toward in (
        ("Prague", "memory"), ("Cairo", "context"), ("Egypt", "memory"), ("the capital is Cairo.", "memory"),
        ("France", "memory"), ("Giza", "memory"))]
    assert kinds == [answer_form.LOSS_KINDS[i] for i in (0, 0, 1, 2, 3, 4)]


def _answer(rows, cell: dict, right: bool) -> str:
    """The context's answer to a cell's conflict item, or a wrong one."""
    return rows[cell["id"].rsplit(":", 1)[0]].sub_answer[0] if right else "nothing of the kind"
