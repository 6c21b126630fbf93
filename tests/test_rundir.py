"""The experiment layer: one run-directory rule, config dataclasses as CLI options (CLI > --config > defaults)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

import sparekit.models
from sparekit.activations import ActivationStore
from sparekit.cli.config import config_options
from sparekit.cli.main import main
from sparekit.errors import SparekitError
from sparekit.utils.config import config_dict, option
from sparekit.utils.rundir import RunDir, check_same_config, run_path


@dataclass
class Toy:
    name: str = option("a", help="A name.")
    seeds: tuple[int, ...] = option((1, 2), help="Seeds.")
    limit: int | None = option(None, min=1, help="A bound.")
    grid: dict = option({}, flag="--grid-json", help="JSON.")
    fast: bool = option(False, help="A flag.")


@click.command()
@config_options(Toy)
def toy(config: Toy) -> None:
    click.echo(json.dumps(config_dict(config)))


def _toy(*args: str) -> dict:
    result = CliRunner().invoke(toy, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_command_line_beats_config_file_beats_defaults(tmp_path):
    assert _toy() == {"name": "a", "seeds": [1, 2], "limit": None, "grid": {}, "fast": False}
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "file", "seeds": [7], "limit": 3, "grid": {"x": [1]}, "fast": True}))
    assert _toy("--config", str(path)) == {"name": "file", "seeds": [7], "limit": 3, "grid": {"x": [1]}, "fast": True}
    assert _toy("--config", str(path), "--seeds", "4,5", "--grid-json", '{"y": 2}') == {
        "name": "file", "seeds": [4, 5], "limit": 3, "grid": {"y": 2}, "fast": True}
    toml = tmp_path / "c.toml"
    toml.write_text('name = "toml"\nseeds = "8,9"\n')
    assert _toy("--config", str(toml), "--name", "cli")["seeds"] == [8, 9]
    assert _toy("--config", str(toml), "--name", "cli")["name"] == "cli"


def test_config_file_values_get_the_options_checks_and_unknown_keys_are_named(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"limit": 0}))
    assert CliRunner().invoke(toy, ["--config", str(path)]).exit_code == 2  # min=1, as on the command line
    path.write_text(json.dumps({"seeds": ["x"]}))
    with pytest.raises(SparekitError, match="cannot parse --seeds"):
        CliRunner().invoke(toy, ["--config", str(path)], catch_exceptions=False)
    path.write_text(json.dumps({"seeds": 3}))
    assert _toy("--config", str(path))["seeds"] == [3]
    path.write_text(json.dumps({"nmae": "x"}))
    with pytest.raises(SparekitError, match="unknown key.*nmae.*valid keys: fast, grid, limit, name, seeds"):
        CliRunner().invoke(toy, ["--config", str(path)], catch_exceptions=False)


def test_dry_run_prints_the_resolved_config_and_does_no_work(tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("--dry-run loaded a model")

    monkeypatch.setattr(sparekit.models, "load_model", no_model)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"seeds": [1], "methods": "none,spare", "test_limit": 20}))
    assert main(["bench", "steer", "--config", str(path), "--test-limit", "30", "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["seeds"] == [1] and resolved["methods"] == ["none", "spare"] and resolved["test_limit"] == 30
    assert resolved["layers"] == [5, 6, 7, 8] and resolved["split_by"] == "group"
    for command in (["eval"], ["probe"], ["capture", "--texts", "t.txt"], ["sae", "train"], ["sae", "eval", "--sae", "x"],
                    ["bench", "frontier"]):
        assert main([*command, "--dry-run"]) == 0, command
        assert "model" in json.loads(capsys.readouterr().out)
    assert list(tmp_path.iterdir()) == [path]  # nothing written


def test_a_config_mismatch_is_refused_naming_the_keys(tmp_path):
    run = RunDir(tmp_path / "run", "eval run")
    run.prepare({"seeds": [1, 2], "k_shot": 3, "model_hash": "a" * 64, "n": 5})
    assert json.loads((tmp_path / "run" / "config.json").read_text())["k_shot"] == 3
    with pytest.raises(SparekitError) as info:
        run.prepare({"seeds": [1], "k_shot": 3, "model_hash": "b" * 64, "n": 5})
    message = str(info.value)
    assert "\n" not in message and "holds an eval run with a different configuration" in message
    assert "seeds differs ([1, 2] → [1])" in message and "model_hash differs" in message
    assert "k_shot" not in message and "…" in message  # long values are shortened
    assert f"delete {tmp_path / 'run'}" in message
    run.prepare({"seeds": [1, 2], "k_shot": 3, "model_hash": "a" * 64, "n": 9}, ignore=("n",))  # ignored: resumes
    check_same_config({"a": 1}, {"a": 1, "b": 2}, "x", keys=("a",))
    with pytest.raises(SparekitError, match=r"b differs \(missing → 2\)"):
        check_same_config({"a": 1}, {"a": 1, "b": 2}, "x")


def test_the_cli_refuses_a_changed_config_in_one_line(tmp_path, tiny_llama, monkeypatch, capsys):
    rows = [{"question": f"q{i}", "org_context": f"fact {i}", "org_answer": [f"a{i}"], "sub_context": f"other {i}",
             "sub_answer": [f"b{i}"]} for i in range(4)]
    data = tmp_path / "small.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(sparekit.models, "load_model", lambda *a, **k: tiny_llama)
    args = ["eval", "--dataset", str(data), "--k-shot", "1", "--out", str(tmp_path / "run"), "--json"]
    assert main([*args, "--seeds", "1"]) == 0
    capsys.readouterr()
    assert main([*args, "--seeds", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seeds differs ([1] → [2])" in err[0] and "choose another --out" in err[0]


def test_done_marker_no_lock_left_and_resume_after_an_interruption(tmp_path):
    run = RunDir(tmp_path / "run", "job")
    with pytest.raises(KeyboardInterrupt):
        with run.session({"x": 1}):
            (tmp_path / "run" / "part-1").write_text("first half")
            raise KeyboardInterrupt
    assert not run.done and not (tmp_path / "run" / ".lock").exists()
    with run.session({"x": 1}) as live:  # same config: resumes, the first half is still there
        assert live == {"x": 1} and (tmp_path / "run" / "part-1").read_text() == "first half"
        assert (tmp_path / "run" / ".lock").exists() and not run.done
    assert run.done and json.loads((tmp_path / "run" / "done").read_text())["what"] == "job"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "done", "environment.json",
                                                                     "part-1"]
    with run.running():  # a rerun clears the marker until it completes again
        assert not run.done
    assert run.done


def test_a_locked_run_is_refused_and_the_lock_is_freed(tmp_path):
    run = RunDir(tmp_path / "run", "capture")
    with run.lock():
        with pytest.raises(SparekitError, match="in use by process"):
            with RunDir(tmp_path / "run").lock():
                pass
    with run.lock():
        pass
    assert not (tmp_path / "run" / ".lock").exists()


def test_eval_and_capture_leave_done_and_no_lock(tmp_path, tiny_llama):
    from sparekit.activations import capture_activations
    from sparekit.evaluation.harness import evaluate
    from sparekit.hooks import Site

    rows = [{"id": f"r{i}", "question": f"q{i}", "org_context": f"fact {i}", "org_answer": [f"a{i}"],
             "sub_context": f"other {i}", "sub_answer": [f"b{i}"]} for i in range(4)]
    evaluate(tiny_llama, _dataset(tmp_path, rows), [0], k_shot=1, out_dir=tmp_path / "eval", progress=False)
    capture_activations(tiny_llama, ["a b c", "d e"], [Site(1)], tmp_path / "acts", progress=False)
    for folder in ("eval", "acts"):
        names = {p.name for p in (tmp_path / folder).iterdir()}
        assert "done" in names and ".lock" not in names, names


def _dataset(tmp_path, rows):
    from sparekit.data import load_dataset

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_dataset(str(path))


def test_run_path_is_the_same_for_the_same_config():
    assert run_path("runs", "eval", "d", config={"a": 1, "b": 2}) == run_path("runs", "eval", "d",
                                                                              config={"b": 2, "a": 1})
    assert run_path("runs", "eval", "d", config={"a": 1}) != run_path("runs", "eval", "d", config={"a": 2})
    assert str(run_path("runs", "bench-steer", "d", "abc")) == "runs/bench-steer-d-abc"


def test_sae_train_cli_records_its_run_resumes_and_refuses_other_settings(tmp_path, tiny_llama, monkeypatch, capsys):
    rows = [{"question": f"question {i}", "org_context": " ".join(f"word{i * j % 17}" for j in range(40)),
             "org_answer": ["a"], "sub_context": "b", "sub_answer": ["b"]} for i in range(12)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(sparekit.models, "load_model", lambda *a, **k: tiny_llama)
    out = tmp_path / "sae"
    args = ["sae", "train", "--corpus", str(corpus), "--layers", "1", "--width", "16", "--k", "2", "--batch-size",
            "64", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    assert "layer 1:" in capsys.readouterr().out and (out / "resid.1" / "cfg.json").is_file()
    assert json.loads((out / "experiment.json").read_text())["width"] == 16
    assert (out / "done").is_file() and not (out / ".lock").exists() and json.loads((out / "run.json").read_text())["k"] == 2
    assert main(args) == 0
    assert "already trained" in capsys.readouterr().out
    assert main([*args, "--k", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "k differs (2 → 4)" in err[0]

    # prompts join the corpus whole, and the run records which file they came from
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": f"context: x{i}\nquestion: q{i}\nanswer:"}) + "\n" for i in range(3)))
    with_prompts = tmp_path / "sae-prompts"
    assert main([*args[:-1], str(with_prompts), "--prompts", str(prompts)]) == 0
    recorded = json.loads((with_prompts / "run.json").read_text())["prompts"]
    assert recorded["texts"] == 3 and len(recorded["sha256"]) == 64
    added = sum(len(tiny_llama.tokenizer(json.loads(line)["text"])["input_ids"]) - 1  # BOS dropped
                for line in prompts.read_text().splitlines())
    assert ActivationStore(with_prompts / "acts").manifest["rows"] == ActivationStore(out / "acts").manifest["rows"] + added
    assert main([*args[:-1], str(tmp_path / "sae-missing"), "--prompts", str(tmp_path / "nothing.jsonl")]) == 2
    assert "missing texts file" in capsys.readouterr().err
