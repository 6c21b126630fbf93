"""SQuAD normalisation, behaviour labels and conditional metrics."""

from __future__ import annotations

import pytest

from sparekit.data import ConflictExample
from sparekit.evaluation.metrics import (answer_source, behaviour_label, conditional_metrics, exact_match,
                                        normalize_answer)

EX = ConflictExample(id="x", question="capital of france", org_context="The capital of France is Paris.",
                     org_answer=("Paris", "Paris, France"), sub_context="The capital of France is São Paulo.",
                     sub_answer=("São Paulo",))


@pytest.mark.parametrize("raw, norm", [
    ("The Beatles", "beatles"),
    ("  an   apple, a pear! ", "apple pear"),
    ("Theatre", "theatre"),
    ("U.S.A.", "usa"),
    ("Café", "cafe\u0301"),
    ("A", ""),
    ("rock-n-roll", "rocknroll"),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match_against_any_alias():
    assert exact_match("the paris", EX.org_answer)
    assert exact_match("Paris France", EX.org_answer)
    assert not exact_match("Paris is the capital", EX.org_answer)
    assert exact_match("sao paulo".replace("a", "a"), ["Sao Paulo"])
    assert not exact_match("Sao Paulo", EX.sub_answer)  # NFD keeps the accent as a combining mark


def test_behaviour_labels_answer_and_substring_rules():
    assert behaviour_label("São Paulo", EX) == "context"
    assert behaviour_label("Paris.", EX) == "memory"
    assert behaviour_label("Lyon", EX) == "other"
    assert behaviour_label("capital", EX) == "other"
    assert behaviour_label("capital of France", EX, context_match="substring") == "context"
    assert behaviour_label("", EX, context_match="substring") == "other"
    assert behaviour_label("Paris", EX, context_match="substring") == "memory"


def test_answer_source_reads_a_sentence_answer_by_the_one_answer_it_names():
    assert answer_source("São Paulo", EX) == "context" and answer_source("Paris.", EX) == "memory"  # as before
    assert answer_source("The capital of France is São Paulo.", EX) == "context"
    assert answer_source("Paris is the capital of France.", EX) == "memory"
    assert answer_source("Not São Paulo but Paris.", EX) == "other"  # both named: no source
    assert answer_source("Parisian food is good.", EX) == "other"  # whole words only
    assert answer_source("Lyon is a city.", EX) == "other"


def test_conditional_metrics():
    before = ["context", "context", "memory", "memory", "memory", "other"]
    after = ["memory", "context", "context", "context", "memory", "memory"]
    m = conditional_metrics(before, after)
    assert m["n_C"] == 2 and m["n_M"] == 3
    assert m["C→M"] == pytest.approx(0.5) and m["C→C"] == pytest.approx(0.5)
    assert m["M→C"] == pytest.approx(2 / 3) and m["M→M"] == pytest.approx(1 / 3)
    assert conditional_metrics(["other"], ["memory"])["C→M"] is None
    with pytest.raises(ValueError):
        conditional_metrics(["context"], [])
