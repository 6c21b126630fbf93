"""Prompt format and demonstrations drawn from other question groups."""

from __future__ import annotations

import random

import pytest

from sparekit.data import load_dataset
from sparekit.data.prompts import FLAVOURS, build_prompt, demo_block, format_block, sample_demos
from sparekit.errors import SparekitError


@pytest.fixture(scope="module")
def nqswap(nqswap_path):
    return load_dataset(str(nqswap_path), limit=400, seed=0)


def test_block_format():
    assert format_block("q?", "ctx", "a") == "context: ctx\nquestion: q?\nanswer: a\n\n"
    assert format_block("q?", None, "a") == "question: q?\nanswer: a\n\n"
    assert format_block("q?", "ctx") == "context: ctx\nquestion: q?\nanswer:"


def test_flavours_pick_context_and_answer(nqswap):
    ex = nqswap[0]
    assert demo_block(ex, "sub_sub") == format_block(ex.question, ex.sub_context, ex.sub_answer[0])
    assert demo_block(ex, "sub_org") == format_block(ex.question, ex.sub_context, ex.org_answer[0])
    assert demo_block(ex, "org_org") == format_block(ex.question, ex.org_context, ex.org_answer[0])
    assert demo_block(ex, "closed") == format_block(ex.question, None, ex.org_answer[0])
    with pytest.raises(SparekitError):
        demo_block(ex, "nope")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_demos_never_come_from_the_test_group(nqswap, flavour):
    rng = random.Random(0)
    for ex in nqswap:
        demos = sample_demos(nqswap, ex.group, 3, flavour, rng)
        assert len(demos) == 3
        questions = [d.split("question: ", 1)[1].split("\n", 1)[0] for d in demos]
        assert ex.question not in questions and len(set(questions)) == 3


def test_demos_are_seeded(nqswap):
    ex = nqswap[5]
    a = sample_demos(nqswap, ex.group, 3, "org_org", random.Random(42))
    b = sample_demos(nqswap, ex.group, 3, "org_org", random.Random(42))
    c = sample_demos(nqswap, ex.group, 3, "org_org", random.Random(43))
    assert a == b != c


def test_build_prompt_ends_at_answer(nqswap):
    ex = nqswap[0]
    demos = sample_demos(nqswap, ex.group, 2, "sub_sub", random.Random(0))
    prompt = build_prompt(ex, "sub", demos)
    assert prompt.startswith(demos[0] + demos[1]) and prompt.endswith(f"question: {ex.question}\nanswer:")
    assert ex.sub_context in prompt.split(demos[1], 1)[1]
    assert build_prompt(ex, None, []) == f"question: {ex.question}\nanswer:"
    with pytest.raises(SparekitError, match="other question groups"):
        sample_demos(nqswap[:1], ex.group, 1, "closed", random.Random(0))
