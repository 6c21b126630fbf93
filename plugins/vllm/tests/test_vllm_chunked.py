"""The plugin under chunked prefill and prefix caching, on a real vLLM engine (CPU, the default model).

``max_num_batched_tokens`` is far below a prompt's length, so every prompt is split across steps and only
its last chunk holds the token sparekit reads and edits; 32-token KV blocks let prompts hit the prefix
cache (the demonstrations every prompt shares, and whole prompts asked again). Answers and readings are
compared with the unchunked engine of ``test_vllm_engine.py`` when it ran first in the same session
(``scripts/test_vllm.sh`` runs both), and with the built-in engine's reference always.
"""

from __future__ import annotations

import pytest
from vllm_helpers import NEEDS, agreement, engine_with_plugin, generate, load_reference, settings, steer_of, take

from sparekit_vllm.options import Plan

pytestmark = NEEDS
CHUNK, BLOCK = 48, 32
STEERED_N = 24  # prompts per steered setting (all of them for unsteered answers and readings)


@pytest.fixture(scope="module")
def reference() -> dict:
    return load_reference()


@pytest.fixture(scope="module")
def engine(reference):
    yield from engine_with_plugin(reference, max_num_seqs=8, enable_chunked_prefill=True,
                                  max_num_batched_tokens=CHUNK, enable_prefix_caching=True, block_size=BLOCK)


def tokens(outputs: list) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


def compare(key: str, got: list, reference: dict, observed: dict) -> float:
    """Agreement with the unchunked engine (token ids) where it ran, else with the builtin engine (text)."""
    n = len(got)
    builtin = agreement([o.outputs[0].text for o in got], reference["answers"][key][:n])
    unchunked = agreement(tokens(got), observed[key][:n]) if key in observed else None
    print(f"\nchunked {key}: {builtin:.0%} of {n} identical to the builtin engine"
          + ("" if unchunked is None else f", {unchunked:.0%} token-identical to unchunked vLLM"))
    return builtin if unchunked is None else unchunked


def test_every_prompt_is_split_into_chunks(engine, reference):
    _, plain = engine
    lengths = [len(o.prompt_token_ids) for o in plain]
    assert min(lengths) > 2 * CHUNK  # at least three steps each: the last prompt token is in the last chunk


def test_chunked_answers_equal_the_unchunked_ones(engine, reference, observed):
    llm, plain = engine
    rates = {"none": compare("none", plain, reference, observed)}
    prompts = reference["prompts"][:STEERED_N]
    for key in settings(reference):
        plans = [Plan(f"c-{key}{i}", steer=steer_of(reference, key)) for i in range(len(prompts))]
        rates[key] = compare(key, generate(llm, prompts, plans, reference["max_tokens"]), reference, observed)
    assert min(rates.values()) >= (1.0 if observed else 0.9)


def test_chunked_readings_equal_the_unchunked_ones(engine, reference, observed):
    llm, _ = engine
    n = len(reference["prompts"])
    outs = generate(llm, reference["prompts"], [Plan(f"c-detect{i}", detect=True) for i in range(n)], 1)
    assert all(o.num_cached_tokens > 0 for o in outs)  # the shared demonstrations came from the prefix cache
    readings = [take(llm, f"c-detect{i}")["probes"] for i in range(n)]
    keys = ("conflict_probability", "context_probability")
    to_builtin = max(abs(r[k] - e[k]) for r, e in zip(readings, reference["detect"], strict=True) for k in keys)
    to_unchunked = (max(abs(r[k] - e[k]) for r, e in zip(readings, observed["detect"], strict=True) for k in keys)
                    if "detect" in observed else None)
    print(f"\nchunked readings: largest gap {to_builtin:.2e} to sparekit detect"
          + ("" if to_unchunked is None else f", {to_unchunked:.2e} to unchunked vLLM"))
    assert to_builtin <= 0.02 and (to_unchunked is None or to_unchunked <= 1e-4)


def test_a_batch_mixing_cached_and_uncached_prompts_equals_each_alone(engine, reference):
    llm, _ = engine
    steers = [None] + [steer_of(reference, k) for k in settings(reference)]
    seen = reference["prompts"][:4]  # whole prompts asked before: cached up to their last block
    fresh = [f"Note {i}: answer in one word.\n{p}" for i, p in enumerate(reference["prompts"][4:8])]  # new first block
    prompts = [p for pair in zip(seen, fresh) for p in pair]
    plans = [Plan(f"m{i}", detect=i % 3 == 0, steer=steers[i % len(steers)]) for i in range(len(prompts))]
    together = generate(llm, prompts, plans, reference["max_tokens"])
    cached = [o.num_cached_tokens for o in together]
    assert all(c > 0 for c in cached[::2]) and all(c == 0 for c in cached[1::2]), cached
    readings = {p.key: take(llm, p.key)["probes"] for p in plans if p.detect}
    for prompt, plan, out in zip(prompts, plans, together, strict=True):
        alone = generate(llm, [prompt], [Plan(plan.key + "-alone", plan.detect, plan.gate, plan.steer)],
                         reference["max_tokens"])[0]
        assert alone.num_cached_tokens > 0  # asked again: now every prompt hits the cache
        assert list(alone.outputs[0].token_ids) == list(out.outputs[0].token_ids), plan
        if plan.detect:
            solo = take(llm, plan.key + "-alone")["probes"]["conflict_probability"]
            assert solo == pytest.approx(readings[plan.key]["conflict_probability"], abs=1e-4)
