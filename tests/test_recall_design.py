"""benchmarks/recall_design.py: a closed-book prompt candidate's dev scores, and two candidates OR-ed."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark_module import benchmark_module
from sparekit.data import ConflictDataset, ConflictExample
from sparekit.data.formats import prompt_format
from sparekit.evaluation.generation import greedy_generate


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
    every = np.ones(len(items), bool)
    # a: the memorised "red" for even items, "green" (named by no context) for odd; b: "red" everywhere
    a = {ex.id: {"closed": "red" if i % 2 == 0 else "green", "p_first": 0.9, "log_probs": []}
         for i, ex in enumerate(items)}
    b = {ex.id: {"closed": "red", "p_first": 0.5, "log_probs": []} for ex in items}
    alone = design.score(items, [a], design.unrecalled_rows(items, items, [a], formats), every)
    assert alone["false_positive"] == 0.5 and alone["found"] == 1.0 and alone["accuracy"] == 0.75
    assert alone["recovered"] == 0.5 and alone["items"] == 8
    either = design.score(items, [a, b], design.unrecalled_rows(items, items, [a, b], formats), every)
    assert either["accuracy"] == 1.0 and either["recovered"] == 1.0 and either["auroc"] == 1.0
    first = design.score(items, [a], design.unrecalled_rows(items, items, [a], formats), np.arange(8) % 2 == 0)
    assert first["items"] == 4 and first["false_positive"] == 0.0 and first["recovered"] == 1.0


def test_a_floor_silences_unsure_answers_and_each_rule_scores_above_half_where_it_fires(design):
    value = np.array([[1.0, 1.0, 0.0, 0.0, 1.0]])
    conf = np.array([0.9, 0.2, 0.9, 0.2, 0.4])
    for rule in ("spread", "ranked"):
        fired, scores = design.floored_score(value, conf, 0.3, rule)
        assert fired.tolist() == [[1.0, 0.0, 0.0, 0.0, 1.0]] and ((scores > 0.5) == (fired == 1)).all()
        assert design.floored_score(value, conf, 0.0, rule)[1] == pytest.approx(design.recall_score(value, conf))
    ranked = design.floored_score(value, conf, 0.3, "ranked")[1][0]
    assert ranked[1] == pytest.approx(0.5 * 0.2 / 0.3) and ranked[4] == pytest.approx(0.5 + 0.5 * 0.1 / 0.7)


def test_a_confidence_reads_the_answers_tokens(design):
    row = {"p_first": 0.5, "log_probs": [np.log(0.5), np.log(0.125)]}
    assert design.confidence(row, "first") == 0.5 and design.confidence(row, "min") == pytest.approx(0.125)
    assert design.confidence(row, "mean") == pytest.approx(0.25)
    assert design.confidence({"p_first": 0.3, "log_probs": []}, "mean") == 0.3


def test_answer_steps_score_the_greedy_tokens_up_to_the_newline(design, tiny_llama):
    questions = ["What is a?", "Who wrote the long book about b?"]
    items = ConflictDataset([ConflictExample(id=f"q{i}", question=q, org_context="c", org_answer=("a",),
                                             sub_context="c", sub_answer=("b",)) for i, q in enumerate(questions)], "d")
    rows = design.candidate_answers(tiny_llama, "mixed6", items, batch_size=2)
    prompts = design.recall_prompts(questions)
    assert [r["closed"] for r in rows] == greedy_generate(tiny_llama, prompts, 12, batch_size=2)
    for row in rows:
        assert len(row["log_probs"]) <= 12 and all(lp <= 0 for lp in row["log_probs"])
        if row["log_probs"]:
            assert np.exp(row["log_probs"][0]) == pytest.approx(row["p_first"], abs=1e-5)


def test_a_candidate_given_its_prompts_answers_them_and_is_cached_by_item(design, tiny_llama, tmp_path):
    items = _items(2)
    prompts = {ex.id: f"question: {ex.question}\nanswer:" for ex in items}  # e.g. each test prompt's twin
    rows = design.cached_answers(tiny_llama, "twin-x", items, tmp_path, prompts)
    assert [rows[ex.id]["closed"] for ex in items] == greedy_generate(tiny_llama, list(prompts.values()), 12)
    assert design.cached_answers(tiny_llama, "twin-x", items, tmp_path, {}) == rows  # read back, nothing asked


def test_a_knn_candidate_puts_the_bank_shots_where_its_name_says(design):
    items = ConflictDataset([ConflictExample(id="q", question="On which continent is the city of Lyon?",
                                             org_context="c", org_answer=("Europe",), sub_context="c",
                                             sub_answer=("Asia",), relation="city_continent")], "d")
    after, before = design.candidate_prompts("mixed6+knn2", items)[0], design.candidate_prompts("knn2+mixed6", items)[0]
    assert after.count("question:") == before.count("question:") == 6 + 2 + 1
    assert "Lyon" not in after.split("question:", 1)[0]
    last_shot = after.rsplit("question:", 2)[1]
    assert "continent" in last_shot and "Lyon" not in last_shot  # a neighbour of the broad corpus, nearest last
    assert "continent" not in before.rsplit("question:", 2)[1]  # ... or before the six shots


def test_the_prompts_own_twin_answers_per_format_and_counts_only_where_it_is_short(design):
    items = _items(2)
    formats = [prompt_format("rag"), prompt_format("zero_shot")]
    wrong = {ex.id: {"closed": "green", "p_first": 0.9, "log_probs": []} for ex in items}  # named by no context
    twin = design.PerFormat({"rag": {ex.id: {"closed": "red"} for ex in items},  # the memorised answer: named
                             "zero_shot": {ex.id: {"closed": "It is red, as blue things are not"} for ex in items}})
    value = design.unrecalled_rows(items, items, [wrong, twin], formats)
    assert value[0].tolist() == [0.0, 0.0, 1.0, 1.0]  # rag: org names the twin's "red", sub names nothing recalled
    assert value[1].tolist() == [1.0, 1.0, 1.0, 1.0]  # zero_shot: the sentence is left out, "green" decides
    words = design.unrecalled_rows(items, items, [wrong, twin], formats, twin_words=10)
    assert words[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # kept, its "red" and "blue" are named in both contexts
