"""`sparekit data` and `sparekit eval` end to end (eval on a tiny random model)."""

from __future__ import annotations

import json

import pytest

import sparekit.models
from sparekit.cli.main import main
from sparekit.data import read_jsonl
from sparekit.data.loaders import DEFAULT_ASSET


def _json_out(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_data_show(capsys):
    assert main(["data", "show", "--dataset", "default", "--rows", "2", "--json"]) == 0
    out = _json_out(capsys)
    assert out["rows"] == len(read_jsonl(DEFAULT_ASSET)) and len(out["examples"]) == 2
    assert main(["data", "show", "--dataset", "nqswap", "--limit", "10"]) == 0
    assert "nqswap: 10 rows" in capsys.readouterr().out


def test_data_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    assert main(["data", "show", "--dataset", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.jsonl:1: missing field(s)" in err[0]
    assert main(["eval", "--seeds", "a,b"]) != 0


@pytest.fixture
def small_file(tmp_path):
    rows = [{"question": f"q{i}", "org_context": f"fact {i}", "org_answer": [f"a{i}"], "sub_context": f"other {i}",
             "sub_answer": [f"b{i}"]} for i in range(6)]
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_command_writes_default_run_dir_and_resumes(small_file, tiny_llama, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sparekit.models, "load_model", lambda *a, **k: tiny_llama)
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--dataset", str(small_file), "--seeds", "1,2", "--k-shot", "2", "--json"]
    assert main(args) == 0
    first = _json_out(capsys)
    for key in ("closed_book_em", "org_context_em", "conflict_uses_context", "conflict_uses_memory", "memorised_n"):
        assert set(first[key]) == {"mean", "std"}
    assert first["n"] == 6
    run_dir = tmp_path / first["run_dir"]
    assert run_dir.parent.name == "runs" and run_dir.name.startswith("eval-small-")
    assert {"config.json", "environment.json", "results.json", "items-seed1.jsonl"} <= {p.name for p in run_dir.iterdir()}
    stamps = {p: p.stat().st_mtime_ns for p in (run_dir / "predictions").iterdir()}
    assert main(args) == 0  # same config: same directory, chunks reused
    assert _json_out(capsys)["run_dir"] == first["run_dir"]
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "predictions").iterdir()} == stamps
    assert main(args[:-1]) == 0
    assert "closed-book EM" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["eval", "--dataset", "nqswp"], "unknown dataset 'nqswp' (did you mean 'nqswap'?"),
    (["probe", "--eval-dataset", "missing.jsonl"], "dataset file not found: missing.jsonl"),
    (["bench", "steer", "-d", "defualt"], "unknown dataset 'defualt'"),
])
def test_dry_run_refuses_a_dataset_the_run_would_refuse(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"error: {message}")
