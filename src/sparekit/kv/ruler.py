"""RULER-style long-context items (Hsieh et al. 2024), generated and seeded: what KV compression must not lose.

Five tasks, each a context (compressed after its prompt pass) and a question read through
the compressed cache, with the strings a correct answer contains:

* ``passkey``: a 5-digit key in repeated noise sentences (Mohtashami & Jaggi 2023).
* ``niah_single``: one "special magic number" for a word in Wikipedia text (the shipped NQ-Swap passages).
* ``niah_multikey``: four such needles for four words; the question asks for one.
* ``multivalue``: four numbers for the same word; all four are asked for.
* ``variable_tracking``: a chain ``VAR A = 12345. VAR B = VAR A. …`` of five variables in noise;
  every variable holding the value is asked for.

The asked (or first) needle sits at the item's depth, cycled over :data:`DEPTHS`, the
others at seeded depths (a chain's links after it, in order). The haystack is cut so that
context and question together fill ``length`` tokens of the model's tokenizer (as many
whole sentences as fit). Items depend on (task, length, seed, index) and the tokenizer only.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from sparekit.errors import SparekitError
from sparekit.kv.bench import _FILLER, _WORDS, PASSKEY_QUESTION, sentences
from sparekit.utils.registry import unknown_name

TASKS = ("passkey", "niah_single", "niah_multikey", "multivalue", "variable_tracking")
DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
_NEEDLES = 4  # needles of the multi-key and multi-value tasks
_HOPS = 5  # variables in a variable-tracking chain
_LONGEST = 300  # characters of a haystack sentence
_MAGIC_INTRO = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
                "I will quiz you about the numbers afterwards.\n")
_INTROS = {"passkey": "There is a pass key hidden inside a lot of irrelevant text. Find it and remember it. ",
           "niah_single": _MAGIC_INTRO, "niah_multikey": _MAGIC_INTRO, "multivalue": _MAGIC_INTRO,
           "variable_tracking": "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"}


@dataclass(frozen=True)
class RulerItem:
    """One generated item: ``context`` is the prompt pass, ``question`` is read through its compressed cache."""

    task: str
    length: int
    index: int
    depth: float
    context: str
    question: str
    answers: tuple[str, ...]
    steps: int  # greedy tokens enough for every answer

    @property
    def key(self) -> str:
        return f"{self.task}-{self.length}-{self.index}"

    def score(self, output: str) -> float:
        """Share of the answers the output contains (RULER's ``string_match_all``; 0 or 1 with one answer)."""
        found = sum(answer.lower() in output.lower() for answer in self.answers)
        return found / len(self.answers)


def _number(rng: random.Random) -> str:
    return str(rng.randint(10000, 99999))


def _magic(word: str, value: str) -> str:
    return f"One of the special magic numbers for {word} is: {value}."


def _ask(word: str, many: bool = False) -> str:
    if many:
        return (f"\nWhat are all the special magic numbers for {word} mentioned in the provided text? "
                f"The special magic numbers for {word} mentioned in the provided text are")
    return (f"\nWhat is the special magic number for {word} mentioned in the provided text? "
            f"The special magic number for {word} mentioned in the provided text is")


def _spec(task: str, rng: random.Random, depth: float) -> tuple[list[tuple[float, str]], str, tuple[str, ...], int]:
    """(needles at depths, question, answers, greedy steps) of one item of ``task``."""
    if task == "passkey":
        key = _number(rng)
        return [(depth, f"The pass key is {key}. Remember it. {key} is the pass key.")], PASSKEY_QUESTION, (key,), 8
    if task == "niah_single":
        word, value = rng.choice(_WORDS), _number(rng)
        return [(depth, _magic(word, value))], _ask(word), (value,), 8
    if task == "niah_multikey":
        words, values = rng.sample(_WORDS, _NEEDLES), [_number(rng) for _ in range(_NEEDLES)]
        needles = [(depth if i == 0 else rng.uniform(0.05, 0.95), _magic(w, v))
                   for i, (w, v) in enumerate(zip(words, values))]
        return needles, _ask(words[0]), (values[0],), 8
    if task == "multivalue":
        word, values = rng.choice(_WORDS), [_number(rng) for _ in range(_NEEDLES)]
        depths = [depth] + sorted(rng.uniform(depth, 1.0) for _ in values[1:])
        return [(d, _magic(word, v)) for d, v in zip(depths, values)], _ask(word, many=True), tuple(values), 30
    names = ["".join(rng.choices(string.ascii_uppercase, k=5)) for _ in range(_HOPS)]
    value = _number(rng)
    links = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in pairwise(names)]
    depths = [depth] + sorted(rng.uniform(depth, 1.0) for _ in links[1:])
    question = (f"\nQuestion: Find all variables that are assigned the value {value} in the text above. "
                f"Answer: According to the chain(s) of variable assignment in the text above, {_HOPS} variables "
                f"are assigned the value {value}, they are:")
    return list(zip(depths, links)), question, tuple(names), 24


def _place(hay: Sequence[str], needles: list[tuple[float, str]]) -> str:
    """``hay`` with each needle inserted at its depth (a share of the sentences before it)."""
    cuts = sorted((round(depth * len(hay)), i, text) for i, (depth, text) in enumerate(needles))
    out: list[str] = []
    start = 0
    for cut, _, text in cuts:
        out += hay[start:cut]
        out.append(text)
        start = max(start, cut)
    return " ".join(out + list(hay[start:]))


def _fit(tokenizer, hay: Sequence[str], needles: list[tuple[float, str]], question: str, length: int) -> str:
    """The context with the most sentences of ``hay`` whose prompt (with ``question``) fits in ``length`` tokens."""
    def fits(k: int) -> bool:
        return len(tokenizer(_place(hay[:k], needles) + question)["input_ids"]) <= length

    if not fits(0):
        raise SparekitError(f"{length} tokens cannot hold the needles and the question without any haystack",
                            "give a larger length")
    low, high = 0, len(hay)
    while low < high:  # the largest k that fits: token counts grow with k
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return _place(hay[:low], needles)


def _intro_tokens(tokenizer, task: str) -> int:
    return len(tokenizer(_INTROS[task], add_special_tokens=False)["input_ids"])


def ruler_items(tokenizer, task: str, length: int, n: int, seed: int, passages: Sequence[str]) -> list[RulerItem]:
    """``n`` items of ``task`` filling about ``length`` tokens; the same arguments give the same items."""
    if task not in TASKS:
        raise unknown_name("task", task, TASKS, where="--tasks")
    prose = task.startswith("niah") or task == "multivalue"
    # a table or list in a passage is one long "sentence": one would fill most of a prompt
    text = [s for s in sentences(passages if prose else [_FILLER]) if len(s) <= _LONGEST]
    items = []
    for index in range(n):
        rng = random.Random(f"ruler:{task}:{length}:{seed}:{index}")
        depth = DEPTHS[index % len(DEPTHS)]
        needles, question, answers, steps = _spec(task, rng, depth)
        start = rng.randrange(len(text))
        hay = [text[(start + i) % len(text)] for i in range(length // 2)]  # more sentences than can fit
        context = _INTROS[task] + _fit(tokenizer, hay, needles, question, length - _intro_tokens(tokenizer, task))
        items.append(RulerItem(task, length, index, depth, context, question, answers, steps))
    return items
