"""Steering baselines on a tiny random Llama with synthetic behaviour data.

The behaviour data are real captures (last prompt token, layers 1 and 2) of hand-made
conflict prompts, with alternating labels: the groups differ only by chance, which is
enough to check that every method moves the model the way it is asked to.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sparekit
from sparekit.data.dataset import ConflictDataset, ConflictExample
from sparekit.data.prompts import sample_demos
from sparekit.errors import SparekitError
from sparekit.evaluation.generation import tokenize
from sparekit.hooks import Hooks, Site
from sparekit.models.tiny import tiny_model
from sparekit.sae import ReluSAE, save_sae
from sparekit.steering import DIRECTIONS, REGISTRY, BehaviourData, SteeringPrompt, make_method
from sparekit.steering.baselines.dola import dola_scores
from sparekit.steering.output_effect import logit_lens
from sparekit.steering.shadow import ShadowForward

LAYERS = (1, 2)
NAMES = ["Ann", "Bob", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal"]
BASELINES = {"none", "icl", "cad", "adacad", "juice", "actadd", "sea", "dola", "knob"}
LEARNS_FROM_LABELS = {"actadd", "sea", "knob", "spare", "juice"}


def _examples() -> list[ConflictExample]:
    return [ConflictExample(id=f"q{i}", question=f"who built hut {i}?", org_context=f"Hut {i} was built by {org}.",
                            org_answer=(org,), sub_context=f"Hut {i} was built by {sub}.", sub_answer=(sub,))
            for i, (org, sub) in enumerate(zip(NAMES, NAMES[3:] + NAMES[:3]))]


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def pool() -> ConflictDataset:
    return ConflictDataset(_examples(), "toy")


@pytest.fixture(scope="module")
def behaviour(lm, pool) -> BehaviourData:
    rng = random.Random(0)
    prompts = [SteeringPrompt(ex, "sub", tuple(sample_demos(pool, ex.group, 1, flavour, rng)))
               for ex in pool for flavour in ("sub_sub", "sub_org")]
    hooks = Hooks(lm)
    for layer in LAYERS:
        hooks.capture(Site(layer), dtype=torch.float32)
    with hooks.stop_after_captures(), torch.inference_mode():
        lm.model(**tokenize(lm, [p.text for p in prompts]))
    labels = (np.arange(len(prompts)) % 2 == 0).astype(np.int64)
    return BehaviourData(prompts, labels, {layer: hooks[Site(layer)].clone() for layer in LAYERS}, pool, lm=lm)


@pytest.fixture(scope="module")
def params(tmp_path_factory) -> dict[str, dict]:
    """Per-method parameters that fit the 4-layer tiny model (SpARE gets random tiny SAEs)."""
    folder = tmp_path_factory.mktemp("saes")
    torch.manual_seed(0)
    for layer in LAYERS:
        sae = ReluSAE(64, 128, hook_layer=layer)
        with torch.no_grad():
            sae.W_enc.normal_(0, 0.2), sae.W_dec.normal_(0, 0.2)
        save_sae(sae, folder / f"resid.{layer}")
    return {"actadd": {"layer": 2}, "sea": {"layer": 2}, "knob": {"layer": 2}, "dola": {"premature_layers": (0, 1)},
            "icl": {"k": 2}, "cvec": {"layers": LAYERS},
            "spare": {"layers": LAYERS, "sae": str(folder / "resid.{layer}"), "mi_mass": 0.5}}


def _fitted(kind: str, params, behaviour):
    return make_method(kind, **params.get(kind, {})).fit(behaviour)


def _hook_count(lm) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


def _steered_hidden(lm, method, toward, strength, texts, layer) -> torch.Tensor:
    """Last-prompt-token residual at ``layer`` as the steered model computes it."""
    with method.steer(lm, toward, strength), torch.inference_mode():
        with Hooks(lm).capture(Site(layer)).stop_after_captures() as hooks:
            lm.model(**tokenize(lm, texts))
    return hooks[Site(layer)]


def test_every_baseline_is_registered():
    assert BASELINES <= set(REGISTRY)
    for kind in BASELINES:
        cls = REGISTRY[kind]
        assert cls.kind == kind
        assert (cls.default_strength is None) == (cls.strength_grid == ())


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_conformance(kind, lm, behaviour, params, tmp_path):
    method = make_method(kind, **params.get(kind, {}))
    assert method.fit(behaviour) is method
    prompts = behaviour.prompts[:2]
    before = _hook_count(lm)
    outputs = {}
    for toward in DIRECTIONS:
        with method.steer(lm, toward) as steered:
            outputs[toward] = steered.generate(prompts, max_new_tokens=3)
        assert len(outputs[toward]) == len(prompts) and all(isinstance(o, str) for o in outputs[toward])
        assert _hook_count(lm) == before
    method.save(tmp_path / kind)
    loaded = sparekit.load(tmp_path / kind)
    assert type(loaded) is type(method) and loaded.get_params() == method.get_params()
    for toward in DIRECTIONS:
        with loaded.steer(lm, toward) as steered:
            assert steered.generate(prompts, max_new_tokens=3) == outputs[toward]


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_answer_nll_is_scored_under_the_steering(kind, lm, behaviour, params):
    """Every method scores the gold answer the way it answers: the unsteered NLL for `none`, finite for all."""
    from sparekit.evaluation.generation import answer_nll

    prompts = behaviour.prompts[:3]
    answers = [p.example.org_answer[0] for p in prompts]
    method = _fitted(kind, params, behaviour)
    with method.steer(lm, "memory", strength=method.default_strength) as steered:
        scores = steered.answer_nll(prompts, answers)
    assert len(scores) == 3 and all(np.isfinite(scores)) and all(s > 0 for s in scores)
    plain = answer_nll(lm, [p.text for p in prompts], answers)
    if kind == "none":
        assert np.allclose(scores, plain, atol=1e-4)
    if kind in ("actadd", "cad", "adacad", "juice"):  # an edit, a logit contrast, a head intervention: the NLL moves
        assert not np.allclose(scores, plain, atol=1e-4)


@pytest.mark.parametrize("kind", sorted(BASELINES))
def test_hooks_removed_after_an_error(kind, lm, behaviour, params):
    method = _fitted(kind, params, behaviour)
    before = _hook_count(lm)
    with pytest.raises(RuntimeError, match="boom"), method.steer(lm, "memory"):
        raise RuntimeError("boom")
    assert _hook_count(lm) == before


@pytest.mark.parametrize("kind", sorted(BASELINES | {"spare"}))
def test_one_behaviour_class_missing(kind, behaviour, params):
    only_context = BehaviourData(behaviour.prompts, np.ones_like(behaviour.labels), behaviour.hidden, behaviour.pool)
    method = make_method(kind, **params.get(kind, {}))
    if kind in LEARNS_FROM_LABELS:
        with pytest.raises(SparekitError, match="no uses-memory"):
            method.fit(only_context)
    else:
        assert method.fit(only_context) is method


@pytest.mark.parametrize("kind", ["actadd", "sea", "knob"])
def test_save_load_gives_identical_edits(kind, lm, behaviour, params, tmp_path):
    method = _fitted(kind, params, behaviour)
    method.save(tmp_path)
    loaded = sparekit.load(tmp_path)
    h = torch.randn(5, lm.info.d_model)
    for toward in DIRECTIONS:
        strength = method.strength_grid[-1]
        ((site, fn),), ((site2, fn2),) = method.edits(lm, toward, strength), loaded.edits(lm, toward, strength)
        assert site == site2
        assert torch.equal(fn(h), fn2(h))


@pytest.mark.parametrize("kind", ["actadd", "sea", "knob"])
def test_edit_moves_the_other_group_toward_the_target(kind, lm, behaviour, params):
    """Steering one behaviour group's prompts moves their hidden states toward the other group's.

    At the grid's mildest strength: larger ones may overshoot the target mean on purpose.
    """
    method = _fitted(kind, params, behaviour)
    layer = params[kind]["layer"]
    mean_context, mean_memory = behaviour.group_means(layer, kind)
    axis = mean_context - mean_memory
    for toward, source_label, target in (("context", 0, mean_context), ("memory", 1, mean_memory)):
        texts = [p.text for p, y in zip(behaviour.prompts, behaviour.labels) if y == source_label]
        before = behaviour.hidden[layer][behaviour.labels == source_label]
        after = _steered_hidden(lm, method, toward, min(method.strength_grid), texts, layer)
        assert not torch.allclose(after, before)
        assert (after.mean(0) - target).norm() < (before.mean(0) - target).norm()
        shift = float((after - before).mean(0) @ axis)
        assert shift > 0 if toward == "context" else shift < 0


def test_actadd_adds_the_mean_difference(lm, behaviour, params):
    method = _fitted("actadd", params, behaviour)
    mean_context, mean_memory = behaviour.group_means(2, "actadd")
    texts = [p.text for p in behaviour.prompts[:3]]
    after = _steered_hidden(lm, method, "memory", 2.0, texts, 2)
    torch.testing.assert_close(after, behaviour.hidden[2][:3] - 2.0 * (mean_context - mean_memory))


def test_knob_sets_the_coordinate_to_the_target(lm, behaviour, params):
    method = _fitted("knob", params, behaviour)
    u = method.direction_
    assert torch.isclose(u.norm(), torch.tensor(1.0))
    texts = [p.text for p in behaviour.prompts[:4]]
    before = behaviour.hidden[2][:4]
    for toward in DIRECTIONS:
        for strength in method.strength_grid:
            after = _steered_hidden(lm, method, toward, strength, texts, 2)
            target = method.target(toward, strength)
            torch.testing.assert_close(after @ u, torch.full((4,), target), atol=1e-4, rtol=1e-4)
            orthogonal = lambda h: h - (h @ u)[:, None] * u  # noqa: E731
            torch.testing.assert_close(orthogonal(after), orthogonal(before), atol=1e-4, rtol=1e-4)
    assert method.target("context", 0.0) > method.target("memory", 0.0)


def test_sea_fits_bases_for_both_directions(behaviour, params):
    method = _fitted("sea", params, behaviour)
    for basis in (method.basis_["context"], method.basis_["memory"]):
        assert basis.shape[0] == 64 and 0 < basis.shape[1] <= int(behaviour.labels.sum())
        torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-4, rtol=1e-4)
    smaller = make_method("sea", layer=2, energy=0.5).fit(behaviour)
    assert smaller.basis_["context"].shape[1] < method.basis_["context"].shape[1]
    with pytest.raises(SparekitError, match="energy"):
        make_method("sea", layer=2, energy=1.5).fit(behaviour)


def _last_logits(lm, texts) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model(**tokenize(lm, texts)).logits[:, -1].float()


def test_shadow_forward_matches_unpadded_recompute(lm, behaviour):
    """Feeding generated tokens to the shadow batch gives the logits of each full sequence alone."""
    texts = [behaviour.prompts[0].text_without_context, behaviour.prompts[3].text]
    shadow = ShadowForward(lm, texts)
    main = tokenize(lm, ["x", "yy"])["input_ids"]
    new_tokens = torch.tensor([[5, 7], [9, 11]])
    with torch.inference_mode():
        for step in range(3):
            logits = shadow.step(torch.cat([main, new_tokens[:, :step]], dim=1)).logits[:, -1]
        for row, text in enumerate(texts):
            ids = torch.cat([lm.tokenizer(text, return_tensors="pt")["input_ids"], new_tokens[row:row + 1]], dim=1)
            torch.testing.assert_close(logits[row], lm.model(input_ids=ids).logits[0, -1], atol=1e-4, rtol=1e-4)


def test_cad_contrasts_with_and_without_context(lm, behaviour):
    prompts = behaviour.prompts[:4]
    with_context = _last_logits(lm, [p.text for p in prompts])
    without = _last_logits(lm, [p.text_without_context for p in prompts])
    rows = torch.arange(len(prompts))
    added = F.log_softmax(with_context, -1) - F.log_softmax(without, -1)
    context_token, memory_token = added.argmax(-1), added.argmin(-1)  # what the context promotes / suppresses
    input_ids = tokenize(lm, [p.text for p in prompts])["input_ids"]

    def margin(scores):
        logp = F.log_softmax(scores, -1)
        return logp[rows, context_token] - logp[rows, memory_token]

    method = make_method("cad").fit(behaviour)
    for toward in DIRECTIONS:
        (processor,) = method.logits_processor(lm, prompts, toward, 1.0)
        with torch.inference_mode():
            steered = processor(input_ids, with_context.clone())
        expected = 2 * with_context - without if toward == "context" else 2 * without - with_context
        torch.testing.assert_close(steered, expected, atol=1e-4, rtol=1e-4)
        moved = margin(steered) - margin(with_context)
        assert (moved > 0).all() if toward == "context" else (moved < 0).all()
    with pytest.raises(SparekitError, match="α"):
        method.logits_processor(lm, prompts, "context", -1.0)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma2"])
def test_logit_lens_of_the_last_block_is_the_model_output(model_type):
    tiny = tiny_model(model_type)
    last = Site(tiny.info.n_layers - 1)
    batch = tokenize(tiny, ["context: a\nquestion: b\nanswer:", "hi"])
    with torch.inference_mode():
        with Hooks(tiny).capture(last) as hooks:
            logits = tiny.model(**batch).logits[:, -1]
        lens = logit_lens(tiny, hooks[last])
    torch.testing.assert_close(lens, logits, atol=1e-4, rtol=1e-4)


def test_dola_scores_are_final_minus_premature_on_the_plausible_set(lm, behaviour, params):
    prompts = behaviour.prompts[:3]
    batch = tokenize(lm, [p.text for p in prompts])
    with torch.inference_mode():
        out = lm.model(**batch, output_hidden_states=True)
        final = out.logits[:, -1].float()
        premature = logit_lens(lm, out.hidden_states[1 + 1][:, -1]).float()
    method = make_method("dola", premature_layers=(1,)).fit(behaviour)
    results = []
    for toward in DIRECTIONS:
        (processor,) = method.logits_processor(lm, prompts, toward, None)
        with torch.inference_mode():
            results.append(processor(batch["input_ids"], final.clone()))
    assert torch.equal(results[0], results[1])  # not directional
    log_final = F.log_softmax(final, -1)
    plausible = log_final.exp() >= 0.1 * log_final.exp().max(-1, keepdim=True).values
    assert torch.isinf(results[0][~plausible]).all() and torch.isfinite(results[0][plausible]).all()
    expected = (log_final - F.log_softmax(premature, -1))[plausible]
    torch.testing.assert_close(results[0][plausible], expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(SparekitError, match="below the last layer"):
        make_method("dola", premature_layers=(3,)).fit(behaviour).logits_processor(lm, prompts, "context", None)


def test_dola_picks_the_premature_layer_with_the_largest_divergence():
    final = torch.tensor([[4.0, 3.5, 0.0]])
    close, far = torch.tensor([[4.0, 3.4, 0.0]]), torch.tensor([[0.0, 3.0, 4.0]])
    scores = dola_scores(final, torch.stack([close, far]), 0.1)
    expected = F.log_softmax(final, -1) - F.log_softmax(far, -1)
    torch.testing.assert_close(scores[:, :2], expected[:, :2])
    assert torch.isinf(scores[0, 2])


def test_icl_demonstrations_show_the_wanted_behaviour(behaviour, pool, tmp_path):
    method = make_method("icl", k=3, seed=1).fit(behaviour)
    prompts = behaviour.prompts[:4]
    by_question = {ex.question: ex for ex in pool}
    rewritten = {toward: method.rewrite(prompts, toward, None) for toward in DIRECTIONS}
    for toward, answer_field in (("context", "sub_answer"), ("memory", "org_answer")):
        for original, new in zip(prompts, rewritten[toward]):
            assert new.example == original.example and new.context == original.context
            assert len(new.demos) == 3
            questions = [demo.split("question: ")[1].split("\n")[0] for demo in new.demos]
            assert len(set(questions)) == 3 and original.example.question not in questions
            for demo, question in zip(new.demos, questions):
                assert demo.endswith(f"answer: {getattr(by_question[question], answer_field)[0]}\n\n")
                assert f"context: {by_question[question].sub_context}\n" in demo
    # same draws both ways, differing only in the demonstrated answer
    for a, b in zip(rewritten["context"], rewritten["memory"]):
        assert [d.split("answer:")[0] for d in a.demos] == [d.split("answer:")[0] for d in b.demos]
    assert method.rewrite(prompts, "context", None) == rewritten["context"]
    assert make_method("icl", k=3, seed=2).fit(behaviour).rewrite(prompts, "context", None) != rewritten["context"]
    method.save(tmp_path)
    assert sparekit.load(tmp_path).rewrite(prompts, "memory", None) == rewritten["memory"]


def test_icl_needs_a_pool(behaviour):
    no_pool = BehaviourData(behaviour.prompts, behaviour.labels, behaviour.hidden, None)
    with pytest.raises(SparekitError, match="pool"):
        make_method("icl").fit(no_pool)
    with pytest.raises(SparekitError, match="question groups"):
        make_method("icl", k=8).fit(behaviour)


def test_only_a_method_that_learns_nothing_is_fitted_without_data():
    from sparekit.steering import fitted_without_data

    for kind in ("none", "cad", "adacad"):
        assert fitted_without_data(kind).fitted_
    assert fitted_without_data("dola", plausibility=0.2).plausibility == 0.2
    for kind in ("actadd", "spare", "icl"):
        with pytest.raises(SparekitError, match=f"{kind} learns from behaviour data"):
            fitted_without_data(kind)
