"""Demonstrations for the recall detector's second closed-book question, retrieved by the question's form
(BENCHMARKS.md, "The recall detector", fourth design round).

The recall detector asks the model its closed-book answer after a few solved questions. Fixed demonstrations prime
one answer type: after six general-knowledge shots the model names a country for a city's continent and echoes
"Jun" for the month abbreviated "Jun". A :class:`DemonstrationBank` picks the solved questions nearest the asked one
*in form* (which continent, which month is abbreviated, what is the symbol for): they show the answer type without
telling the answer (they prime answers of their own, which is why the detector asks both prompts). Two rules keep
the answer the model's own:

- similarity is read on *template words* only, the content words at least ``min_count`` bank questions share
  ("continent", "abbreviated", "symbol"); a question's other words, and its names and numbers, are its subject
  ("Lyon", "Jun", "hot"); a question with no template word gets no demonstration from the bank;
- a solved question whose question or answer holds any of the asked question's subject words is never drawn, so
  the demonstrations never name the subject, let alone its answer.

The bank (:func:`default_bank`) is the embedded broad corpus' questions with their true answers; nothing is fitted.
:meth:`DemonstrationBank.without` drops relations, so a held-out relation is never its own demonstration.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from sparekit.data import load_dataset
from sparekit.data.dataset import ConflictDataset, normalize_answer
from sparekit.data.formats import Shot

#: how many solved questions a template word needs to be in (fewer: a subject word)
MIN_TEMPLATE_COUNT = 5
#: words that say nothing of a question's form: shared by "What is the capital of…" and "What colour is…", they
#: would make every question near every other
FUNCTION_WORDS = frozenset("what which who how is are was were of in on at for and or to does do did its it has have "
                           "with as by from this that there".split())


def _words(text: str) -> list[str]:
    return normalize_answer(text).split()


def _named(question: str) -> set[str]:
    """The question's names and numbers, subject words at any count: its capitalised words after the first, and
    its words with a digit ("France", "Jan", "10")."""
    raw = question.split()
    return {w for token in raw[1:] if token[:1].isupper() for w in _words(token)} | \
        {w for w in _words(question) if any(ch.isdigit() for ch in w)}


@dataclass(frozen=True)
class DemonstrationBank:
    """Solved closed-book questions (``shots``, with their ``relations``) to draw demonstrations from by form."""

    shots: tuple[Shot, ...]
    relations: tuple[str, ...]
    min_count: int = MIN_TEMPLATE_COUNT
    _template: dict[str, int] = field(init=False, repr=False, compare=False)
    _idf: np.ndarray = field(init=False, repr=False, compare=False)
    _vectors: np.ndarray = field(init=False, repr=False, compare=False)
    _words: tuple[frozenset[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.shots) != len(self.relations):
            raise ValueError(f"{len(self.shots)} shots but {len(self.relations)} relations")
        counts = Counter(w for shot in self.shots for w in set(_words(shot.question)) if w not in FUNCTION_WORDS)
        template = sorted(w for w, n in counts.items() if n >= self.min_count)
        index = {w: i for i, w in enumerate(template)}
        idf = np.array([math.log(len(self.shots) / counts[w]) + 1.0 for w in template])
        vectors = np.stack([self._embed(shot.question, index, idf) for shot in self.shots]) if self.shots else \
            np.zeros((0, len(template)))
        object.__setattr__(self, "_template", index)
        object.__setattr__(self, "_idf", idf)
        object.__setattr__(self, "_vectors", vectors)
        object.__setattr__(self, "_words", tuple(frozenset(_words(s.question) + _words(s.answer or ""))
                                                 for s in self.shots))

    @classmethod
    def from_dataset(cls, data: ConflictDataset, min_count: int = MIN_TEMPLATE_COUNT) -> DemonstrationBank:
        """Every item's question with its first true answer."""
        return cls(tuple(Shot(ex.question, None, ex.org_answer[0]) for ex in data),
                   tuple(ex.relation for ex in data), min_count)

    def without(self, relations: Sequence[str]) -> DemonstrationBank:
        """The bank without the questions of ``relations`` (a held-out relation never demonstrates itself)."""
        keep = [i for i, r in enumerate(self.relations) if r not in set(relations)]
        return DemonstrationBank(tuple(self.shots[i] for i in keep), tuple(self.relations[i] for i in keep),
                                 self.min_count)

    @staticmethod
    def _embed(question: str, index: dict[str, int], idf: np.ndarray) -> np.ndarray:
        vector = np.zeros(len(idf))
        for w in set(_words(question)):
            if w in index:
                vector[index[w]] = idf[index[w]]
        norm = np.linalg.norm(vector)
        return vector / norm if norm else vector

    def nearest(self, question: str, k: int) -> list[Shot]:
        """Up to ``k`` solved questions nearest ``question`` in form (cosine of idf-weighted template words, above
        0), nearest last, with distinct answers and none sharing a subject word with it; ties are broken by a draw
        keyed on the question (reproducible)."""
        asked = _words(question)
        subject = {w for w in asked if w not in self._template and w not in FUNCTION_WORDS} | _named(question)
        template = {w: i for w, i in self._template.items() if w not in subject}
        similarity = self._vectors @ self._embed(question, template, self._idf)
        tie = random.Random(question)
        order = sorted(range(len(self.shots)), key=lambda i: (-similarity[i], tie.random()))
        chosen: list[Shot] = []
        answers: set[str] = set()
        for i in order:
            if similarity[i] <= 0:
                break
            shot = self.shots[i]
            answer = normalize_answer(shot.answer or "")
            if subject & self._words[i] or answer in answers or normalize_answer(shot.question) == " ".join(asked):
                continue
            chosen.append(shot)
            answers.add(answer)
            if len(chosen) == k:
                break
        return chosen[::-1]


@cache
def default_bank() -> DemonstrationBank:
    """The embedded broad corpus' questions and true answers (loaded once per process)."""
    return DemonstrationBank.from_dataset(load_dataset("broad", seed=0))
