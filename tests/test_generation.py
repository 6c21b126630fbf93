"""Batched greedy generation (left padding) gives the same answers as one prompt at a time."""

from __future__ import annotations

import random

import pytest

from sparekit.data import load_dataset
from sparekit.data.prompts import build_prompt, sample_demos
from sparekit.evaluation.generation import greedy_generate


def _prompts(n: int) -> list[str]:
    data = load_dataset("default", limit=n, seed=7)
    rng = random.Random(0)
    # mixed lengths (0 to 3 demos, with and without context) so the batch really is padded
    return [build_prompt(ex, ("sub", "org", None)[i % 3], sample_demos(data, ex.group, i % 4, "org_org", rng))
            for i, ex in enumerate(data)]


def test_batched_equals_one_by_one_tiny(tiny_llama):
    prompts = _prompts(6)
    assert greedy_generate(tiny_llama, prompts, batch_size=6) == [
        greedy_generate(tiny_llama, [p], batch_size=1)[0] for p in prompts]


@pytest.mark.slow
def test_batched_equals_one_by_one_default_model(default_lm):
    prompts = _prompts(6)
    assert len({len(default_lm.tokenizer(p).input_ids) for p in prompts}) > 1
    batched = greedy_generate(default_lm, prompts, batch_size=6)
    single = [greedy_generate(default_lm, [p], batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all("\n" not in out for out in batched) and any(batched)


def test_answer_nll_matches_a_teacher_forced_forward():
    """Scoring through generate (batched, left-padded) equals the NLL from one full forward per prompt."""
    import torch

    from sparekit.evaluation.generation import answer_nll
    from sparekit.models.tiny import tiny_model

    lm = tiny_model("llama")
    prompts = ["context: a b\nquestion: c?\nanswer:", "question: dd?\nanswer:", "x"]
    answers = ["Paris", "New York City", "b"]
    batched = answer_nll(lm, prompts, answers, batch_size=3)
    for prompt, answer, got in zip(prompts, answers, batched):
        p = lm.tokenizer(prompt)["input_ids"]
        a = lm.tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = lm.model(torch.tensor([p + a])).logits[0].float()
        log_probs = torch.log_softmax(logits[len(p) - 1:-1], dim=-1)
        expected = -log_probs[torch.arange(len(a)), torch.tensor(a)].mean().item()
        assert abs(got - expected) < 1e-3
