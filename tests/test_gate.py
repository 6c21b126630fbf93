"""The conflict gate: layer chosen on dev, threshold calibrated to a false-positive budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparekit.data import ConflictExample
from sparekit.errors import SparekitError
from sparekit.models.tiny import tiny_model
from sparekit.steering import SteeringPrompt, make_method
from sparekit.steering.gate import ProbeGate, fit_probe_gate, threshold_for_false_positive_rate


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


def test_a_gate_that_never_fires_leaves_generation_unchanged():
    lm = tiny_model("llama")
    dev = _prompts(8, 100)
    gate, _ = fit_probe_gate(lm, _prompts(12, 0), dev, layers=[2], max_false_positive_rate=0.0)
    gate.threshold = 1.0  # nothing fires
    method = make_method("actadd", layer=1)
    method.vector_ = torch.randn(lm.info.d_model) * 50
    method.fitted_ = True
    texts = dev[:4]
    with make_method("none").fit(None).steer(lm, "memory") as plain:  # type: ignore[arg-type]
        unsteered = plain.generate(texts, max_new_tokens=3)
    with method.steer(lm, "memory", strength=1.0, gate=gate) as gated:
        assert gated.generate(texts, max_new_tokens=3) == unsteered
        assert not gated.last_fired.any()
    with method.steer(lm, "memory", strength=1.0) as ungated:
        assert ungated.generate(texts, max_new_tokens=3) != unsteered
        assert ungated.last_fired is None
