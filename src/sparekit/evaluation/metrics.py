"""SQuAD-style exact match, behaviour labels under conflict and conditional steering metrics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from sparekit.data.dataset import ConflictExample, ContextMatch, normalize_answer

Label = Literal["context", "memory", "other"]
LABELS: tuple[Label, ...] = ("context", "memory", "other")


def exact_match(pred: str, golds: Iterable[str]) -> bool:
    """True when the normalised prediction equals any normalised gold string."""
    norm = normalize_answer(pred)
    return any(norm == normalize_answer(gold) for gold in golds)


def uses_context(pred: str, example: ConflictExample, context_match: ContextMatch = "answer") -> bool:
    """Whether ``pred`` follows the substituted context: EM with ``sub_answer`` (NQ-Swap), or for
    Macnoise a non-empty normalised prediction found inside the normalised ``sub_context``."""
    if context_match == "substring":
        norm = normalize_answer(pred)
        return bool(norm) and norm in normalize_answer(example.sub_context)
    return exact_match(pred, example.sub_answer)


def behaviour_label(pred: str, example: ConflictExample, context_match: ContextMatch = "answer") -> Label:
    """Knowledge source of a prediction made with ``sub_context`` in the prompt (context wins ties)."""
    if uses_context(pred, example, context_match):
        return "context"
    if exact_match(pred, example.org_answer):
        return "memory"
    return "other"


def answer_source(pred: str, example: ConflictExample, context_match: ContextMatch = "answer") -> Label:
    """:func:`behaviour_label`, and for an answer written as a sentence (without demonstrations the model
    answers "Accra is the capital of Ghana.") the one of the two answers it names as whole words, alone."""
    label = behaviour_label(pred, example, context_match)
    if label != "other":
        return label
    words = f" {normalize_answer(pred)} "
    named = [any(f" {g} " in words for g in map(normalize_answer, golds) if g)
             for golds in (example.sub_answer, example.org_answer)]
    return {(True, False): "context", (False, True): "memory"}.get((named[0], named[1]), "other")


def conditional_metrics(before_labels: Sequence[str], after_labels: Sequence[str]) -> dict[str, float | int | None]:
    """Where steering moved each item, relative to its unsteered label.

    ``C→M`` is the share of items that used the context before and use memory after
    (likewise ``C→C``, ``M→C``, ``M→M``); ``None`` when no item had that starting label.
    """
    if len(before_labels) != len(after_labels):
        raise ValueError(f"{len(before_labels)} labels before steering but {len(after_labels)} after")
    result: dict[str, float | int | None] = {}
    for start, s in (("context", "C"), ("memory", "M")):
        afters = [a for b, a in zip(before_labels, after_labels) if b == start]
        result[f"n_{s}"] = len(afters)
        for end, e in (("memory", "M"), ("context", "C")):
            result[f"{s}→{e}"] = afters.count(end) / len(afters) if afters else None
    return result
