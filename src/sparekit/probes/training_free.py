"""Conflict detectors that fit nothing, and their combinations with the probe.

- ``jsd``: the Jensen–Shannon divergence between the next-token distributions at the last prompt
  token with and without the context (AdaCAD's weight). A context that agrees with memory barely
  moves the distribution; a conflicting one moves it. Costs one extra closed-book prompt pass.
- ``disagreement``: the greedy answer with the context differs from the closed-book answer.
  Costs one extra closed-book generation (the answer with the context is the one the user wants).
- ``recall``: does the context name the model's closed-book answer (asked with its own two short-answer prompts,
  :func:`recall_answers`, whatever the prompt's format)? Costs one batched short closed-book generation of two
  prompts.
- ``probe+jsd`` / ``probe+disagreement`` / ``probe+recall``: a logistic regression on [probe logit, signal],
  fitted on dev rows (:class:`Combination`), saved beside the probes as ``detectors.json``.

Every detector returns the reading keys of the probe (``conflict_probability``, ``conflict``)
plus ``detector`` and the signals it read. The closed-book prompt (what CAD and AdaCAD contrast
against) comes from the prompt's own builder without the item's passages
(:meth:`~sparekit.data.formats.PromptBuilder.without_passages`), in any prompt format; a prompt
given as text must be ``three_shot`` blocks, and loses its last block's ``context:`` line (``recall`` also reads its
``question:`` line; another format needs the question and contexts given apart).
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparekit.data.dataset import normalize_answer
from sparekit.data.formats import QABlocks, Shot
from sparekit.errors import SparekitError
from sparekit.evaluation.divergence import jensen_shannon
from sparekit.evaluation.generation import greedy_generate, tokenize
from sparekit.evaluation.harness import MAX_NEW_TOKENS
from sparekit.evaluation.metrics import exact_match
from sparekit.hooks.core import last_logits_only
from sparekit.models.loading import LoadedModel
from sparekit.probes.detect import MAX_PROMPT_TOKENS, check_prompt, describe, load_probes
from sparekit.probes.detectors import COMBINATIONS_FILE, check_detector, combination_entry, needs_probes
from sparekit.probes.reading import ProbeSet, read_prompts
from sparekit.probes.recall_bank import DemonstrationBank, default_bank
from sparekit.utils.arrays import to_numpy
from sparekit.utils.io import atomic_write_json

#: the JSD above which ``jsd`` alone says conflict: the median of the 32 dev-chosen thresholds of
#: benchmarks/bench_detectors.py (BENCHMARKS.md, "Training-free detectors")
JSD_THRESHOLD = 0.093
#: the recall detector's closed-book demonstrations: six answer types (a number, a person, a year, a symbol, a place,
#: a short word), each outside every relation of the corpora and of the outside test, so that no answer type is
#: primed. Round 1's three general-knowledge shots (Shakespeare, Jupiter, the lion) primed a name or a place: "the
#: dollar" for Iran's currency, "1000" for the kilogram's symbol. Chosen on round 2's fresh dev relations (product,
#: weekday_abbreviation, holiday_month, unit_symbol): accuracy 0.938 against 0.875, memorised answers recovered 83 %
#: against 65 % (BENCHMARKS.md, "The recall detector", second design round); the probes' shots (two currencies and
#: a country) had made it answer "China" to "which country has Luanda as its capital?"
RECALL_SHOTS = (Shot("How many legs does a spider have?", None, "8"),
                Shot("Who painted the Mona Lisa?", None, "Leonardo da Vinci"),
                Shot("In which year did the Second World War end?", None, "1945"),
                Shot("What symbol is used for the word 'and'?", None, "&"),
                Shot("In which city is the Taj Mahal?", None, "Agra"),
                Shot("What do bees make?", None, "honey"))
#: how many solved questions of the bank the second closed-book prompt adds after :data:`RECALL_SHOTS` (fourth
#: design round: three, the candidate run on the dev relations and held out)
RECALL_NEIGHBOURS = 3
#: the recall reading's revision, raised whenever its decisions change (prompts asked, answers read, matching):
#: 1 one closed-book prompt, 2 two prompts (fourth design round), 3 accents dropped before matching, 4 an answer that
#: only echoes the question leaves the decision to the other. Cached gated cells record it, so a resumed benchmark
#: regenerates cells an older reading decided.
RECALL_READING = 4
#: how many questions' closed-book answers :func:`recall_answers` keeps per process (a server's questions repeat)
RECALL_CACHE_SIZE = 4096
_RECALLED: OrderedDict[tuple[str, str], tuple[tuple[str, str], float]] = OrderedDict()


def without_context(prompt: str) -> str:
    """A ``three_shot`` prompt given as text with its last block's ``context:`` line removed: its closed-book twin
    (a prompt built from a question takes :meth:`~sparekit.data.formats.PromptBuilder.without_passages`)."""
    head, sep, last = prompt.rpartition("\n\n")
    first, newline, rest = last.partition("\n")
    if not first.startswith("context:") or not newline:
        raise SparekitError("this detector needs the context: the prompt's last block has no 'context: …' line",
                            "pass --question and --context, or end the prompt with a 'context:/question:/answer:' "
                            "block")
    return head + sep + rest


def closed_book_answers(lm: LoadedModel, texts: Sequence[str],
                        batch_size: int = 8) -> tuple[list[str], torch.Tensor]:
    """Greedy answers of ``texts`` and their first-token log-probabilities ``[n, vocab]`` (one generation)."""
    first: list[torch.Tensor] = []
    answers = greedy_generate(lm, list(texts), MAX_NEW_TOKENS, batch_size, first_step=first)
    return answers, torch.cat(first)


@torch.inference_mode()
def next_token_log_probs(lm: LoadedModel, texts: Sequence[str]) -> torch.Tensor:
    """float32 ``[n, vocab]`` log-probabilities of the token after each prompt (one prompt pass, left padded)."""
    logits = lm.model(**tokenize(lm, list(texts), position_ids=True), use_cache=False,
                      **last_logits_only(lm.model)).logits[:, -1]
    return torch.log_softmax(logits.float(), -1).cpu()


def divergence(log_with: torch.Tensor, log_without: torch.Tensor) -> np.ndarray:
    """Per-row JSD (natural log, in [0, ln 2]) of two ``[n, vocab]`` log-distributions."""
    return to_numpy(jensen_shannon(log_with, log_without).clamp(min=0)).astype(np.float64)


def recall_prompts(questions: Sequence[str], shots: Sequence[Shot] = RECALL_SHOTS,
                   bank: DemonstrationBank | None = None, neighbours: int = RECALL_NEIGHBOURS) -> list[str]:
    """The recall detector's own closed-book prompts: each question after every one of ``shots`` (but one asking the
    same question), then, with a ``bank``, up to ``neighbours`` solved questions nearest it in form
    (:meth:`~sparekit.probes.recall_bank.DemonstrationBank.nearest`), whatever the user's prompt format. Why its
    own: asked in a zero-shot format without a passage, the model answers in sentences and guesses; after solved
    short answers it says what it remembers, in the words a context would use."""
    fmt = QABlocks()
    return [fmt.render(question, (), [fmt.block(s.question, (), s.answer) for s in
                                      [*shots, *(bank.nearest(question, neighbours) if bank else ())]
                                      if s.question != question])
            for question in questions]


def recall_answers(lm: LoadedModel, questions: Sequence[str],
                   batch_size: int = 8) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The model's two closed-book answers to each question, asked after :data:`RECALL_SHOTS` alone and after them and
    the question's nearest solved questions of :func:`~sparekit.probes.recall_bank.default_bank` (one batched
    generation), and the first answer's first-token probability: what the recall detector and the recall gate both
    ask. Two answers because each prompt primes its own wrong answers (a country for a city's continent after the
    fixed shots, a month from the neighbours for a holiday's month): the context conflicts with memory only where it
    names neither (BENCHMARKS.md, "Fourth design round"). Kept per (model, question) for the process (the last
    :data:`RECALL_CACHE_SIZE`): a prompt's conflict and no-conflict variants, every method a recall gate gates, and a
    ``steer`` that both gates and reads by recall ask once."""
    todo = [q for q in dict.fromkeys(questions) if (lm.info.model_hash, q) not in _RECALLED]
    if todo:
        fixed = recall_prompts(todo)
        retrieved = recall_prompts(todo, bank=default_bank())
        answers, log_probs = closed_book_answers(lm, [p for pair in zip(fixed, retrieved) for p in pair], batch_size)
        confidence = to_numpy(log_probs[::2].max(-1).values.exp()).astype(np.float64)
        for question, pair, sure in zip(todo, zip(answers[::2], answers[1::2]), confidence):
            _RECALLED[lm.info.model_hash, question] = pair, float(sure)
    found = [_RECALLED[lm.info.model_hash, q] for q in questions]
    for question in questions:
        _RECALLED.move_to_end((lm.info.model_hash, question))
    while len(_RECALLED) > RECALL_CACHE_SIZE:
        _RECALLED.popitem(last=False)
    return [pair for pair, _ in found], np.array([sure for _, sure in found], dtype=np.float64)


def _letter(answer: str) -> str | None:
    """A one-letter answer that normalisation drops as the article ("A"), else None."""
    bare = "".join(ch for ch in answer if ch.isalnum())
    return bare.upper() if len(bare) == 1 and bare.isalpha() and not normalize_answer(bare) else None


def _counts(text: str, tokens: list[str], words: Sequence[str], letter: str | None) -> list[int]:
    """How often ``text`` holds each of ``words``: among its normalised words ``tokens`` (:func:`_words`), or a
    one-letter answer as itself standing alone, case kept ("the letter A" counts; the article only where it starts
    a sentence)."""
    if letter:
        return [len(re.findall(rf"\b{word}\b", text)) for word in words]
    return [tokens.count(word) for word in words]


def _words(text: str) -> list[str]:
    """Normalised words with accents dropped: a closed-book "Lomé" is the passage's "Lome"."""
    return "".join(ch for ch in normalize_answer(text) if not unicodedata.combining(ch)).split()


def _recalled_words(answer: str, asked: set[str]) -> tuple[list[str], str | None]:
    """What ``answer`` recalls beyond the question's words ``asked`` (empty: it only echoes the question), and its
    letter where it is one (:func:`_letter`)."""
    letter = _letter(answer)
    return ([letter] if letter else [w for w in _words(answer) if w not in asked]), letter


def _names(words: list[str], letter: str | None, with_text: tuple[str, list[str]],
           without_text: tuple[str, list[str]]) -> bool:
    """Whether the context names the recalled ``words``; each text comes with its normalised words, computed once
    per prompt whatever the number of answers."""
    return any(a > b for a, b in zip(_counts(*with_text, words, letter), _counts(*without_text, words, letter)))


def unrecalled(closed_answers: Sequence[str | Sequence[str]], questions: Sequence[str], with_texts: Sequence[str],
               without_texts: Sequence[str]) -> np.ndarray:
    """1.0 where the context names none of the model's closed-book answers to the question (one, or several
    asked with different prompts): a conflict even when the model then ignores the context (which ``disagreement``
    cannot see). An answer's words that are not the question's are looked up as whole normalised words, accents
    dropped; the context names one when the prompt with it holds the word more often than its closed-book twin (so
    demonstrations do not count). 0.0 where one is named. An answer with no word beyond the question's recalls
    nothing (after the fixed shots the model echoes "Jun" asked which month "Jun" abbreviates): it is no evidence
    either way, so the other answers decide, and where none recalls anything there is nothing to contradict (0.0).
    The letter "A", which normalisation drops as the article, is looked up as a capital standing alone ("the letter
    A")."""
    found = []
    for answers, question, with_text, without_text in zip(closed_answers, questions, with_texts, without_texts,
                                                          strict=True):
        answers = (answers,) if isinstance(answers, str) else answers
        asked, texts = set(_words(question)), [(text, _words(text)) for text in (with_text, without_text)]
        recalled = [(words, letter) for words, letter in (_recalled_words(a, asked) for a in answers) if words]
        found.append(1.0 if recalled and not any(_names(*r, *texts) for r in recalled) else 0.0)
    return np.array(found)


def recall_score(unrecalled_values: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """The recall detector's conflict probability, 0.5 + (unrecalled - 0.5) x the closed-book answer's first-token
    probability: the decision is :func:`unrecalled`'s, and a surer memory reads further from 0.5 (what AUROC
    ranks by)."""
    return 0.5 + (np.asarray(unrecalled_values, dtype=np.float64) - 0.5) * np.asarray(confidence, dtype=np.float64)


def splits(prompt: str) -> bool:
    """Whether a prompt given as text shows its question and context apart (``three_shot`` blocks): what the
    ``auto`` detector reads it with recall for (:func:`~sparekit.probes.detectors.resolve_detector`)."""
    try:
        without_context(prompt)
        question_of(prompt)
    except SparekitError:
        return False
    return True


def question_of(prompt: str) -> str:
    """The question of a ``three_shot`` prompt given as text: its last block's ``question:`` line."""
    for line in prompt.rpartition("\n\n")[2].split("\n"):
        if line.startswith("question: ") and line.removeprefix("question: ").strip():
            return line.removeprefix("question: ")
    raise SparekitError("the recall detector needs the question: the prompt's last block has no 'question: …' line",
                        "pass --question and --context, or end the prompt with a 'context:/question:/answer:' block")


def memory_first(lm: LoadedModel, texts: Sequence[str], closed_answers: Sequence[str]) -> np.ndarray:
    """1.0 where the token each prompt's pass makes most likely next is the first token of the model's closed-book
    answer: the model is about to answer from memory (read before any token is generated; one prompt pass). The
    training-free source reading: 0.89 on held-out relations against a majority rate of 0.75 (BENCHMARKS.md,
    "Source prediction from the prompt's pass")."""
    from sparekit.steering.output_effect import answer_first_tokens  # lazy: sparekit.steering imports this module

    top = next_token_log_probs(lm, texts).argmax(-1)
    return to_numpy(top == answer_first_tokens(lm, closed_answers)).astype(np.float64)


def recall(lm: LoadedModel, text: str, closed: str, question: str) -> dict:
    """The recall detector's reading of one prompt: the closed-book answers of :func:`recall_answers`, does the
    prompt's context (what ``text`` holds beyond its twin ``closed``) name either, and the training-free source
    reading (:func:`memory_first`)."""
    (answers,), (confidence,) = recall_answers(lm, [question])
    value = float(unrecalled([answers], [question], [text], [closed])[0])
    source = "memory" if memory_first(lm, [text], [answers[0]])[0] == 1.0 else "context"
    return {"unrecalled": value, "closed_book_answer": answers[0], "closed_book_answers": list(answers),
            "closed_book_confidence": confidence, "recall_source": source,
            "recall": float(recall_score(np.array([value]), np.array([confidence]))[0])}


def disagreement(with_answers: Sequence[str], without_answers: Sequence[str]) -> np.ndarray:
    """1.0 where the answer with the context is not the closed-book answer (normalised exact match)."""
    return np.array([0.0 if exact_match(a, [b]) else 1.0 for a, b in zip(with_answers, without_answers)])


@dataclass
class Combination:
    """Logistic regression on ``[probe logit, signal]`` (``signal``: ``jsd`` or ``disagreement``)."""

    signal: str
    coef: tuple[float, float] = (0.0, 0.0)
    intercept: float = 0.0

    def fit(self, probe_logit: np.ndarray, signal: np.ndarray, y: np.ndarray) -> Combination:
        from sklearn.linear_model import LogisticRegression  # lazy: sklearn only where a combination is fitted

        model = LogisticRegression().fit(np.stack([probe_logit, signal], 1), y)
        self.coef, self.intercept = (float(model.coef_[0, 0]), float(model.coef_[0, 1])), float(model.intercept_[0])
        return self

    def proba(self, probe_logit: np.ndarray, signal: np.ndarray) -> np.ndarray:
        z = self.coef[0] * np.asarray(probe_logit) + self.coef[1] * np.asarray(signal) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))


class StaleCombinationWarning(UserWarning):
    """A saved probe+recall combination was fitted on an older recall reading's scores."""


def save_combinations(folder: Path, combinations: Sequence[Combination], note: str) -> Path:
    """Write ``detectors.json`` beside the probes in ``folder`` (atomically); probe+recall records the recall
    reading (:data:`RECALL_READING`) its scores came from."""
    path = folder / COMBINATIONS_FILE
    entries = {c.signal: {"coef": list(c.coef), "intercept": c.intercept,
                          **({"reading": RECALL_READING} if c.signal == "recall" else {})} for c in combinations}
    atomic_write_json(path, {"note": note, "combinations": entries})
    return path


def load_combination(folder: Path, signal: str) -> Combination:
    """The ``probe+signal`` combination fitted for the probes in ``folder``; a clear error where there is none, and a
    warning where probe+recall was fitted on another recall reading's scores (its weights were fitted on decisions
    the detector no longer makes; an entry without ``reading`` predates the field: reading 3)."""
    entry = combination_entry(folder, signal)
    if signal == "recall" and (fitted := entry.get("reading", 3)) != RECALL_READING:
        warnings.warn(f"{folder / COMBINATIONS_FILE}: probe+recall was fitted on recall reading {fitted}'s scores, "
                      f"not the current reading {RECALL_READING}'s; refit it with benchmarks/bench_detectors.py "
                      "--formats --save-combinations", StaleCombinationWarning, stacklevel=2)
    return Combination(signal, tuple(float(c) for c in entry["coef"]), float(entry["intercept"]))


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return float(np.log(p / (1 - p)))


def detect_conflict(lm: LoadedModel, text: str, detector: str, probes: ProbeSet | None,
                    closed: str | None = None, question: str | None = None, probe_reading: dict | None = None) -> dict:
    """The reading of ``detector`` on one prompt (see the module docstring for what each one runs); ``closed``:
    its closed-book twin from the prompt's builder and ``question`` its question (default: both read from
    ``text`` as ``three_shot`` blocks); ``probe_reading``: the probes' reading of ``text`` where the caller's own
    prompt pass already took it (``steer``, the server), else one prompt pass takes it."""
    check_detector(detector)
    out: dict = {"detector": detector}
    probe_logit = None
    if needs_probes(detector):
        if probes is None:
            raise SparekitError(f"the {detector} detector needs probes", "pass --probe, or use jsd, disagreement or "
                                "recall")
        reading = probe_reading or read_prompts(lm, [text], probes=probes).probes[0]
        probe_logit = _logit(reading["conflict_probability"])
        out.update(reading, detector=detector, probe_conflict_probability=reading["conflict_probability"])
    if detector == "probe":
        return out
    closed = without_context(text) if closed is None else closed
    signal = detector.removeprefix("probe+")
    if signal == "jsd":
        log_probs = next_token_log_probs(lm, [text, closed])
        value = float(divergence(log_probs[:1], log_probs[1:])[0])
        out["jsd"] = value
    elif signal == "recall":
        out.update(recall(lm, text, closed, question_of(text) if question is None else question))
        out.setdefault("predicted_source", out["recall_source"])  # the source probe's, where one read it
        value = out["recall"]
    else:
        (answer, closed_answer), _ = closed_book_answers(lm, [text, closed])
        value = float(disagreement([answer], [closed_answer])[0])
        out.update(disagreement=value, answer=answer, closed_book_answer=closed_answer)
    if probe_logit is None:  # jsd alone: 0.5 at the dev-chosen threshold, capped at 1; recall: its score
        p = min(1.0, value / (2 * JSD_THRESHOLD)) if signal == "jsd" else value
    else:
        p = float(load_combination(probes.folder, signal).proba(np.array([probe_logit]), np.array([value]))[0])
    out.update(conflict_probability=p, conflict=p > 0.5)
    return out


def check_detector_inputs(detector: str, text: str | None, folder: Path, has_context: bool = True) -> None:
    """Bad input for ``detector`` fails before any model loads: an unknown name, a prompt (``text``, or a question
    without ``has_context``) with no context for the context-contrast detectors, a probe folder without the
    fitted combination."""
    check_detector(detector)
    if detector != "probe" and text is not None:
        without_context(text)
        if detector.endswith("recall"):
            question_of(text)
    elif detector != "probe" and not has_context:
        raise SparekitError(f"the {detector} detector contrasts the prompt with and without its context, and "
                            "none was given", "pass --context")
    if detector.startswith("probe+"):
        load_combination(folder, detector.removeprefix("probe+"))


def detect_with(lm: LoadedModel, text: str, detector: str, folder: Path,
                max_tokens: int | None = MAX_PROMPT_TOKENS, closed: str | None = None,
                question: str | None = None) -> dict:
    """``sparekit detect --detector``: :func:`detect_conflict` on one checked prompt (``closed``: its closed-book
    twin), with the probe folder."""
    check_prompt(lm, text, max_tokens)
    probes = load_probes(folder, lm.info.model_hash) if needs_probes(detector) else None
    return describe_detection(detect_conflict(lm, text, detector, probes, closed, question), probes)


def describe_detection(reading: dict, probes: ProbeSet | None) -> dict:
    """A reading with its probes' sites and folder (:func:`~sparekit.probes.detect.describe`), or ``probe_dir``
    ``None`` for a detector that read no probes."""
    if probes is None or not needs_probes(reading.get("detector", "probe")):
        return {**reading, "probe_dir": None}
    return describe(reading, probes)
