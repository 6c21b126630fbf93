"""AdaCAD, JUICE and SpARE's output-score selection on tiny random models.

Each check is built so the wrong sign, a dropped weight or a missing "second run" fails it:
the answer margin is ``log p(sub_answer's first token) - log p(org_answer's first token)`` at
the last prompt token, and steering toward context must raise it, toward memory lower it.
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
from sparekit.steering import DIRECTIONS, BehaviourData, SteeringPrompt, fitted_without_data, make_method
from sparekit.evaluation.divergence import jensen_shannon
from sparekit.steering.base import Gate
from sparekit.steering.baselines.juice import DualRun, scale_heads
from sparekit.steering.output_effect import answer_first_tokens

NAMES = ["Ann", "Bob", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal"]
SUBSTITUTES = ["Kim", "Lou", "Max", "Ned", "Oz", "Pat", "Roy", "Sue"]  # other first letters than NAMES
LAST = 3  # the tiny models' last block


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def behaviour(lm) -> BehaviourData:
    examples = [ConflictExample(id=f"q{i}", question=f"who built hut {i}?", org_context=f"Hut {i} was built by {org}.",
                                org_answer=(org,), sub_context=f"Hut {i} was built by {sub}.", sub_answer=(sub,))
                for i, (org, sub) in enumerate(zip(NAMES, SUBSTITUTES))]
    pool = ConflictDataset(examples, "toy")
    rng = random.Random(0)
    prompts = [SteeringPrompt(ex, "sub", tuple(sample_demos(pool, ex.group, 1, flavour, rng)))
               for ex in pool for flavour in ("sub_sub", "sub_org")]
    hooks = Hooks(lm).capture(Site(LAST), dtype=torch.float32)
    with hooks, torch.inference_mode():
        lm.model(**tokenize(lm, [p.text for p in prompts]))
    labels = (np.arange(len(prompts)) % 2 == 0).astype(np.int64)
    return BehaviourData(prompts, labels, {LAST: hooks[Site(LAST)].clone()}, pool, lm=lm)


def _margin(lm, prompts, logits: torch.Tensor) -> torch.Tensor:
    """Per row: log p(context answer's first token) - log p(memory answer's first token)."""
    log_probs = F.log_softmax(logits.float(), -1)
    rows = torch.arange(len(prompts))
    context = answer_first_tokens(lm, [p.example.sub_answer[0] for p in prompts])
    memory = answer_first_tokens(lm, [p.example.org_answer[0] for p in prompts])
    return log_probs[rows, context] - log_probs[rows, memory]


def _last_logits(lm, texts) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model(**tokenize(lm, texts)).logits[:, -1].float()


def _toward_context(lm, prompts) -> torch.Tensor:
    """Mean unembedding of the context answers' first tokens minus the memory answers': a direction
    that, written into the residual stream, raises :func:`_margin` through the logit lens."""
    unembed = lm.model.get_output_embeddings().weight.detach()
    examples = list({p.example.id: p.example for p in prompts}.values())
    context = answer_first_tokens(lm, [ex.sub_answer[0] for ex in examples])
    memory = answer_first_tokens(lm, [ex.org_answer[0] for ex in examples])
    return (unembed[context] - unembed[memory]).mean(0)


def _assert_reloads_to_same_generations(lm, method, prompts, path) -> None:
    """Saved and loaded back, ``method`` generates the same answers both ways."""
    method.save(path)
    loaded = sparekit.load(path)
    for toward in DIRECTIONS:
        with method.steer(lm, toward) as a:
            first = a.generate(prompts[:3], max_new_tokens=3)
        with loaded.steer(lm, toward) as b:
            assert b.generate(prompts[:3], max_new_tokens=3) == first


def test_answer_first_tokens_skip_a_split_off_space(lm):
    ids = answer_first_tokens(lm, ["Ann", " Bob "])
    assert lm.tokenizer.convert_ids_to_tokens(ids.tolist()) == ["A", "B"]


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma3_text"])
def test_heads_site_is_the_output_projection_input(model_type):
    tiny = tiny_model(model_type)
    batch = tokenize(tiny, ["context: a\nquestion: b\nanswer:", "hi"])
    with torch.inference_mode(), Hooks(tiny).capture(Site(1, "heads"), positions="all") \
            .capture(Site(1, "attn"), positions="all") as hooks:
        tiny.model(**batch)
    projection = tiny.model.get_submodule(tiny.info.module_path(1, "heads"))
    heads = hooks[Site(1, "heads")]
    assert heads.shape[-1] == 64
    with torch.inference_mode():
        torch.testing.assert_close(projection(heads), hooks[Site(1, "attn")], atol=1e-5, rtol=1e-5)
    # an edit there reaches the attention output: zeroing every head leaves only the projection's bias
    with torch.inference_mode(), Hooks(tiny).edit(Site(1, "heads"), torch.zeros_like, positions="all") \
            .capture(Site(1, "attn"), positions="all") as edited:
        tiny.model(**batch)
    bias = projection.bias.detach() if projection.bias is not None else torch.zeros(tiny.info.d_model)
    torch.testing.assert_close(edited[Site(1, "attn")], bias.expand_as(edited[Site(1, "attn")]))


# -- AdaCAD --------------------------------------------------------------------------------------
def test_adacad_weight_is_the_per_row_divergence(lm, behaviour):
    prompts = behaviour.prompts[:4]
    with_context = _last_logits(lm, [p.text for p in prompts])
    without = _last_logits(lm, [p.text_without_context for p in prompts])
    alpha = jensen_shannon(F.log_softmax(with_context, -1), F.log_softmax(without, -1))[:, None]
    assert (alpha > 0).all() and (alpha < np.log(2)).all() and alpha.unique().numel() == len(prompts)
    input_ids = tokenize(lm, [p.text for p in prompts])["input_ids"]
    method = make_method("adacad").fit(behaviour)
    for toward in DIRECTIONS:
        (processor,) = method.logits_processor(lm, prompts, toward, 2.0)
        with torch.inference_mode():
            steered = processor(input_ids, with_context.clone())
        a = 2.0 * alpha
        expected = (1 + a) * with_context - a * without if toward == "context" else (1 + a) * without - a * with_context
        torch.testing.assert_close(steered, expected, atol=1e-4, rtol=1e-4)
        added = F.log_softmax(with_context, -1) - F.log_softmax(without, -1)  # what the context adds
        rows = torch.arange(len(prompts))

        def pull(scores):
            logp = F.log_softmax(scores, -1)
            return logp[rows, added.argmax(-1)] - logp[rows, added.argmin(-1)]

        moved = pull(steered) - pull(with_context)
        assert (moved > 0).all() if toward == "context" else (moved < 0).all()
    with pytest.raises(SparekitError, match="strength"):
        method.logits_processor(lm, prompts, "context", -1.0)


# -- JUICE ---------------------------------------------------------------------------------------
def test_juice_second_run_adds_the_clean_head_outputs(lm, behaviour):
    """One intervened layer: the same as scaling its heads in place. Two: upstream scaling must not
    change what is added downstream, so in-place scaling of both differs from the dual run."""
    prompts = behaviour.prompts[:3]
    enc = tokenize(lm, [p.text for p in prompts])
    scale = torch.tensor([1.0, 3.0, 0.0, 1.0])  # 1 + α per head

    def in_place(layers):
        hooks = Hooks(lm)
        for layer in layers:
            hooks.edit(Site(layer, "heads"), lambda h: scale_heads(h, scale), positions="all")
        with torch.inference_mode(), hooks:
            return lm.model(**enc).logits[:, -1].float()

    def dual(layers):
        processor = DualRun(lm, prompts, {layer: scale - 1 for layer in layers})
        with torch.inference_mode():
            return processor(enc["input_ids"], torch.zeros(len(prompts), lm.info.vocab_size)).float()

    torch.testing.assert_close(dual([1]), in_place([1]), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(dual([0, 2]), in_place([0, 2]), atol=1e-3)
    assert not torch.allclose(dual([0, 2]), _last_logits(lm, [p.text for p in prompts]), atol=1e-3)


def test_juice_moves_the_answer_toward_the_asked_side(lm, behaviour):
    method = make_method("juice", n_heads=2, n_prompts=16).fit(behaviour)
    assert method.context_heads_.shape == method.memory_heads_.shape == (2, 2)
    context_heads = {tuple(x) for x in method.context_heads_.tolist()}
    assert not context_heads & {tuple(x) for x in method.memory_heads_.tolist()}
    for layer, head in method.context_heads_.tolist():
        assert method.head_scores_[layer, head] > 0
    prompts = behaviour.prompts
    before = _margin(lm, prompts, _last_logits(lm, [p.text for p in prompts]))
    input_ids = tokenize(lm, [p.text for p in prompts])["input_ids"]
    for toward in DIRECTIONS:
        (processor,) = method.logits_processor(lm, prompts, toward, 0.5)
        with torch.inference_mode():
            after = _margin(lm, prompts, processor(input_ids, torch.zeros(len(prompts), lm.info.vocab_size)))
        moved = float((after - before).mean())
        assert moved > 0 if toward == "context" else moved < 0


def test_juice_needs_the_model(behaviour):
    no_model = BehaviourData(behaviour.prompts, behaviour.labels, behaviour.hidden, behaviour.pool)
    with pytest.raises(SparekitError, match="runs the model"):
        make_method("juice").fit(no_model)
    with pytest.raises(SparekitError, match="n_heads"):
        make_method("juice", n_heads=0).fit(behaviour)


# -- SpARE, selection="output_score" ------------------------------------------------------------
@pytest.fixture(scope="module")
def twin_sae(lm, behaviour, tmp_path_factory) -> tuple[str, BehaviourData]:
    """Two features that read the same direction (equally informative about the label) and write
    opposite directions: feature 0 pushes the logit lens toward the context answers, feature 1 away."""
    torch.manual_seed(0)
    read = F.normalize(torch.randn(lm.info.d_model), dim=0)
    toward_context = _toward_context(lm, behaviour.prompts)
    sae = ReluSAE(lm.info.d_model, 4, hook_layer=LAST)
    with torch.no_grad():
        sae.W_enc[:, 0] = read
        sae.W_enc[:, 1] = read
        sae.b_enc[2:] = -1.0  # features 2, 3 never fire: no information, never chosen
        sae.W_dec[0] = toward_context
        sae.W_dec[1] = -toward_context
    folder = tmp_path_factory.mktemp("twin")
    save_sae(sae, folder / f"resid.{LAST}")
    # the uses-context prompts carry the read direction: both features separate the groups
    shifted = behaviour.hidden[LAST] + torch.as_tensor(behaviour.labels, dtype=torch.float32)[:, None] * 6.0 * read
    data = BehaviourData(behaviour.prompts, behaviour.labels, {LAST: shifted}, behaviour.pool, lm=lm)
    return str(folder / "resid.{layer}"), data


def test_output_score_keeps_only_features_that_push_toward_their_side(lm, twin_sae, tmp_path):
    path, behaviour = twin_sae
    common = dict(layers=(LAST,), sae=path, mi_mass=1.0)
    by_mi = make_method("spare", **common).fit(behaviour)
    by_output = make_method("spare", selection="output_score", **common).fit(behaviour)
    assert sorted(by_mi.selected(LAST)[0].tolist()) == [0, 1]
    assert by_output.selected(LAST)[0].tolist() == [0] and len(by_output.selected(LAST)[1]) == 0
    prompts = behaviour.prompts
    texts = [p.text for p in prompts]
    before = _margin(lm, prompts, _last_logits(lm, texts))

    def steered_margin(method, toward):
        with method.steer(lm, toward, strength=2.0):
            return _margin(lm, prompts, _last_logits(lm, texts))

    # MI alone adds the two opposite features equally: they cancel; the output score keeps the one that helps
    torch.testing.assert_close(steered_margin(by_mi, "context"), before, atol=1e-4, rtol=1e-4)
    assert (steered_margin(by_output, "context") > before + 0.01).all()
    # toward memory the context feature is removed where it is active: the margin falls
    assert float((steered_margin(by_output, "memory") - before).mean()) < 0
    _assert_reloads_to_same_generations(lm, by_output, prompts, tmp_path / "spare")
    assert sparekit.load(tmp_path / "spare").selection == "output_score"
    with pytest.raises(SparekitError, match="selection"):
        make_method("spare", selection="loudest", **common).fit(behaviour)


# -- SpARE, selection="consistent" ----------------------------------------------------------------
def _assert_relation_selection_steers(lm, method, prompts, behaviour, common, tmp_path) -> None:
    """A relation-aware selection steers toward context, reloads to the same generations, and refuses
    behaviour data without relations."""
    texts = [p.text for p in prompts]
    before = _margin(lm, prompts, _last_logits(lm, texts))
    with method.steer(lm, "context", strength=2.0):
        assert (_margin(lm, prompts, _last_logits(lm, texts)) > before + 0.01).all()
    _assert_reloads_to_same_generations(lm, method, prompts, tmp_path / "spare")
    assert sparekit.load(tmp_path / "spare").selection == method.selection
    with pytest.raises(SparekitError, match="at least 2 relations"):
        make_method("spare", selection=method.selection, **common).fit(behaviour)  # no relations at all


def test_consistent_selection_drops_features_whose_side_flips_between_relations(lm, behaviour, tmp_path):
    """Feature 0 marks uses-context in both relations; feature 1 in relation "a" only (in "b" it marks
    memory, less strongly, so pooled MI still ranks it). Both write toward the context answers."""
    torch.manual_seed(1)
    reads = F.normalize(torch.randn(2, lm.info.d_model), dim=1)
    toward_context = _toward_context(lm, behaviour.prompts)
    sae = ReluSAE(lm.info.d_model, 4, hook_layer=LAST)
    with torch.no_grad():
        sae.W_enc[:, :2] = reads.T
        sae.b_enc[2:] = -1.0
        sae.W_dec[0] = sae.W_dec[1] = toward_context
    save_sae(sae, tmp_path / f"resid.{LAST}")
    relation = [("a", "b")[int(p.example.id[1:]) % 2] for p in behaviour.prompts]
    prompts = [SteeringPrompt(ConflictExample(**{**vars(p.example), "relation": r}), p.context, p.demos)
               for p, r in zip(behaviour.prompts, relation)]
    uses_context = torch.as_tensor(behaviour.labels, dtype=torch.float32)[:, None]
    flip = torch.tensor([[3.0] if r == "a" else [-1.0] for r in relation])
    hidden = behaviour.hidden[LAST] + uses_context * (6.0 * reads[0] + 6.0 * flip * reads[1])
    data = BehaviourData(prompts, behaviour.labels, {LAST: hidden}, behaviour.pool, lm=lm)
    common = dict(layers=(LAST,), sae=str(tmp_path / "resid.{layer}"), mi_mass=1.0)
    by_mi = make_method("spare", **common).fit(data)
    consistent = make_method("spare", selection="consistent", **common).fit(data)
    assert sorted(by_mi.selected(LAST)[0].tolist()) == [0, 1]
    assert consistent.selected(LAST)[0].tolist() == [0] and len(consistent.selected(LAST)[1]) == 0
    _assert_relation_selection_steers(lm, consistent, prompts, behaviour, common, tmp_path)


# -- SpARE, selection="within_relation" ----------------------------------------------------------
def test_within_relation_selection_ignores_features_that_only_name_the_relation(lm, behaviour, tmp_path):
    """Relation "a" is mostly uses-context rows, "b" mostly uses-memory ones. Feature 0 marks uses-context
    inside both relations; feature 1 only says "relation a", so pooled MI ranks it high, but within each
    relation it is constant. Both write toward the context answers."""
    reads = torch.eye(lm.info.d_model)[:2]  # two residual coordinates, so "constant" is exact
    sae = ReluSAE(lm.info.d_model, 4, hook_layer=LAST)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, :2] = reads.T
        sae.b_enc[2:] = -1.0
        sae.W_dec[0] = sae.W_dec[1] = _toward_context(lm, behaviour.prompts)
    save_sae(sae, tmp_path / f"resid.{LAST}")
    labels = behaviour.labels
    relation = ["a" if (label == 1) != (i % 8 < 2) else "b" for i, label in enumerate(labels)]  # 6:2 and 2:6
    prompts = [SteeringPrompt(ConflictExample(**{**vars(p.example), "relation": r}), p.context, p.demos)
               for p, r in zip(behaviour.prompts, relation)]
    in_a = torch.tensor([[1.0] if r == "a" else [0.0] for r in relation])
    uses_context = torch.as_tensor(labels, dtype=torch.float32)[:, None]
    base = behaviour.hidden[LAST].clone()
    base[:, :2] = 0.0  # nothing along the reads
    hidden = base + 6.0 * uses_context * reads[0] + 6.0 * in_a * reads[1]
    data = BehaviourData(prompts, labels, {LAST: hidden}, behaviour.pool, lm=lm)
    common = dict(layers=(LAST,), sae=str(tmp_path / "resid.{layer}"), mi_mass=0.9)
    by_mi = make_method("spare", **common).fit(data)
    within = make_method("spare", selection="within_relation", **common).fit(data)
    assert sorted(by_mi.selected(LAST)[0].tolist()) == [0, 1]
    assert within.selected(LAST)[0].tolist() == [0] and len(within.selected(LAST)[1]) == 0
    assert float(within.mi_[LAST][1]) == 0.0 < float(by_mi.mi_[LAST][1])
    _assert_relation_selection_steers(lm, within, prompts, behaviour, common, tmp_path)


def test_within_relation_statistics_skip_a_relation_that_shows_a_behaviour_once():
    """A relation with one row of a behaviour (it crashed the k-NN estimate where both were single) adds nothing:
    the statistics are those of the other relations alone."""
    from sparekit.steering.spare import within_relation_information

    rng = np.random.default_rng(0)
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0] * 2 + [1, 0] + [1, 0, 0, 0, 0])
    relations = ["a"] * 8 + ["b"] * 8 + ["c"] * 2 + ["d"] * 5
    z = torch.as_tensor(rng.normal(size=(len(labels), 6)) + labels[:, None] * np.arange(6), dtype=torch.float32)
    mi, diff = within_relation_information(z, labels, relations, seed=0)
    keep = slice(0, 16)
    mi_ab, diff_ab = within_relation_information(z[keep], labels[keep], relations[keep], seed=0)
    assert np.allclose(mi, mi_ab) and torch.allclose(diff, diff_ab) and mi[5] > mi[0]
    with pytest.raises(SparekitError, match="each at least 2 times"):
        within_relation_information(z[8:], labels[8:], relations[8:], seed=0)  # only "b" has both twice


# -- combinations ---------------------------------------------------------------------------------
def test_combined_labels_parse():
    from sparekit.steering.bench.protocol import method_kind as _kind
    from sparekit.steering.bench.protocol import partner as _partner

    assert _kind("spare+gate+cad") == ("spare", "gate") and _partner("spare+gate+cad") == ("cad", True)
    assert _kind("spare+cad+gate") == ("spare", "gate") and _partner("spare+cad+gate") == ("cad", False)
    assert _kind("spare+adacad") == ("spare", None) and _partner("spare+adacad") == ("adacad", False)
    assert _kind("spare+recall+cad") == ("spare", "recall") and _partner("spare+recall+cad") == ("cad", True)
    assert _kind("spare+cad+recall") == ("spare", "recall") and _partner("spare+cad+recall") == ("cad", False)
    assert _partner("spare+gate") == (None, False) and _partner("cad+recall") == (None, False)
    for bad in ("spare+actadd", "spare+cad+dola", "spare+gate+gate+cad", "spare+gate+recall", "cad+recall+recall"):
        with pytest.raises(SparekitError, match="unknown method variant"):
            _kind(bad)


class _EveryOtherRow(Gate):
    """A gate that fires on rows 0, 2, … of each batch (read at its site, as the conflict probe is)."""

    site = Site(1)

    def fire(self, h: torch.Tensor) -> torch.Tensor:
        return torch.arange(h.shape[0]) % 2 == 0


def test_fallback_decodes_with_the_second_method_where_the_gate_stays_shut(lm, behaviour):
    from sparekit.steering.combined import Combined

    prompts = behaviour.prompts[:4]
    actadd = make_method("actadd", layer=LAST).fit(behaviour)
    cad = make_method("cad").fit(behaviour)
    with pytest.raises(SparekitError, match="decoding time"):
        Combined(cad, actadd)

    def answers(method, strength, gate=None):
        with method.steer(lm, "memory", strength=strength, gate=gate) as steered:
            return steered.generate(prompts, max_new_tokens=4)

    edited, contrasted, plain = answers(actadd, 8.0), answers(cad, 4.0), answers(fitted_without_data("none"), None)
    assert edited != plain and contrasted != plain  # both parts change something here
    fallback = answers(Combined(actadd, cad, second_strength=4.0, fallback=True), 8.0, _EveryOtherRow())
    assert fallback == [edited[i] if i % 2 == 0 else contrasted[i] for i in range(4)]
    both_gated = answers(Combined(actadd, cad, second_strength=4.0), 8.0, _EveryOtherRow())
    assert [both_gated[i] for i in (1, 3)] == [plain[i] for i in (1, 3)]


def test_a_saved_combination_reads_back_as_one_method_that_steers_alike(lm, behaviour, tmp_path):
    from sparekit.steering import Combined, SteeringMethod

    prompts = behaviour.prompts[:4]
    combined = Combined(make_method("actadd", layer=LAST).fit(behaviour), make_method("cad").fit(behaviour),
                        second_strength=4.0, fallback=True)
    with pytest.raises(SparekitError, match="give both parts"):
        Combined(combined.first).save(tmp_path / "half")
    assert not (tmp_path / "half").exists()  # refused before anything is written
    loaded = sparekit.load(combined.save(tmp_path / "both"), expect=SteeringMethod)
    assert isinstance(loaded, Combined) and (loaded.second_strength, loaded.fallback) == (4.0, True)
    assert (loaded.first.kind, loaded.second.kind) == ("actadd", "cad")

    def answers(method):
        with method.steer(lm, "context", strength=8.0, gate=_EveryOtherRow()) as steered:
            return steered.generate(prompts, max_new_tokens=4)

    assert answers(loaded) == answers(combined)
