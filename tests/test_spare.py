"""SpARE: the edit formula on a hand-computed toy SAE, selection by MI mass, where it edits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sparekit
from sparekit.data.dataset import ConflictExample
from sparekit.errors import SparekitError
from sparekit.evaluation.generation import tokenize
from sparekit.hooks import Hooks, Site
from sparekit.sae import TopKSAE, save_sae
from sparekit.steering import BehaviourData, SteeringPrompt
from sparekit.steering.spare import SpARE, select_by_mi_mass, spare_delta


def toy_sae(d_in: int = 4) -> TopKSAE:
    """3 features; decoder rows are unit axes scaled, encoder reads them back."""
    sae = TopKSAE(d_in=d_in, d_sae=3, k=1)
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(3, d_in) * torch.tensor([[1.0], [2.0], [0.5]]))
        sae.W_enc.copy_(torch.eye(d_in, 3))
        sae.b_enc.zero_()
        sae.b_dec.fill_(0.25)  # must cancel out of the edit
    return sae


def test_spare_delta_matches_hand_computation():
    sae = toy_sae()
    h = torch.tensor([[3.0, 0.2, 1.0, 7.0]])
    z = sae.pre_acts(h)  # relu(h @ I) = [3.0, 0.2, 1.0]
    assert torch.equal(z, torch.tensor([[3.0, 0.2, 1.0]]))
    # toward memory: remove context feature 0 up to alpha*zC0 = 2*1.0 = 2 -> z- = min(2, 3) = 2
    # add memory feature 1 up to alpha*zM1 = 2*1.5 = 3 -> z+ = max(3 - 0.2, 0) = 2.8
    delta = spare_delta(z, sae, torch.tensor([0]), torch.tensor([2.0]), torch.tensor([1]), torch.tensor([3.0]))
    expected = -2.0 * sae.W_dec[0] + 2.8 * sae.W_dec[1]
    torch.testing.assert_close(delta[0], expected.detach())
    torch.testing.assert_close(delta[0], torch.tensor([-2.0, 5.6, 0.0, 0.0]))
    # a feature already above its target is not pushed further
    none_added = spare_delta(z, sae, torch.tensor([], dtype=torch.long), torch.tensor([]),
                             torch.tensor([2]), torch.tensor([0.5]))
    assert torch.equal(none_added, torch.zeros_like(none_added))


def test_selection_by_cumulative_mi_mass():
    mi = np.array([0.125, 0.5, 0.0, 0.25, 0.125])  # exact in binary: total 1.0
    assert list(select_by_mi_mass(mi, 0.5)) == [1]  # the top feature alone reaches half the mass
    assert list(select_by_mi_mass(mi, 0.51)) == [1, 3]
    assert list(select_by_mi_mass(mi, 0.75)) == [1, 3]
    assert list(select_by_mi_mass(mi, 0.76)) == [1, 3, 0]
    assert len(select_by_mi_mass(mi, 1.0)) == 4  # the zero-MI feature is never needed
    assert len(select_by_mi_mass(np.zeros(4), 0.1)) == 0
    with pytest.raises(SparekitError):
        select_by_mi_mass(mi, 0.0)


def _behaviour(lm, labels):
    examples = [ConflictExample(id=str(i), question=f"q{i}", org_context=f"a{i} is here", org_answer=(f"a{i}",),
                                sub_context=f"b{i} is here", sub_answer=(f"b{i}",)) for i in range(len(labels))]
    prompts = [SteeringPrompt(e, "sub", ()) for e in examples]
    with Hooks(lm).capture(Site(1), dtype=torch.float32) as hooks, torch.no_grad():
        lm.model(**tokenize(lm, [p.text for p in prompts]))
    hidden = hooks[Site(1)]
    labels = np.asarray(labels)
    # make the groups separable along dimension 0
    hidden[:, 0] += torch.as_tensor(labels * 4.0 - 2.0, device=hidden.device)
    return BehaviourData(prompts, labels, {1: hidden}), prompts


def _fitted_spare(lm, tmp_path, labels=(1, 0) * 8):
    sae = TopKSAE(d_in=lm.info.d_model, d_sae=32, k=4, hook_layer=1)
    torch.manual_seed(0)
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.copy_(sae.W_enc.T / sae.W_enc.norm(dim=0, keepdim=True).T)
    save_sae(sae, tmp_path / "sae")
    data, prompts = _behaviour(lm, list(labels))
    method = SpARE(layers=(1,), sae=str(tmp_path / "sae"), mi_mass=0.5).fit(data)
    return method, data, prompts


def test_spare_edits_only_last_prompt_token_in_prompt_pass(tiny_llama, tmp_path):
    lm = tiny_llama
    method, data, prompts = _fitted_spare(lm, tmp_path)
    context_idx, memory_idx = method.selected(1)
    assert len(context_idx) + len(memory_idx) > 0
    enc = tokenize(lm, [p.text for p in prompts[:3]])
    seen = []
    probe = Hooks(lm).capture(Site(1), positions="all", when="always")
    with torch.no_grad():
        with probe:
            lm.model.generate(**enc, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
        clean = probe.all(Site(1))
        with method.steer(lm, toward="memory", strength=2.0):
            steered_probe = Hooks(lm).capture(Site(1), positions="all", when="always")
            with steered_probe:
                lm.model.generate(**enc, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
        steered = steered_probe.all(Site(1))
    # prompt pass: only the last position differs at the edited layer
    assert torch.equal(clean[0][:, :-1], steered[0][:, :-1])
    assert not torch.equal(clean[0][:, -1], steered[0][:, -1])
    seen.append(steered)
    # the edit at the last token equals the formula applied to the clean activation
    sae = method._sae(1)
    z = sae.pre_acts(clean[0][:, -1])
    alpha, on = 2.0, z.device  # the fitted state lives on the CPU; the edit runs where the model does
    context_target = alpha * method.mean_context_[1][context_idx].to(on)
    memory_target = alpha * method.mean_memory_[1][memory_idx].to(on)
    expected = clean[0][:, -1] + spare_delta(z, sae, context_idx.to(on), context_target, memory_idx.to(on), memory_target)
    torch.testing.assert_close(steered[0][:, -1], expected, rtol=1e-5, atol=1e-5)


def test_spare_round_trip_and_errors(tiny_llama, tmp_path):
    method, data, _ = _fitted_spare(tiny_llama, tmp_path)
    method.save(tmp_path / "spare")
    loaded = sparekit.load(tmp_path / "spare")
    assert isinstance(loaded, SpARE) and loaded.layers == (1,)
    for a, b in zip(method.selected(1), loaded.selected(1)):
        assert torch.equal(a, b)
    with pytest.raises(SparekitError, match="no uses-memory"):
        SpARE(layers=(1,), sae=str(tmp_path / "sae")).fit(
            BehaviourData(data.prompts, np.ones_like(data.labels), data.hidden))
    with pytest.raises(SparekitError, match="not fitted"):
        with SpARE().steer(tiny_llama, toward="memory"):
            pass
