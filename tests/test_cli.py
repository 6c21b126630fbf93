"""The CLI front door: help, info, generate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sparekit.cli.main import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["packages"]["torch"] and info["device"] in ("cpu", "cuda")
    assert "gemma3_text" in info["architectures"]


def test_missing_argument_through_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "sparekit", "generate"], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "PROMPT" in proc.stderr


@pytest.mark.slow
def test_generate_json_on_default_model(capsys):
    prompt = "context: The capital of France is Lyon.\nquestion: what is the capital of France\nanswer:"
    assert main(["generate", prompt, "-n", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["completion"].strip().startswith("Lyon")


@pytest.mark.slow
def test_demo_runs_on_shipped_artefacts(capsys):
    """The README's main command: shipped probes and fitted SpARE load and produce answers."""
    assert main(["demo", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    steps = [line for line in captured.err.splitlines() if line.startswith("demo ")]  # said as each step starts
    assert [line.split()[1] for line in steps] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert steps[0] == "demo 1/5 loading the model…"
    assert result["closed_book"] and result["with_org_context"] and result["with_sub_context"]
    for context in ("org", "sub"):
        assert 0.0 <= result["detection"][context]["conflict_probability"] <= 1.0
    for toward in ("memory", "context"):
        steering = result["steering"][toward]
        assert steering["method"] == "spare" and steering["strength"] is not None
        assert steering["steered"].strip() != "" and steering["unsteered"] == result["with_sub_context"]
    table = result["table"]
    assert table["n"] == 12 and set(table["em"]) == {"unsteered", "spare", "spare+gate"}
    assert all(0 <= count <= 12 for row in table["em"].values() for count in row.values())
    assert set(table["gates"]) == {"+gate"}  # the shipped gate is the recall gate: no second row for it
    assert all(0 <= g["fired"]["org"] <= g["fired"]["sub"] <= 12 for g in table["gates"].values())
    assert table["gates"]["+gate"]["gate"] == "the recall gate, fits nothing"


def test_demo_table_items_were_held_out_of_the_shipped_tuning():
    """No shipped demonstration (drawn from the tuning run's pool) and none of the request-time ones the
    table's prompts take asks a question of the demo table."""
    from sparekit.steering.demo import HELD_OUT_ITEMS
    from sparekit.data import load_dataset
    from sparekit.probes.detect import request_shots
    from sparekit.steering.fitted import FittedBundle, shipped_root

    by_id = {ex.id: ex for ex in load_dataset("default")}
    questions = {by_id[i].question for i in HELD_OUT_ITEMS}
    assert len(questions) == 12 and len({by_id[i].relation for i in HELD_OUT_ITEMS}) == 4
    for toward in ("memory", "context"):
        demos = FittedBundle.load(shipped_root("spare"))[toward].demos  # type: ignore[index]
        assert not any(f"question: {q}\n" in d for q in questions for d in demos)
    assert not questions & {shot.question for shot in request_shots()}


@pytest.mark.slow
def test_steer_with_the_shipped_gate_reads_the_prompt_as_detect_does(capsys):
    """`sparekit steer --gate`: the shipped SpARE's gate is the recall gate, the default detector's reading, so it
    fires exactly where `sparekit detect` reads a conflict in the same prompt; an unfired gate leaves the answer
    alone, and without --gate nothing is gated."""
    question = "What is the capital of France?"
    fired = []
    for passage in ("The capital of France is Lyon.", "The capital of France is Paris."):
        assert main(["steer", passage, question, "--toward", "memory", "--gate", "--json"]) == 0
        gated = json.loads(capsys.readouterr().out)
        assert main(["detect", "--question", question, "--context", passage, "--json"]) == 0
        detected = json.loads(capsys.readouterr().out)
        assert gated["gate"] == "recall" and gated["gate_fired"] == detected["conflict"]
        assert gated["gate_fired"] or gated["steered"] == gated["unsteered"]
        fired.append(gated["gate_fired"])
    assert fired == [True, False]
    assert main(["steer", "The capital of France is Lyon.", question, "--toward", "memory", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gate_fired"] is None


@pytest.mark.slow
@pytest.mark.parametrize(("method", "toward", "strength", "target"),
                         [("cad", "memory", 0.5, "Paris"), ("spare+cad", "context", 1.0, "Porto-Novo")])
def test_a_shipped_recall_gated_bundle_steers_a_conflict_and_leaves_a_true_context_alone(method, toward, strength,
                                                                                        target, capsys):
    """`sparekit steer --method cad --gate` (or spare+cad): the shipped bundle's recall gate fires where the passage
    contradicts the model's closed-book answer, and the method answers as asked; on the true passage it stays
    quiet."""
    question = "What is the capital of France?"
    answers = {}
    for passage in ("The capital of France is Porto-Novo.", "The capital of France is Paris."):
        assert main(["steer", passage, question, "--toward", toward, "--method", method, "--gate", "--json"]) == 0
        answers[passage] = json.loads(capsys.readouterr().out)
    conflict, true = answers.values()
    assert (conflict["gate"], conflict["strength"], conflict["gate_fired"]) == ("recall", strength, True)
    assert conflict["unsteered"] != target and conflict["steered"] == target
    assert true["gate_fired"] is False and true["steered"] == true["unsteered"] == "Paris"


def test_a_command_whose_import_fails_shows_the_real_error(monkeypatch, capsys):
    from sparekit.cli import main as cli_main

    monkeypatch.setitem(cli_main.COMMANDS, "broken", ("sparekit_no_such_module", "x", "A broken command."))
    assert cli_main.main(["broken"]) == 2
    err = capsys.readouterr().err
    assert "cannot start" in err and "sparekit_no_such_module" in err and "No such command" not in err
