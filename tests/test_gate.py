"""The conflict gate: layer chosen on dev, threshold calibrated to a false-positive budget."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sparekit.data import ConflictExample
from sparekit.errors import SparekitError
from sparekit.models.tiny import tiny_model
from sparekit.steering import SteeringPrompt, fitted_without_data, make_method
from sparekit.steering.gate import (ProbeGate, RecallGate, fit_probe_gate, threshold_for_false_positive_rate,
                                    training_free_gate)


def test_threshold_lets_at_most_the_budget_fire():
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    for rate in (0.0, 0.01, 0.05, 0.2, 0.5):
        threshold = threshold_for_false_positive_rate(scores, rate)
        assert (scores > threshold).mean() <= rate
        # and it is the smallest such threshold: one score lower would let one more fire
        assert (scores >= threshold).mean() > rate - 1e-12
    with pytest.raises(SparekitError, match="false-positive rate"):
        threshold_for_false_positive_rate(scores, 1.0)
    with pytest.raises(SparekitError, match="without no-conflict"):
        threshold_for_false_positive_rate(np.array([]), 0.1)


def _prompts(n: int, offset: int) -> list[SteeringPrompt]:
    """Conflict prompts say 'zzz zzz' in the context, no-conflict ones do not: a linearly easy split."""
    prompts = []
    for i in range(offset, offset + n):
        ex = ConflictExample(id=f"q{i}", question=f"who made item {i}?", org_context=f"Item {i} by Ann.",
                             org_answer=("Ann",), sub_context=f"Item {i} by zzz zzz zzz.", sub_answer=("zzz",))
        prompts += [SteeringPrompt(ex, "org", ()), SteeringPrompt(ex, "sub", ())]
    return prompts


def test_fit_probe_gate_picks_a_candidate_layer_and_bounds_false_positives(tmp_path):
    lm = tiny_model("llama")
    train, dev = _prompts(24, 0), _prompts(20, 100)
    gate, report = fit_probe_gate(lm, train, dev, layers=[1, 2, 3], max_false_positive_rate=0.1, batch_size=8)
    assert gate.site.layer in (1, 2, 3) and set(report["dev_auroc"]) == {1, 2, 3}
    assert report["dev_auroc"][gate.site.layer] == max(report["dev_auroc"].values())
    assert report["dev_false_positive_rate"] <= 0.1
    gate.save(tmp_path / "gate", **report)
    again = ProbeGate.load(tmp_path / "gate", model_hash=lm.info.model_hash)
    assert (again.site, again.threshold) == (gate.site, gate.threshold)
    h = torch.randn(5, lm.info.d_model)
    assert torch.equal(again.fire(h), gate.fire(h))
    # the signature a benchmark's gated cells record: the same for the reloaded gate, another for another threshold
    assert again.signature() == gate.signature() != ProbeGate(gate.probe, gate.site.layer, 0.99).signature()


def test_a_gate_that_never_fires_leaves_generation_unchanged():
    lm = tiny_model("llama")
    dev = _prompts(8, 100)
    gate, _ = fit_probe_gate(lm, _prompts(12, 0), dev, layers=[2], max_false_positive_rate=0.0)
    gate.threshold = 1.0  # nothing fires
    method = make_method("actadd", layer=1)
    method.vector_ = torch.randn(lm.info.d_model) * 50
    method.fitted_ = True
    texts = dev[:4]
    with fitted_without_data("none").steer(lm, "memory") as plain:
        unsteered = plain.generate(texts, max_new_tokens=3)
    with method.steer(lm, "memory", strength=1.0, gate=gate) as gated:
        assert gated.generate(texts, max_new_tokens=3) == unsteered
        assert not gated.last_fired.any()
    with method.steer(lm, "memory", strength=1.0) as ungated:
        assert ungated.generate(texts, max_new_tokens=3) != unsteered
        assert ungated.last_fired is None


def _half_firing_gate(lm, prompts: list[SteeringPrompt]) -> ProbeGate:
    """A fitted gate whose threshold (the median unsteered score) lets half of ``prompts`` fire."""
    from sparekit.activations.last_token import last_token_states

    gate, _ = fit_probe_gate(lm, _prompts(12, 0), _prompts(8, 100), layers=[2], max_false_positive_rate=0.1)
    h = last_token_states(lm, [p.text for p in prompts], [gate.site])[gate.site]
    gate.threshold = float(np.median(gate.probe.predict_proba(h.numpy())[:, 1]))
    return gate


def _strong_actadd(lm, layer: int = 1):
    method = make_method("actadd", layer=layer)
    method.vector_ = torch.randn(lm.info.d_model, generator=torch.Generator().manual_seed(0)) * 50
    method.fitted_ = True
    return method


def test_the_gate_decides_on_unsteered_activations_of_the_same_prompts():
    """The edit sits below the gate's layer: reading the gate under the edit would change its decisions."""
    from sparekit.activations.last_token import last_token_states

    lm = tiny_model("llama")
    prompts = _prompts(4, 200)
    gate = _half_firing_gate(lm, prompts)
    unsteered_decision = gate.fire(last_token_states(lm, [p.text for p in prompts], [gate.site])[gate.site])
    assert 0 < int(unsteered_decision.sum()) < len(prompts)
    with _strong_actadd(lm).steer(lm, "memory", strength=1.0, gate=gate, batch_size=len(prompts)) as steered:
        steered.generate(prompts, max_new_tokens=2)
        first = steered.last_fired.clone()
        steered.generate(prompts[::-1], max_new_tokens=2)  # another batch never lends its mask
        second = steered.last_fired.clone()
    assert torch.equal(first, unsteered_decision)
    assert torch.equal(second, unsteered_decision.flip(0))


@pytest.mark.parametrize("kind", ["actadd", "cad", "icl"])
def test_gated_steering_leaves_rows_that_do_not_fire_bit_identical(kind):
    lm = tiny_model("llama")
    prompts = _prompts(4, 200)
    gate = _half_firing_gate(lm, prompts)
    if kind == "actadd":
        method, strength = _strong_actadd(lm), 1.0
    elif kind == "cad":
        method, strength = fitted_without_data("cad"), 8.0
    else:
        from sparekit.data import ConflictDataset
        from sparekit.steering.base import BehaviourData

        pool = ConflictDataset([p.example for p in _prompts(6, 300)[::2]], "pool")
        method, strength = make_method("icl", k=3).fit(BehaviourData([], np.zeros(0), {}, pool)), None
    golds = ["Ann"] * len(prompts)
    with fitted_without_data("none").steer(lm, "memory", batch_size=len(prompts)) as plain:
        answers, nll = plain.generate(prompts, max_new_tokens=4), plain.answer_nll(prompts, golds)
    with method.steer(lm, "memory", strength=strength, gate=gate, batch_size=len(prompts)) as steered:
        gated_answers, gated_nll = steered.generate(prompts, max_new_tokens=4), steered.answer_nll(prompts, golds)
        fired = steered.last_fired.tolist()
    with method.steer(lm, "memory", strength=strength, batch_size=len(prompts)) as ungated:
        ungated_nll = ungated.answer_nll(prompts, golds)
    assert any(fired) and not all(fired)
    for row, fires in enumerate(fired):
        if fires:  # the firing rows are steered exactly as without a gate
            assert gated_nll[row] == pytest.approx(ungated_nll[row], rel=1e-5) and gated_nll[row] != nll[row]
        elif kind == "icl":  # rewritten neighbours change the batch's padding: equal up to float rounding
            assert gated_nll[row] == pytest.approx(nll[row], rel=1e-6) and gated_answers[row] == answers[row]
        else:
            assert gated_nll[row] == nll[row] and gated_answers[row] == answers[row]


def test_a_gated_edit_outside_steered_generate_is_refused():
    lm = tiny_model("llama")
    prompts = _prompts(2, 200)
    from sparekit.evaluation.generation import tokenize

    with _strong_actadd(lm).steer(lm, "memory", strength=1.0, gate=_half_firing_gate(lm, prompts)):
        with pytest.raises(SparekitError, match="decides per batch"):
            lm.model(**tokenize(lm, [p.text for p in prompts], position_ids=True))


# -- the recall gate: decides from the prompt, fits nothing ------------------------------------------------------
def _recall_prompts(lm) -> list[SteeringPrompt]:
    """Pairs per item: the no-conflict context names the tiny model's own closed-book answer, the conflict one does
    not (the answers are read first, so the test does not depend on what a random model happens to say)."""
    from sparekit.probes.training_free import recall_answers

    examples = [ConflictExample(id=f"r{i}", question=f"who made item {i}?", org_context="", org_answer=("Ann",),
                                sub_context=f"Item {i} was made by zzz.", sub_answer=("zzz",)) for i in range(3)]
    closed, _ = recall_answers(lm, [ex.question for ex in examples])
    prompts = []
    for ex, answer in zip(examples, closed):
        ex = replace(ex, org_context=f"Item {ex.id} was made by {answer[0]}.")  # naming one answer is enough
        prompts += [SteeringPrompt(ex, "org", ()), SteeringPrompt(ex, "sub", ())]
    return prompts


def test_the_recall_gate_fires_where_the_context_does_not_name_the_closed_book_answer(monkeypatch):
    from collections import OrderedDict

    from sparekit.probes import training_free

    lm = tiny_model("llama")
    prompts = _recall_prompts(lm)
    monkeypatch.setattr(training_free, "_RECALLED", OrderedDict())
    asked = []
    generate = training_free.closed_book_answers
    monkeypatch.setattr(training_free, "closed_book_answers", lambda lm, texts, *a: asked.append(len(texts)) or
                        generate(lm, texts, *a))
    assert RecallGate().decide(lm, prompts).tolist() == [False, True] * 3
    assert asked == [6]  # two prompts for each of the three questions, in one batch
    for key, (_, sure) in training_free._RECALLED.items():  # the cached answers are what the next gate reads
        training_free._RECALLED[key] = ("Bob", "Bob"), sure
    assert RecallGate().decide(lm, prompts).tolist() == [True, True] * 3
    assert asked == [6]


def test_the_recall_gate_decides_as_detect_recall_reads():
    from sparekit.probes.training_free import detect_conflict

    lm = tiny_model("llama")
    prompts = _recall_prompts(lm)
    read = [detect_conflict(lm, p.text, "recall", None, p.text_without_context, p.example.question)["unrecalled"]
            for p in prompts]
    assert RecallGate().decide(lm, prompts).tolist() == [r == 1.0 for r in read] == [False, True] * 3


@pytest.mark.parametrize("kind", ["actadd", "cad"])
def test_recall_gated_steering_decodes_rows_it_does_not_fire_on_as_unsteered(kind):
    lm = tiny_model("llama")
    prompts = _recall_prompts(lm)
    method, strength = (_strong_actadd(lm), 1.0) if kind == "actadd" else (fitted_without_data("cad"), 8.0)
    golds = ["Ann"] * len(prompts)
    with fitted_without_data("none").steer(lm, "memory", batch_size=len(prompts)) as plain:
        answers, nll = plain.generate(prompts, max_new_tokens=4), plain.answer_nll(prompts, golds)
    with method.steer(lm, "memory", strength=strength, gate=RecallGate(), batch_size=len(prompts)) as steered:
        gated_answers, gated_nll = steered.generate(prompts, max_new_tokens=4), steered.answer_nll(prompts, golds)
        fired = steered.last_fired.tolist()
    with method.steer(lm, "memory", strength=strength, batch_size=len(prompts)) as ungated:
        ungated_nll = ungated.answer_nll(prompts, golds)
    assert fired == [False, True] * 3
    for row, fires in enumerate(fired):
        if fires:
            assert gated_nll[row] == pytest.approx(ungated_nll[row], rel=1e-5) and gated_nll[row] != nll[row]
        else:
            assert gated_nll[row] == nll[row] and gated_answers[row] == answers[row]


def test_the_recall_gates_signature_names_the_reading_it_decides_by():
    from sparekit.probes.training_free import RECALL_READING

    assert RecallGate().signature() == f"recall:{RECALL_READING}"


def test_an_unknown_training_free_gate_is_one_error_line():
    assert isinstance(training_free_gate("recall"), RecallGate)
    with pytest.raises(SparekitError, match="unknown training-free gate 'recal'.*did you mean 'recall'"):
        training_free_gate("recal")
