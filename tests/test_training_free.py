"""Training-free conflict detectors: JSD, closed-book disagreement, their combinations with the probe."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from sparekit.data.dataset import normalize_answer
from sparekit.errors import SparekitError
from sparekit.evaluation.generation import greedy_generate
from sparekit.probes.recall_bank import default_bank
from sparekit.probes.detectors import check_detector
from sparekit.probes.training_free import (RECALL_NEIGHBOURS, RECALL_SHOTS, Combination,
                                           closed_book_answers, detect_conflict, disagreement, divergence,
                                           load_combination, memory_first,
                                           next_token_log_probs, question_of, recall_prompts, recall_score,
                                           save_combinations, unrecalled, without_context)

PROMPT = "context: a is b\nquestion: what is a?\nanswer: b\n\ncontext: c is d\nquestion: what is c?\nanswer:"


def test_without_context_drops_only_the_last_blocks_context_line():
    assert without_context(PROMPT) == "context: a is b\nquestion: what is a?\nanswer: b\n\nquestion: what is c?\nanswer:"
    assert without_context("context: x\nquestion: q\nanswer:") == "question: q\nanswer:"
    with pytest.raises(SparekitError, match="no 'context: …' line"):
        without_context("context: a\nquestion: q\nanswer: b\n\nquestion: q2\nanswer:")


def test_unknown_detector_is_one_error_naming_the_close_one():
    assert check_detector("probe+jsd") == "probe+jsd"
    with pytest.raises(SparekitError, match="unknown detector 'jds'") as info:
        check_detector("jds")
    assert "did you mean 'jsd'" in info.value.hint


def test_divergence_is_zero_for_the_same_distribution_and_ln2_for_disjoint_ones():
    log_p = torch.log_softmax(torch.tensor([[5.0, 0.0, -3.0], [0.0, 0.0, 0.0]]), -1)
    assert divergence(log_p, log_p) == pytest.approx([0.0, 0.0], abs=1e-6)
    disjoint = torch.log(torch.tensor([[1.0, 1e-30], [1e-30, 1.0]]))
    assert divergence(disjoint[:1], disjoint[1:]) == pytest.approx([math.log(2)], abs=1e-4)


def test_unrecalled_looks_for_the_closed_book_answer_in_the_context():
    question = "What is the capital of France?"
    closed = f"question: What is the capital of Italy?\nanswer: Rome\n\nquestion: {question}\nanswer:"
    last = closed.rindex("question:")
    texts = [closed[:last] + f"context: {passage}\n" + closed[last:] for passage in
             ("Paris is the capital of France.",    # names it: no conflict
              "Rome is the capital of France.",     # does not (Rome is only in a demonstration): conflict
              "The capital of France is Rome.")]    # the answer only repeats the question: nothing to contradict
    answers = ["Paris.", "Paris", "the capital of France"]
    assert unrecalled(answers, [question] * 3, texts, [closed] * 3).tolist() == [0.0, 1.0, 0.0]
    assert unrecalled(["Rome"], [question], texts[1:2], [closed]).tolist() == [0.0]
    with pytest.raises(ValueError):
        unrecalled(answers, [question], texts, [closed])


def test_a_one_letter_answer_a_is_looked_up_as_the_letter_not_the_article():
    question = "What is the first letter of the word table?"
    closed = f"question: {question}\nanswer:"
    texts = [f"context: {passage}\n{closed}" for passage in
             ("The word table starts with the letter T.",   # names T, not A: conflict for a model that says "A"
              "The word table starts with the letter A.",   # names A
              "a table is furniture; the letter is T.")]    # the article "a" is not the letter
    assert unrecalled(["A"] * 3, [question] * 3, texts, [closed] * 3).tolist() == [1.0, 0.0, 1.0]
    assert unrecalled(["T."], [question], texts[:1], [closed]).tolist() == [0.0]  # other letters: as before


def test_with_several_closed_book_answers_a_conflict_is_a_context_naming_none():
    question = "On which continent is the city of Lyon?"
    closed = f"question: {question}\nanswer:"
    texts = [f"context: {passage}\n{closed}" for passage in ("Lyon is a city in Europe.", "Lyon is a city in Asia.")]
    both = [("France", "Europe")] * 2  # a country after the fixed shots, the continent after the neighbours
    assert unrecalled(both, [question] * 2, texts, [closed] * 2).tolist() == [0.0, 1.0]
    assert unrecalled(["France"] * 2, [question] * 2, texts, [closed] * 2).tolist() == [1.0, 1.0]


def test_an_answer_that_only_echoes_the_question_leaves_the_decision_to_the_other():
    """After the fixed shots the model echoes "Jun" asked which month "Jun" abbreviates; the neighbours' prompt
    recalls "June": the context conflicts where it names neither recalled answer, and an echo alone decides nothing."""
    question = "Which month is abbreviated Jun?"
    closed = f"question: {question}\nanswer:"
    texts = [f"context: {passage}\n{closed}" for passage in ("Jun is short for June.", "Jun is short for July.")]
    assert unrecalled([("Jun", "June")] * 2, [question] * 2, texts, [closed] * 2).tolist() == [0.0, 1.0]
    assert unrecalled([("June", "Jun")] * 2, [question] * 2, texts, [closed] * 2).tolist() == [0.0, 1.0]
    assert unrecalled([("Jun", "Jun.")] * 2, [question] * 2, texts, [closed] * 2).tolist() == [0.0, 0.0]


def test_an_accent_does_not_hide_that_the_context_names_the_answer():
    question, closed = "Which city is the capital of Togo?", "question: Which city is the capital of Togo?"
    texts = ["context: Togo is governed from Lome.\n" + closed, "context: Togo is governed from Lomé.\n" + closed,
             "context: Togo is governed from Lima.\n" + closed]
    assert unrecalled(["Lomé"] * 3, [question] * 3, texts, [closed] * 3).tolist() == [0.0, 0.0, 1.0]
    assert unrecalled(["Lome"], [question], texts[1:2], [closed]).tolist() == [0.0]


def test_the_recall_prompt_is_its_own_short_answer_prompt_whatever_the_format():
    (prompt,) = recall_prompts(["What is the opposite of hot?"])
    assert prompt.endswith("\n\nquestion: What is the opposite of hot?\nanswer:") and "context:" not in prompt
    assert prompt.count("question: ") == len(RECALL_SHOTS) + 1
    assert all(f"answer: {s.answer}\n\n" in prompt for s in RECALL_SHOTS)
    (asked,) = recall_prompts([RECALL_SHOTS[0].question])  # a demonstration asking the question itself is dropped
    assert asked.count(RECALL_SHOTS[0].question) == 1
    (retrieved,) = recall_prompts(["On which continent is the city of Lyon?"], bank=default_bank())
    assert retrieved.count("question: ") == len(RECALL_SHOTS) + RECALL_NEIGHBOURS + 1
    neighbours = retrieved.split("question: ")[-1 - RECALL_NEIGHBOURS:-1]
    assert all("continent" in n and "Lyon" not in n for n in neighbours)  # the answer type, never the subject


def test_recall_score_keeps_the_decision_and_ranks_by_confidence():
    score = recall_score(np.array([1.0, 1.0, 0.0, 0.0]), np.array([0.9, 0.3, 0.3, 0.9]))
    assert score.tolist() == pytest.approx([0.95, 0.65, 0.35, 0.05])
    assert ((score > 0.5) == np.array([1, 1, 0, 0], bool)).all()


def test_question_of_reads_the_last_blocks_question():
    assert question_of(PROMPT) == "what is c?"
    with pytest.raises(SparekitError, match="no 'question: …' line"):
        question_of("context: x\nQuestion: q\nAnswer:")


def test_disagreement_compares_normalised_answers():
    assert disagreement(["Paris.", "Rome", ""], ["paris", "Paris", ""]).tolist() == [0.0, 1.0, 0.0]


def test_combination_learns_which_signal_matters_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 200)
    probe_logit = rng.normal(size=400)  # uninformative
    signal = y * 0.4 + rng.normal(scale=0.1, size=400)
    combo = Combination("jsd").fit(probe_logit, signal, y)
    assert combo.coef[1] > 5 * abs(combo.coef[0])
    assert np.mean((combo.proba(probe_logit, signal) > 0.5) == y) > 0.9
    save_combinations(tmp_path, [combo], "test")
    loaded = load_combination(tmp_path, "jsd")
    assert loaded.proba(probe_logit, signal) == pytest.approx(combo.proba(probe_logit, signal))
    with pytest.raises(SparekitError, match="no fitted probe\\+disagreement combination"):
        load_combination(tmp_path, "disagreement")


def test_probe_recall_records_its_reading_and_an_older_one_warns(tmp_path):
    from sparekit.probes.training_free import RECALL_READING, StaleCombinationWarning

    save_combinations(tmp_path, [Combination("recall", (0.1, 12.0), -6.0), Combination("jsd", (1.0, 2.0), 0.0)], "t")
    saved = json.loads((tmp_path / "detectors.json").read_text())["combinations"]
    assert saved["recall"]["reading"] == RECALL_READING and "reading" not in saved["jsd"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_combination(tmp_path, "recall").coef == (0.1, 12.0)
    del saved["recall"]["reading"]  # a file written before the field: fitted on reading 3
    (tmp_path / "detectors.json").write_text(json.dumps({"combinations": saved}))
    with pytest.warns(StaleCombinationWarning, match="recall reading 3's scores"):
        load_combination(tmp_path, "recall")


def test_first_step_log_probs_equal_a_forward_and_leave_answers_unchanged(tiny_llama):
    texts = ["question: a\nanswer:", "context: a long context line here\nquestion: b\nanswer:"]
    first: list[torch.Tensor] = []
    answers = greedy_generate(tiny_llama, texts, 4, batch_size=2, first_step=first)
    assert answers == greedy_generate(tiny_llama, texts, 4, batch_size=2)
    assert torch.allclose(torch.cat(first), next_token_log_probs(tiny_llama, texts), atol=1e-4)
    answers2, log_probs = closed_book_answers(tiny_llama, texts, batch_size=1)
    assert answers2[:1] == greedy_generate(tiny_llama, texts[:1], 12, batch_size=1) and log_probs.shape[0] == 2


def test_detectors_read_the_prompt_against_its_closed_book_twin(tiny_llama):
    jsd = detect_conflict(tiny_llama, PROMPT, "jsd", None)
    assert set(jsd) >= {"detector", "jsd", "conflict_probability", "conflict"} and 0 <= jsd["jsd"] <= math.log(2)
    log_probs = next_token_log_probs(tiny_llama, [PROMPT, without_context(PROMPT)])
    assert jsd["jsd"] == pytest.approx(float(divergence(log_probs[:1], log_probs[1:])[0]), abs=1e-5)
    dis = detect_conflict(tiny_llama, PROMPT, "disagreement", None)
    assert dis["conflict"] == (dis["disagreement"] == 1.0) and isinstance(dis["closed_book_answer"], str)
    with pytest.raises(SparekitError, match="needs probes"):
        detect_conflict(tiny_llama, PROMPT, "probe+jsd", None)


def test_recall_asks_its_own_prompt_and_looks_for_the_answer_in_the_context(tiny_llama):
    found = detect_conflict(tiny_llama, PROMPT, "recall", None)
    prompts = recall_prompts(["what is c?"]) + recall_prompts(["what is c?"], bank=default_bank())
    answers, log_probs = closed_book_answers(tiny_llama, prompts)  # the two prompts, batched as the detector does
    answer = answers[0]
    assert found["closed_book_answers"] == answers and found["closed_book_answer"] == answer
    assert found["detector"] == "recall"
    assert found["closed_book_confidence"] == pytest.approx(float(log_probs[0].max().exp()), abs=1e-5)
    expected = unrecalled([answers], ["what is c?"], [PROMPT], [without_context(PROMPT)])[0]
    assert found["recall_source"] == ("memory" if memory_first(tiny_llama, [PROMPT], [answer])[0] else "context")
    assert found["unrecalled"] == expected and found["conflict"] == (expected == 1.0 and found["recall"] > 0.5)
    named = PROMPT.replace("context: c is d", f"context: c is {answer or 'x'}")  # the context names the answer
    if normalize_answer(answer) not in ("", "c", "what", "is"):
        assert detect_conflict(tiny_llama, named, "recall", None)["unrecalled"] == 0.0
    rag = "Passage: c is d\nQuestion: what is c?\nAnswer:"  # any format, given its question and twin
    other = detect_conflict(tiny_llama, rag, "recall", None, "Question: what is c?\nAnswer:", "what is c?")
    assert other["closed_book_answer"] == answer and other["unrecalled"] == expected


def test_a_given_closed_book_twin_is_the_one_contrasted(tiny_llama):
    text, closed = "Passage: c is d\nQuestion: what is c?\nAnswer:", "Question: what is c?\nAnswer:"
    jsd = detect_conflict(tiny_llama, text, "jsd", None, closed)  # not three_shot: no context line to drop
    log_probs = next_token_log_probs(tiny_llama, [text, closed])
    assert jsd["jsd"] == pytest.approx(float(divergence(log_probs[:1], log_probs[1:])[0]), abs=1e-5)


@pytest.mark.parametrize("command", [["detect", PROMPT], ["steer", "c", "q", "--toward", "memory"], ["demo"]])
def test_every_command_refuses_an_unknown_detector_before_loading_a_model(capsys, command):
    from sparekit.cli.main import main

    assert main([*command, "--detector", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope' is not one of 'auto', 'probe'" in err and "Traceback" not in err


def test_detect_cli_refuses_bad_detector_inputs_before_loading_a_model(capsys):
    from sparekit.cli.main import main

    assert main(["detect", "--detector", "jsd", "question: q\nanswer:"]) == 2
    assert "no 'context: …' line" in capsys.readouterr().err
    assert main(["detect", "--detector", "disagreement", "--question", "q", "--prompt-format", "rag"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "contrasts the prompt with and without its context" in err
    for bad, message in (("question: q\nanswer:", "no 'context: …' line"),  # no context
                         ("context: c\nanswer:", "no 'question: …' line")):  # no question to ask closed-book
        assert main(["detect", "--detector", "recall", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert main(["detect", "--detector", "recall", "--question", "q"]) == 2
    assert "contrasts the prompt with and without its context" in capsys.readouterr().err


def test_detect_cli_runs_each_detector_on_a_fitted_probe_run(tiny_probe_setup, tmp_path, capsys):
    """A tiny probe run (faked behaviour), then every detector; combinations need the folder's detectors.json."""
    from sparekit.cli.main import main

    folder, data = tiny_probe_setup
    run = tmp_path / "run"
    assert main(["probe", "--dataset", str(data), "--model", str(folder), "--layers", "1", "--seeds", "0",
                 "--k-shot", "1", "--out", str(run), "--json"]) == 0
    capsys.readouterr()
    ask = ["detect", "--probe", str(run), "--question", "q3", "--context", "it is x3", "--json"]
    assert main([*ask, "--detector", "probe"]) == 0
    reading = json.loads(capsys.readouterr().out)
    assert reading["detector"] == "probe" and isinstance(reading["in_distribution"], bool) and reading["distance"] > 0
    assert main(ask) == 0  # auto: recall, the question and the context being known
    assert json.loads(capsys.readouterr().out)["detector"] == "recall"
    assert main(["detect", "--probe", str(run), "--question", "q3", "--json"]) == 0  # no context: the probe
    assert json.loads(capsys.readouterr().out)["detector"] == "probe"
    for text, read_by in ((PROMPT, "recall"), ("Passage: it is x3\nQuestion: q3\nAnswer:", "probe")):  # as text
        assert main(["detect", "--probe", str(run), text]) == 0
        assert capsys.readouterr().out.startswith(f"detector: {read_by}\n")
    assert main([*ask, "--detector", "probe+jsd"]) == 2
    assert "no fitted probe+jsd combination" in capsys.readouterr().err
    save_combinations(run / "probes", [Combination("jsd", (1.0, 2.0), -0.5)], "test")
    readings = {}
    for detector in ("jsd", "disagreement", "recall", "probe+jsd"):
        assert main([*ask, "--detector", detector]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["detector"] == detector and 0 <= result["conflict_probability"] <= 1
        readings[detector] = result
    assert result["probe_conflict_probability"] is not None and "in_distribution" in result
    for fmt in ("zero_shot", "rag", "llamaindex"):  # any format: the closed-book twin comes from its builder
        assert main([*ask, "--detector", "disagreement", "--prompt-format", fmt]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["prompt_format"] == fmt and isinstance(result["closed_book_answer"], str)
        assert main([*ask, "--detector", "recall", "--prompt-format", fmt]) == 0  # its own closed-book prompt
        recalled = json.loads(capsys.readouterr().out)
        assert recalled["closed_book_answer"] == readings["recall"]["closed_book_answer"]
        assert recalled["prompt_format"] == fmt and recalled["prompt"].startswith(("context:", "Passage:", "Context"))
    from sparekit.models import load_model
    from sparekit.probes.detect import detect

    library = detect(load_model(str(folder)), "q3", "it is x3", run, detector="recall")  # the library reads it alike
    assert library["prompt"] == readings["recall"]["prompt"]
    assert library["conflict_probability"] == pytest.approx(readings["recall"]["conflict_probability"])
    assert main(["detect", "--probe", str(run), "--question", "q3", "--context", "it is x3",
                 "--detector", "recall"]) == 0
    assert "closed-book answers: " in capsys.readouterr().out


def test_the_shipped_probes_carry_every_combination():
    """`detect --detector probe+jsd / probe+disagreement / probe+recall` work on the shipped probes out of the box."""
    from sparekit.models.assets import default_assets
    from sparekit.probes.training_free import load_combination

    folder = default_assets().probes
    for signal in ("jsd", "disagreement", "recall"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # probe+recall fitted on the current recall reading's scores
            combination = load_combination(folder, signal)
        assert combination.coef[1] > 0  # more divergence / disagreement / unrecalled reads as more conflict


def test_memory_first_reads_whether_the_prompt_is_about_to_say_the_closed_book_answer(tiny_llama):
    top = int(next_token_log_probs(tiny_llama, [PROMPT])[0].argmax())
    said = tiny_llama.tokenizer.decode([top]).strip()
    if not said:
        pytest.skip("the random model's likeliest next token is blank")
    other = next(w for w in ("zebra", "quartz", "violin") if not w.startswith(said))
    assert memory_first(tiny_llama, [PROMPT, PROMPT], [said, other]).tolist() == [1.0, 0.0]


def test_the_next_token_pass_runs_the_head_on_the_last_position_and_reads_the_same(tiny_llama):
    from sparekit.evaluation.generation import tokenize
    from sparekit.hooks.core import last_logits_only

    assert last_logits_only(tiny_llama.model) == {"logits_to_keep": 1}
    texts = [PROMPT, "question: what is c?\nanswer:"]
    with torch.inference_mode():
        full = tiny_llama.model(**tokenize(tiny_llama, texts, position_ids=True), use_cache=False).logits[:, -1]
    expected = torch.log_softmax(full.float(), -1)
    assert torch.allclose(next_token_log_probs(tiny_llama, texts), expected, atol=1e-5)
