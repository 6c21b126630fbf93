"""The shared hook mechanism on every supported architecture and on the default model."""

from __future__ import annotations

import pytest
import torch

from sparekit.errors import SparekitError
from sparekit.hooks import Hooks, Site, last_token_index
from sparekit.evaluation.generation import tokenize

PROMPTS = ["the capital of france is", "hi", "context: water boils at 100\nanswer:"]


def _hidden_states(lm, prompts):
    enc = tokenize(lm, prompts)
    with torch.no_grad():
        out = lm.model(**enc, output_hidden_states=True)
    return enc, out.hidden_states


@pytest.mark.parametrize("positions", ["last", "all"])
def test_capture_equals_output_hidden_states(tiny_lm, positions):
    enc, hidden = _hidden_states(tiny_lm, PROMPTS)
    sites = [Site(layer) for layer in range(tiny_lm.info.n_layers)]
    hooks = Hooks(tiny_lm)
    for site in sites:
        hooks.capture(site, positions=positions)
    with hooks, torch.no_grad():
        tiny_lm.model(**enc)
    last = last_token_index(enc["attention_mask"], len(PROMPTS), enc["input_ids"].shape[1], "cpu")
    rows = torch.arange(len(PROMPTS))
    # hidden_states[L+1] is block L's output, except the very last entry, which HF
    # returns after the final norm: compare the blocks below the top exactly.
    for site in sites[:-1]:
        expected = hidden[site.layer + 1]
        expected = expected[rows, last] if positions == "last" else expected
        torch.testing.assert_close(hooks[site], expected, rtol=0, atol=0)


def test_last_position_is_last_real_token_for_left_and_right_padding(tiny_llama):
    lm = tiny_llama
    site = Site(1)
    single = []
    for prompt in PROMPTS:
        with Hooks(lm).capture(site) as hooks, torch.no_grad():
            lm.model(**tokenize(lm, [prompt]))
        single.append(hooks[site][0])
    for side in ("left", "right"):
        lm.tokenizer.padding_side = side
        try:
            with Hooks(lm).capture(site) as hooks, torch.no_grad():
                lm.model(**tokenize(lm, PROMPTS))
        finally:
            lm.tokenizer.padding_side = "left"
        for i, expected in enumerate(single):
            torch.testing.assert_close(hooks[site][i], expected, rtol=1e-5, atol=1e-5)


def test_last_token_index_is_computed_once_per_model_call(tiny_llama, monkeypatch):
    """Every hook of one forward shares the row/column index; a new call (other padding) gets a new one."""
    import sparekit.hooks.core as core

    calls = []
    monkeypatch.setattr(core, "last_token_index", lambda *a: calls.append(a) or last_token_index(*a))
    hooks = Hooks(tiny_llama)
    for layer in range(tiny_llama.info.n_layers):
        hooks.capture(Site(layer))
    hooks.edit(Site(0, "mlp"), lambda h: h + 1.0)
    with hooks, torch.no_grad():
        tiny_llama.model(**tokenize(tiny_llama, PROMPTS))
        tiny_llama.model(**tokenize(tiny_llama, PROMPTS[:2]))
    assert len(calls) == 2
    # the second call's shorter batch was indexed with its own mask: same as a fresh context on it alone
    with Hooks(tiny_llama).capture(Site(1)) as alone, torch.no_grad():
        tiny_llama.model(**tokenize(tiny_llama, PROMPTS[:2]))
    edited_alone = Hooks(tiny_llama).capture(Site(1)).edit(Site(0, "mlp"), lambda h: h + 1.0)
    with edited_alone, torch.no_grad():
        tiny_llama.model(**tokenize(tiny_llama, PROMPTS[:2]))
    torch.testing.assert_close(hooks.all(Site(1))[-1], edited_alone[Site(1)], rtol=0, atol=0)
    assert not torch.equal(alone[Site(1)], edited_alone[Site(1)])


@pytest.mark.parametrize("component", ["resid", "attn", "mlp"])
def test_edit_changes_only_target_positions_and_later_layers(tiny_lm, component):
    enc = tokenize(tiny_lm, PROMPTS)
    sites = [Site(layer) for layer in range(tiny_lm.info.n_layers)]
    edit_layer = 1

    def run(with_edit: bool) -> Hooks:
        hooks = Hooks(tiny_lm)
        if with_edit:  # declared first, so the capture at the same block sees the edited output
            hooks.edit(Site(edit_layer, component), lambda h: h + 10.0, positions="last")
        for site in sites:
            hooks.capture(site, positions="all")
        with hooks, torch.no_grad():
            tiny_lm.model(**enc)
        return hooks

    clean, edited = run(False), run(True)
    # Left padding: the last prompt token is the final position of every row. Pad
    # positions attend to nothing real and may move; every real earlier token must not.
    earlier_real = enc["attention_mask"][:, :-1].bool()
    for site in sites:
        before, after = clean[site], edited[site]
        assert torch.equal(before[:, :-1][earlier_real], after[:, :-1][earlier_real]), f"earlier tokens changed at {site}"
        changed = not torch.equal(before[:, -1], after[:, -1])
        assert changed == (site.layer >= edit_layer), f"{site}: changed={changed}"


def test_early_stop_gives_same_activations_and_skips_upper_layers(tiny_llama):
    lm = tiny_llama
    enc = tokenize(lm, PROMPTS)
    full = Hooks(lm).capture(Site(1)).capture(Site(3))
    with full, torch.no_grad():
        lm.model(**enc)
    calls = []
    top = lm.model.get_submodule(lm.info.module_path(3, "resid"))
    handle = top.register_forward_hook(lambda *a: calls.append(1))
    try:
        stopped = Hooks(lm).capture(Site(1)).stop_after_captures()
        with stopped, torch.no_grad():
            result = lm.model(**enc)
            pytest.fail(f"forward should have stopped, returned {type(result)}")
    finally:
        handle.remove()
    assert calls == []
    torch.testing.assert_close(stopped[Site(1)], full[Site(1)], rtol=0, atol=0)


def _all_hooks(model) -> set[int]:
    """Ids of every forward (pre-)hook; HF installs its own output recorders lazily."""
    return {id(h) for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())}


def test_hooks_removed_after_error(tiny_llama):
    lm = tiny_llama
    before = _all_hooks(lm.model)

    def boom(h):
        raise ValueError("boom")

    with pytest.raises(ValueError), Hooks(lm).edit(Site(0), boom), torch.no_grad():
        lm.model(**tokenize(lm, PROMPTS))
    assert _all_hooks(lm.model) == before


def test_generate_prompt_pass_only_vs_every_step(tiny_llama):
    lm = tiny_llama
    enc = tokenize(lm, PROMPTS[:2])
    seen = {"prompt": [], "always": []}

    def recorder(key):
        def fn(h):
            seen[key].append(h.shape)
            return h
        return fn

    hooks = Hooks(lm).edit(Site(0), recorder("prompt"), when="prompt").edit(Site(0), recorder("always"), when="always")
    with hooks, torch.no_grad():
        lm.model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert len(seen["prompt"]) == 1
    assert len(seen["always"]) == 4  # the prompt pass and three decoding steps


def test_prompt_pass_edit_changes_generation_only_through_prompt(tiny_llama):
    lm = tiny_llama
    enc = tokenize(lm, PROMPTS[:2])
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        clean = lm.model.generate(**enc, **kwargs)
        with Hooks(lm).edit(Site(0), lambda h: h * 0 + 5.0):
            steered = lm.model.generate(**enc, **kwargs)
    assert not torch.equal(clean, steered)


def test_bad_sites_raise_clear_errors(tiny_llama):
    with pytest.raises(SparekitError, match="out of range"):
        Hooks(tiny_llama).capture(Site(99))
    with pytest.raises(SparekitError, match="unknown component"):
        Site(1, "ffn")  # type: ignore[arg-type]
    with pytest.raises(SparekitError, match="cannot parse"):
        Site.parse("mlp.x")
    assert Site.parse("mlp.3") == Site(3, "mlp") and Site.parse("4") == Site(4)


@pytest.mark.slow
def test_default_model_capture_matches_hidden_states_and_batches(default_lm):
    lm = default_lm
    enc, hidden = _hidden_states(lm, PROMPTS)
    sites = [Site(layer) for layer in (0, 6, 8, 16)]
    hooks = Hooks(lm)
    for site in sites:
        hooks.capture(site)
    with hooks, torch.no_grad():
        lm.model(**enc)
    for site in sites:
        torch.testing.assert_close(hooks[site], hidden[site.layer + 1][:, -1], rtol=0, atol=0)
    # batched with padding == one prompt at a time
    for i, prompt in enumerate(PROMPTS):
        with Hooks(lm).capture(Site(8)).stop_after_captures() as single, torch.no_grad():
            lm.model(**tokenize(lm, [prompt]))
        torch.testing.assert_close(single[Site(8)][0], hooks[Site(8)][i], rtol=1e-4, atol=1e-2)
