"""Few-shot prompts in the papers' format, with demonstrations from other question groups.

Each block is ``context: {ctx}\\nquestion: {q}\\nanswer: {a}\\n\\n`` (no instruction);
closed-book blocks drop the context line, and the test item ends at ``answer:``.
Demonstration flavours:

- ``sub_sub``: substituted context + substituted answer (shows "follow the context");
- ``sub_org``: substituted context + original answer (shows "answer from memory");
- ``org_org``: original context + original answer (no conflict shown);
- ``closed``: no context + original answer (closed-book).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from sparekit.data.dataset import ConflictDataset, ConflictExample
from sparekit.errors import SparekitError
from sparekit.utils.registry import unknown_name

FLAVOURS = ("sub_sub", "sub_org", "org_org", "closed")
Flavour = Literal["sub_sub", "sub_org", "org_org", "closed"]


def format_block(question: str, context: str | None, answer: str | None = None) -> str:
    """One prompt block; without ``answer`` it ends at ``answer:`` for the model to complete."""
    head = "" if context is None else f"context: {context}\n"
    tail = "answer:" if answer is None else f"answer: {answer}\n\n"
    return f"{head}question: {question}\n{tail}"


def demo_block(example: ConflictExample, flavour: Flavour) -> str:
    """``example`` as a solved demonstration of ``flavour``."""
    if flavour == "sub_sub":
        return format_block(example.question, example.sub_context, example.sub_answer[0])
    if flavour == "sub_org":
        return format_block(example.question, example.sub_context, example.org_answer[0])
    if flavour == "org_org":
        return format_block(example.question, example.org_context, example.org_answer[0])
    if flavour == "closed":
        return format_block(example.question, None, example.org_answer[0])
    raise unknown_name("demonstration flavour", flavour, FLAVOURS)


def demo_examples(dataset: ConflictDataset, exclude_group: str, k: int, rng: random.Random) -> list[ConflictExample]:
    """``k`` rows, each from a different question group other than ``exclude_group``."""
    if k == 0:
        return []
    index = dataset.group_index()
    candidates = [g for g in index if g != exclude_group]
    if len(candidates) < k:
        raise SparekitError(f"{dataset.name}: {k} demonstrations need {k} other question groups, "
                            f"only {len(candidates)} available", "use a larger dataset or a smaller --k-shot")
    return [dataset[rng.choice(index[g])] for g in rng.sample(candidates, k)]


def sample_demos(dataset: ConflictDataset, exclude_group: str, k: int, flavour: Flavour,
                 rng: random.Random) -> list[str]:
    """``k`` formatted demonstrations, each from a different question group other than ``exclude_group``."""
    return [demo_block(ex, flavour) for ex in demo_examples(dataset, exclude_group, k, rng)]


def demos_for(question: str, demos: Sequence[str], k: int) -> list[str]:
    """The first ``k`` of ``demos`` that do not ask ``question`` itself (no answer leaks into the prompt)."""
    return [d for d in demos if f"question: {question}\n" not in d][:k]


def item_demos(example: ConflictExample, demo_pool: ConflictDataset, seed: int, k_shot: int,
               flavour: Flavour = "org_org") -> tuple[str, ...]:
    """The demonstrations of one test item: ``k_shot`` from ``demo_pool``'s other groups, drawn with an RNG
    keyed on (seed, item id).

    The one draw every evaluation uses (harness, probes, capture, the steering benchmark's dev
    and test prompts), so an item's prompt depends only on its pool and seed, never on which
    split it sits in or on the order of the rows.
    """
    return tuple(sample_demos(demo_pool, example.group, k_shot, flavour, random.Random(f"{seed}:{example.id}")))


def build_prompt(example: ConflictExample, context: Literal["org", "sub", None], demos: Sequence[str]) -> str:
    """Demonstrations followed by ``example`` with its original, substituted or no context."""
    if context not in ("org", "sub", None):
        raise SparekitError(f"unknown context {context!r}", "use 'org', 'sub' or None")
    text = {"org": example.org_context, "sub": example.sub_context, None: None}[context]
    return "".join(demos) + format_block(example.question, text)
