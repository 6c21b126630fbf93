"""One read-then-steer runtime: row-scoped edits, one reading pass for gate and probes, ``steer --gate`` in two passes."""

from __future__ import annotations

import shutil

import pytest
import torch

from serve_helpers import fit_assets

from sparekit.steering.question import steer_question
from sparekit.data.dataset import ConflictExample
from sparekit.evaluation.generation import greedy_generate
from sparekit.hooks import Hooks, Site
from sparekit.hooks.core import is_prompt_pass
from sparekit.models.tiny import tiny_model
from sparekit.probes.detect import detect_prompt, load_probes, prompt_builder
from sparekit.probes.reading import read_prompts
from sparekit.cli.steer import render
from sparekit.steering import SteeringPrompt
from sparekit.steering import gate as gate_module
from sparekit.steering.fitted import FittedBundle
from sparekit.steering.gate import ProbeGate

CONTEXT, QUESTION = "a b c", "what is it?"


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def assets(lm, tmp_path_factory):
    return fit_assets(lm, tmp_path_factory.mktemp("read_then_steer"))


def count_prompt_passes(lm):
    """A pre-hook on the model counting its prompt passes (:func:`is_prompt_pass`), and its handle."""
    counts = {"prompt": 0}

    def hook(module, args, kwargs):
        counts["prompt"] += is_prompt_pass(args, kwargs)

    return counts, lm.model.register_forward_pre_hook(hook, with_kwargs=True)


def test_row_scoped_edits_leave_other_rows_exactly(lm):
    texts = ["one two", "three four five", "six"]
    with Hooks(lm).capture(Site(1), positions="all") as plain:
        greedy_generate(lm, texts, max_new_tokens=1)
    edited = Hooks(lm).edit(Site(0), lambda h: h + 5.0, rows=[1]).capture(Site(1), positions="all")
    with edited:
        greedy_generate(lm, texts, max_new_tokens=1)
    before, after = plain[Site(1)], edited[Site(1)]
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2]) and not torch.equal(before[1], after[1])
    masked = Hooks(lm).edit(Site(0), lambda h: h + 5.0, rows=lambda: torch.tensor([False, True, False]))
    with masked.capture(Site(1), positions="all"):
        greedy_generate(lm, texts, max_new_tokens=1)
    assert torch.equal(masked[Site(1)], after)
    with pytest.raises(Exception, match="row mask has 2 rows but the batch has 3"):
        with Hooks(lm).edit(Site(0), lambda h: h, rows=lambda: torch.tensor([True, False])):
            greedy_generate(lm, texts, max_new_tokens=1)


def test_one_pass_reads_the_gate_and_the_probes(lm, assets):
    probes = load_probes(assets[0], lm.info.model_hash)
    gate = ProbeGate.load(assets[1] / "gate", lm.info.model_hash)
    counts, handle = count_prompt_passes(lm)
    try:
        reading = read_prompts(lm, ["x y", "context: a\nquestion: b\nanswer:"], gate=gate, probes=probes)
    finally:
        handle.remove()
    assert counts["prompt"] == 1 and reading.fired.shape == (2,)
    single = detect_prompt(lm, "x y", assets[0])
    assert reading.probes[0]["conflict_probability"] == pytest.approx(single["conflict_probability"], abs=1e-6)
    assert set(reading.probes[0]) == {"detector", "conflict_probability", "conflict", "context_probability",
                                      "predicted_source", "in_distribution", "distance"}  # fitted now: with statistics


@pytest.mark.parametrize("threshold, fires, passes", [(0.0, True, 2), (1.0, False, 1)])
def test_steer_with_gate_costs_two_passes_or_one(lm, assets, tmp_path, threshold, fires, passes):
    root = tmp_path / "fitted"
    shutil.copytree(assets[1], root / "actadd")
    gate = ProbeGate.load(assets[1] / "gate", lm.info.model_hash)
    gate.threshold = threshold
    gate.save(root / "actadd" / "gate")
    probes = load_probes(assets[0], lm.info.model_hash)
    builder = prompt_builder(lm, assets[0])
    counts, handle = count_prompt_passes(lm)
    try:
        result = steer_question(lm, CONTEXT, QUESTION, "memory", "actadd", root / "actadd", None, builder,
                                gated=True, probes=probes, detector="probe")
    finally:
        handle.remove()
    assert counts["prompt"] == passes and result["gate_fired"] is fires
    # the same answers as the gated Steered object gives, and the same reading as `sparekit detect`
    fitted = FittedBundle.load(root / "actadd", lm.info.model_hash)["memory"]
    example = ConflictExample(id="cli", question=QUESTION, org_context=CONTEXT, org_answer=(), sub_context=CONTEXT,
                              sub_answer=())
    with fitted.method.steer(lm, toward="memory", strength=fitted.strength, gate=gate) as steered:
        expected = steered.generate([SteeringPrompt(example, "sub", tuple(builder.demos(QUESTION)))])[0]
    assert result["steered"] == expected
    assert (result["steered"] != result["unsteered"]) == fires
    detected = detect_prompt(lm, result["prompt"], assets[0])
    assert result["detection"]["conflict_probability"] == pytest.approx(detected["conflict_probability"], abs=1e-5)


def test_steer_reads_by_recall_by_default_asking_its_closed_book_question_once(lm, assets, monkeypatch):
    """auto: recall, as `detect` reads the same prompt; with the recall gate too, one closed-book generation serves
    both (two prompt passes more than the probe's reading: that generation's and the source reading's)."""
    from collections import OrderedDict

    from sparekit.probes import training_free
    from sparekit.probes.training_free import detect_conflict

    monkeypatch.setattr(training_free, "_RECALLED", OrderedDict())
    builder = prompt_builder(lm, assets[0])
    passes = {}
    for detector in ("probe", "auto"):  # the probe's run asks the recall gate's question first
        counts, handle = count_prompt_passes(lm)
        try:
            result = steer_question(lm, CONTEXT, QUESTION, "memory", "actadd", assets[1], None, builder,
                                    gate_by="recall", detector=detector)
        finally:
            handle.remove()
        passes[detector] = counts["prompt"]
    assert result["detection"]["detector"] == "recall" and len(training_free._RECALLED) == 1
    # the probe's run generated the gate's two closed-book prompts (one pass each); the recall run asks nothing again
    # (the answers are kept per question) and adds the source reading's one prompt pass
    assert passes["auto"] == passes["probe"] - 2 + 1
    prompt = SteeringPrompt(ConflictExample(id="cli", question=QUESTION, org_context=CONTEXT, org_answer=(),
                                            sub_context=CONTEXT, sub_answer=()), "sub", tuple(builder.demos(QUESTION)))
    alone = detect_conflict(lm, result["prompt"], "recall", None, prompt.text_without_context, QUESTION)
    assert {k: result["detection"][k] for k in alone} == alone


@pytest.mark.parametrize("closed_book, fires", [("b", False), ("zebra", True)])
def test_steer_gated_by_recall_steers_where_the_context_does_not_name_the_closed_book_answer(
        lm, assets, monkeypatch, closed_book, fires):
    seen = []

    def recall_answers(lm, questions, batch_size=8):  # what the model answers without CONTEXT ("a b c")
        seen.extend(questions)
        return [closed_book] * len(questions), None

    monkeypatch.setattr(gate_module, "recall_answers", recall_answers)
    builder = prompt_builder(lm, assets[0])
    result = steer_question(lm, CONTEXT, QUESTION, "memory", "actadd", assets[1], None, builder, gate_by="recall",
                            detector="probe")
    assert result["gate"] == "recall" and result["gate_fired"] is fires
    assert (result["steered"] != result["unsteered"]) == fires
    assert seen == [QUESTION]  # one closed-book question, the recall detector's
    assert render(result).endswith("[recall gate fired]" if fires else "[recall gate did not fire: left unsteered]")
