"""benchmarks/recall_design.py: a closed-book prompt candidate's dev scores, and two candidates OR-ed."""

from __future__ import annotations

import pytest

from benchmark_module import benchmark_module
from sparekit.data import ConflictDataset, ConflictExample
from sparekit.data.formats import prompt_format


@pytest.fixture(scope="module")
def design():
    yield from benchmark_module("recall_design")


def _items(n: int = 8) -> ConflictDataset:
    return ConflictDataset([ConflictExample(id=f"r{i}", question=f"What is x{i}?", org_context=f"x{i} is red.",
                                            org_answer=("red",), sub_context=f"x{i} is blue.", sub_answer=("blue",),
                                            relation=f"rel{i}") for i in range(n)], "d")


def test_a_candidate_is_scored_on_org_and_sub_prompts_and_or_needs_either_answer_named(design):
    items = _items()
    formats = [prompt_format("rag"), prompt_format("zero_shot")]
    # a: the memorised "red" for even items, "green" (named by no context) for odd; b: "red" everywhere
    a = {ex.id: {"closed": "red" if i % 2 == 0 else "green", "p_first": 0.9} for i, ex in enumerate(items)}
    b = {ex.id: {"closed": "red", "p_first": 0.5} for ex in items}
    alone = design.score(items, items, [a], formats)
    assert alone["false_positive"] == 0.5 and alone["found"] == 1.0 and alone["accuracy"] == 0.75
    assert alone["recovered"] == 0.5 and alone["items"] == 8
    either = design.score(items, items, [a, b], formats)
    assert either["accuracy"] == 1.0 and either["recovered"] == 1.0 and either["auroc"] == 1.0
