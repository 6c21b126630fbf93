"""KV-cache compression: the intended pairs are evicted, ratio 0 changes nothing, batching changes nothing."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from sparekit.errors import SparekitError
from sparekit.evaluation.generation import tokenize
from sparekit.hooks import cache_keyword
from sparekit.kv import PRESSES, RecentPress, keep_counts, kv_compress, make_press, select_positions
from sparekit.models.loading import from_modules
from sparekit.models.tiny import _DECODER, char_tokenizer, tiny_model

PROMPTS = ["The quick brown fox jumps over the lazy dog near the river bank.", "Short prompt here."]


def hybrid_gemma3(attn: str = "eager"):
    """Tiny Gemma 3 with global layers between its sliding ones, as the real model has."""
    torch.manual_seed(0)
    config = Gemma3TextConfig(**_DECODER, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"] * 2)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    return from_modules(model.float(), char_tokenizer(), name="tiny-gemma3-hybrid")


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def gemma3():
    return hybrid_gemma3()


def generate(lm, prompts, steps=4):
    enc = tokenize(lm, prompts)
    out = lm.model.generate(**enc, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                            pad_token_id=lm.tokenizer.pad_token_id, output_scores=True, return_dict_in_generate=True)
    return out.sequences[:, enc["input_ids"].shape[1]:], torch.stack(out.scores, 1)


def test_exactly_the_intended_pairs_are_dropped(llama):
    """Hand-built keys of known norms in a real cache: per row and head, the lowest norms and the last two survive."""
    enc = tokenize(llama, ["abcdefghi", "abcde"])  # 10 and 6 real tokens with BOS: row 1 has 4 pads
    with torch.inference_mode():
        out = llama.model(**enc, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    batch, heads, length, dim = cache.layers[2].keys.shape
    norms = torch.stack([torch.randperm(length, generator=torch.Generator().manual_seed(i)).float() + 1
                         for i in range(batch * heads)]).view(batch, heads, length)
    for layer in range(4):
        cache.layers[layer].keys = norms[..., None] * torch.nn.functional.one_hot(torch.tensor(0), dim).float()
        cache.layers[layer].values = torch.arange(length).float().view(1, 1, length, 1).expand(batch, heads, length, dim).clone()
    mask = torch.cat([enc["attention_mask"], torch.ones(batch, 1, dtype=torch.long)], dim=1)
    step = {"input_ids": torch.tensor([[5], [5]]), "attention_mask": mask, "position_ids": mask.sum(1, keepdim=True) - 1,
            cache_keyword(llama.model): cache}
    with kv_compress(llama, ratio=0.5, method="l2", skip_layers=(0,), min_length=0, keep_last=2) as kv, \
            torch.inference_mode():
        llama.model(**step, use_cache=True)
    assert cache.layers[0].keys.shape[2] == length + 1  # skipped layer: untouched
    first_real = [0, 4]
    keep = [5, 3]  # 10 - floor(0.5 * 10) and 6 - floor(0.5 * 6)
    for layer in (1, 2, 3):
        assert cache.layers[layer].keys.shape[2] == max(keep) + 1
        kept_tags = cache.layers[layer].values[..., 0]
        for row in range(batch):
            for head in range(heads):
                real = torch.arange(first_real[row], length)
                candidates = real[:-2]
                lowest = candidates[norms[row, head, candidates].argsort()[: keep[row] - 2]]
                expected = sorted(lowest.tolist() + [length - 2, length - 1])
                got = kept_tags[row, head, max(keep) - keep[row]: max(keep)].long().tolist()
                assert got == expected, (layer, row, head)
    per_position = 2 * heads * dim * 4
    assert kv.kv_bytes_uncompressed == 4 * batch * length * per_position
    assert kv.kv_bytes == batch * (length + 3 * max(keep)) * per_position


def test_select_positions_recent_and_filler():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    keys = torch.randn(2, 1, 6, 4)
    keep = keep_counts(mask.sum(1), 0.5, min_length=0, keep_last=1)
    assert keep.tolist() == [3, 2]
    index, valid = select_positions(RecentPress().scores(keys, mask, None), mask, keep, keep_last=1)
    assert index[0, 0].tolist() == [3, 4, 5]
    assert index[1, 0, 1:].tolist() == [4, 5] and valid.tolist() == [[True] * 3, [False, True, True]]
    assert keep_counts(torch.tensor([5, 200]), 0.9, min_length=100, keep_last=8).tolist() == [5, 20]


@pytest.mark.parametrize("which", ["llama", "gemma3"])
def test_ratio_zero_is_bit_identical(which, llama, gemma3):
    lm = llama if which == "llama" else gemma3
    tokens, scores = generate(lm, PROMPTS)
    with kv_compress(lm, ratio=0.0, min_length=0):
        tokens0, scores0 = generate(lm, PROMPTS)
    assert torch.equal(tokens, tokens0) and torch.equal(scores, scores0)


def test_ratio_zero_is_bit_identical_with_sdpa():
    lm = hybrid_gemma3("sdpa")
    tokens, scores = generate(lm, PROMPTS)
    with kv_compress(lm, ratio=0.0, min_length=0):
        tokens0, scores0 = generate(lm, PROMPTS)
    assert torch.equal(tokens, tokens0) and torch.equal(scores, scores0)


@pytest.mark.parametrize("method", sorted(PRESSES))
@pytest.mark.parametrize("which", ["llama", "gemma3"])
def test_batched_equals_unbatched(which, method, llama, gemma3):
    lm = llama if which == "llama" else gemma3
    plain, _ = generate(lm, PROMPTS)
    with kv_compress(lm, ratio=0.6, method=method, skip_layers=(0,), min_length=0, keep_last=2) as kv:
        tokens, scores = generate(lm, PROMPTS)
        assert kv.kv_bytes < kv.kv_bytes_uncompressed
        for row, prompt in enumerate(PROMPTS):
            alone, alone_scores = generate(lm, [prompt])
            assert torch.equal(tokens[row], alone[0])
            torch.testing.assert_close(scores[row], alone_scores[0], atol=1e-5, rtol=1e-5)
    if which == "llama":
        assert not torch.equal(plain, tokens)  # it did change what the model saw


@pytest.mark.parametrize("kwargs", [{"ratio": 1.0}, {"ratio": -0.1}, {"ratio": "0.5"}, {"method": "kmeans"},
                                    {"skip_layers": (4,)}, {"keep_last": -1}])
def test_bad_input_is_one_clear_error(llama, kwargs):
    with pytest.raises(SparekitError):
        with kv_compress(llama, **kwargs):
            pass


def test_scoring_a_continuation_through_a_pruned_cache(gemma3):
    """Several new tokens in one call (perplexity scoring): ratio 0 is bit-identical, batching changes nothing."""
    from sparekit.kv.bench import KVBenchConfig, _perplexity

    windows = [[1] + list(range(10, 40)), [1] + list(range(40, 70))]
    config = KVBenchConfig(ratios=(0.0, 0.5), methods=("l2", "snapkv"), ppl_tokens=6, min_length=0, batch_size=2)
    batched = _perplexity(gemma3, windows, config)
    alone = [_perplexity(gemma3, [w], config) for w in windows]
    for method in config.methods:
        nll = batched[method]["0.5"]["nll"]
        assert nll == pytest.approx(sum(a[method]["0.5"]["nll"] for a in alone) / 2, rel=1e-5)
        assert batched[method]["0.5"]["kv_ratio"] < 1
    with kv_compress(gemma3, ratio=0.0, min_length=0):
        compressed0 = _perplexity(gemma3, windows, KVBenchConfig(ratios=(0.0,), ppl_tokens=6))
    assert compressed0["none"]["0"]["nll"] == batched["l2"]["0"]["nll"]


@pytest.mark.parametrize("args", [["kv", "bench", "--methods", "kmeans"], ["kv", "bench", "--ratios", "0,1"],
                                  ["kv", "conflict", "--methods", "l2,x"]])
def test_cli_rejects_bad_input(args, capsys):
    from sparekit.cli.main import main

    assert main(args) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_bench_resumes_from_its_parts(llama, tmp_path, monkeypatch):
    from sparekit.kv import bench

    config = bench.KVBenchConfig(tasks=("passkey",), lengths=(32,), ratios=(0.0, 0.5), methods=("l2",), items=1,
                                 min_length=0)
    first = bench.run_bench(llama, config, tmp_path, passages=[])
    assert set(first["results"]["passkey"]["32"]["l2"]) == {"0", "0.5"}
    monkeypatch.setattr(bench, "_retrieval", lambda *a, **k: pytest.fail("a finished part was recomputed"))
    assert bench.run_bench(llama, config, tmp_path, passages=[])["results"] == first["results"]


def test_presses_are_registered_objects_checked_when_built():
    """Methods are presses by name; a duplicate name, an unknown one or an option a press lacks is refused."""
    from sparekit.kv import L2Press, Press, RandomPress, make_press, register_press

    assert set(PRESSES) >= {"l2", "l2-inverse", "random", "recent"} and PRESSES["l2"] is L2Press
    assert make_press("random", ratio=0.25, seed=3) == RandomPress(ratio=0.25, seed=3)
    assert hash(make_press("l2", skip_layers=[0])) == hash(L2Press(skip_layers=(0,)))  # a list from a file is frozen
    with pytest.raises(RuntimeError, match="registered twice"):
        register_press("l2")(type("Other", (Press,), {}))
    with pytest.raises(SparekitError, match="takes no option seed"):
        make_press("l2", seed=1)
    with pytest.raises(SparekitError, match="unknown KV compression method"):
        make_press("kmeans")


@pytest.mark.parametrize("method, options", [("l2", {"ratio": 1.0}), ("l2", {"ratio": True}),
                                             ("l2", {"skip_layers": (-1,)}), ("l2", {"skip_layers": 1}),
                                             ("l2", {"min_length": 1.5}),
                                             ("l2", {"keep_first": -1}), ("l2", {"keep_first": (3, 1.5)}),
                                             ("recent", {"sinks": -1}), ("random", {"seed": "x"}),
                                             ("snapkv", {"kernel": 4}), ("snapkv", {"window": 0})])
def test_bad_press_options_are_one_line_errors(method, options):
    from sparekit.kv import make_press

    with pytest.raises(SparekitError) as info:
        make_press(method, **options)
    assert "\n" not in str(info.value)


def test_keep_first_is_one_count_or_one_per_row_of_the_batch():
    assert make_press("l2", keep_first=[3, 1]).first_counts(2).tolist() == [3, 1]  # a list from a file is frozen
    assert make_press("l2", keep_first=2).first_counts(3).tolist() == [2, 2, 2]
    with pytest.raises(SparekitError, match="3 counts for a batch of 2"):
        make_press("l2", keep_first=(1, 2, 3)).first_counts(2)


def test_press_applied_as_a_context_equals_kv_compress(llama):
    """``with press(lm):`` around a plain ``generate`` is the by-name ``kv_compress``, and ``press(lm.model)``."""
    from sparekit.kv import L2Press

    press = L2Press(ratio=0.6, skip_layers=(0,), min_length=0, keep_last=2)
    with press(llama) as kv:
        tokens, scores = generate(llama, PROMPTS)
    with kv_compress(llama, "l2", ratio=0.6, skip_layers=(0,), min_length=0, keep_last=2) as by_name:
        tokens2, scores2 = generate(llama, PROMPTS)
    assert torch.equal(tokens, tokens2) and torch.equal(scores, scores2)
    assert kv.kv_bytes == by_name.kv_bytes < kv.kv_bytes_uncompressed
    with press(llama.model) as bare:  # the Hugging Face model alone, as kvpress takes it
        tokens3, scores3 = generate(llama, PROMPTS)
    assert torch.equal(tokens, tokens3) and torch.equal(scores, scores3) and bare.kv_bytes == kv.kv_bytes


def test_recent_keeps_its_sinks():
    """StreamingLLM: the first ``sinks`` real positions of each row survive beside the most recent ones."""
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    keys = torch.randn(2, 1, 8, 4)
    keep = keep_counts(mask.sum(1), 0.5, min_length=0, keep_last=1)
    index, valid = select_positions(RecentPress(sinks=2).scores(keys, mask, None), mask, keep, keep_last=1)
    assert index[0, 0].tolist() == [0, 1, 6, 7]
    assert index[1, 0, valid[1]].tolist() == [2, 3, 7]


def test_recent_sinks_is_streamingllm_by_name():
    """``recent-sinks`` is ``recent`` with 4 sinks (a grid passes no ``sinks``): the first 4 real positions of each
    row of a padded batch survive beside the window, which a plain ``recent`` evicts."""
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, :3] = False
    keys = torch.randn(2, 2, 16, 4)
    press = make_press("recent-sinks", ratio=0.5, min_length=0, keep_last=2)
    assert press.sinks == 4 and isinstance(press, RecentPress)
    keep = keep_counts(mask.sum(1), press.ratio, press.min_length, press.keep_last)
    expected = {"recent-sinks": [[0, 1, 2, 3, 12, 13, 14, 15], [3, 4, 5, 6, 13, 14, 15]],
                "recent": [list(range(8, 16)), list(range(9, 16))]}
    for method, rows in expected.items():
        scores = make_press(method, ratio=0.5).scores(keys, mask, None)
        index, valid = select_positions(scores, mask, keep, keep_last=2)
        for row, kept in enumerate(rows):
            assert index[row, :, valid[row]].tolist() == [kept, kept]


def test_kv_conflict_honours_its_seed(monkeypatch):
    """The seed picks the items and their demonstrations (it was fixed at 42 for the demonstrations)."""
    from sparekit.kv import experiment

    seen = []

    def condition_prompts(data, condition, seed, k_shot):
        seen.append((condition, seed, k_shot))
        raise KeyboardInterrupt  # stop before the model loads

    monkeypatch.setattr(experiment, "condition_prompts", condition_prompts)
    with pytest.raises(KeyboardInterrupt):
        experiment.KVConflictExperiment(seed=7, k_shot=2, limit=4).run()
    assert seen == [("sub", 7, 2)]


def test_kv_commands_are_config_dataclasses(capsys):
    """Options come from the experiment's fields; --dry-run shows what would run, conflict compresses every passage."""
    import json

    from sparekit.cli.main import main

    assert main(["kv", "conflict", "--seed", "5", "--methods", "l2,recent", "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["seed"] == 5 and config["methods"] == ["l2", "recent"] and config["min_length"] == 0
    assert "tasks" not in config and "items" not in config
    assert main(["kv", "bench", "--ppl-tokens", "32", "--lengths", "256", "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["ppl_tokens"] == 32 and config["lengths"] == [256] and config["min_length"] == 128


def test_snapkv_scores_are_the_window_attention_the_model_computes(llama):
    """Without pooling, snapkv's score is minus the attention the last ``window`` queries give each key,
    as the model's own (eager) attention weights say, averaged over the query heads of a KV head."""
    from sparekit.hooks import Hooks, Site
    from sparekit.kv import SnapKVPress

    press = SnapKVPress(window=3, kernel=1, min_length=0)
    enc = tokenize(llama, PROMPTS)  # row 1 is left-padded
    observed = {}
    hooks = Hooks(llama).intercept(Site(2, "attn"), lambda m, a, k: observed.update({2: press.observe(m, a, k)}))
    with hooks, torch.inference_mode():
        out = llama.model(**enc, use_cache=True, output_attentions=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    scores = press.scores(cache.layers[2].keys, enc["attention_mask"].bool(), observed[2])
    heads, kv_heads = out.attentions[2].shape[1], scores.shape[1]
    expected = -out.attentions[2][:, :, -3:].mean(2).view(2, kv_heads, heads // kv_heads, -1).mean(2)
    real = enc["attention_mask"].bool()
    real[:, -3:] = False  # the window is always kept
    torch.testing.assert_close(scores[real[:, None].expand_as(scores)], expected[real[:, None].expand_as(expected)])
    assert (scores[..., -3:].amax(-1) < scores[..., :-3].amin(-1)).all()  # the window ranks first


def test_snapkv_keeps_the_protected_positions_when_its_window_exceeds_the_budget(llama):
    """A budget under the window keeps the last ``keep_last`` and first ``keep_first`` positions, then the
    window's most attended ones (the window no longer ties with the protected positions and loses them)."""
    from sparekit.hooks import Hooks, Site
    from sparekit.kv import SnapKVPress

    press = SnapKVPress(ratio=0.9, window=32, kernel=1, min_length=0, keep_last=2, keep_first=1)
    enc = tokenize(llama, PROMPTS[:1])
    observed = {}
    hooks = Hooks(llama).intercept(Site(2, "attn"), lambda m, a, k: observed.update({2: press.observe(m, a, k)}))
    with hooks, torch.inference_mode():
        cache = llama.model(**enc, use_cache=True).past_key_values
    mask = enc["attention_mask"].bool()
    seq = mask.shape[1]
    keep = keep_counts(mask.sum(-1), press.ratio, press.min_length, press.keep_last, 1)
    assert int(keep[0]) < 32
    scores = press.scores(cache.layers[2].keys, mask, observed[2])
    index, _ = select_positions(scores, mask, keep, press.keep_last, 1)
    for kept in index[0].tolist():
        assert kept[0] == 0 and kept[-2:] == [seq - 2, seq - 1] and min(kept[1:]) >= seq - 32


def test_snapkv_keeps_what_the_window_reads_whatever_the_batch(llama):
    """A query-aware press needs the prompt pass inside it; batching changes nothing, and it differs from l2."""
    from sparekit.kv import SnapKVPress

    press = SnapKVPress(ratio=0.6, window=4, skip_layers=(0,), min_length=0, keep_last=2)
    with press(llama) as kv:
        tokens, scores = generate(llama, PROMPTS)
        alone = [generate(llama, [prompt]) for prompt in PROMPTS]
    for row, (alone_tokens, alone_scores) in enumerate(alone):
        assert torch.equal(tokens[row], alone_tokens[0])
        torch.testing.assert_close(scores[row], alone_scores[0], atol=1e-5, rtol=1e-5)
    assert kv.kv_bytes < kv.kv_bytes_uncompressed
    with kv_compress(llama, "l2", ratio=0.6, skip_layers=(0,), min_length=0, keep_last=2):
        l2_tokens, l2_scores = generate(llama, PROMPTS)
    assert not torch.equal(scores, l2_scores)


def test_snapkv_refuses_attention_it_cannot_read():
    """GPT-2 has no q_proj and no rotary embedding: one clear error, not an AttributeError mid-generate."""
    from sparekit.kv import SnapKVPress

    gpt2 = tiny_model("gpt2")
    with pytest.raises(SparekitError, match="snapkv reads rotary attention"):
        with SnapKVPress(ratio=0.5, min_length=0, skip_layers=())(gpt2):
            generate(gpt2, PROMPTS[:1])
