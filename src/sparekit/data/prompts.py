"""Few-shot prompts of dataset items, with demonstrations from other question groups.

By default each block is ``context: {ctx}\\nquestion: {q}\\nanswer: {a}\\n\\n`` (no instruction);
closed-book blocks drop the context line, and the test item ends at ``answer:``. Any other prompt
format (:mod:`sparekit.data.formats`) renders the same demonstrations and item its own way.
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
from sparekit.data.formats import PromptFormat, QABlocks, passages
from sparekit.errors import SparekitError
from sparekit.utils.registry import unknown_name

FLAVOURS = ("sub_sub", "sub_org", "org_org", "closed")
Flavour = Literal["sub_sub", "sub_org", "org_org", "closed"]
#: the format of every shipped asset and the default everywhere
THREE_SHOT = QABlocks()


def format_block(question: str, context: str | None, answer: str | None = None) -> str:
    """One ``three_shot`` block; without ``answer`` it ends at ``answer:`` for the model to complete."""
    return THREE_SHOT.block(question, passages(context), answer)


def demo_block(example: ConflictExample, flavour: Flavour, fmt: PromptFormat = THREE_SHOT) -> str:
    """``example`` as a solved demonstration of ``flavour`` in ``fmt``."""
    flavours = {"sub_sub": (example.sub_context, example.sub_answer),
                "sub_org": (example.sub_context, example.org_answer),
                "org_org": (example.org_context, example.org_answer), "closed": (None, example.org_answer)}
    if flavour not in flavours:
        raise unknown_name("demonstration flavour", flavour, FLAVOURS)
    context, answers = flavours[flavour]
    return fmt.block(example.question, passages(context), answers[0])


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
                 rng: random.Random, fmt: PromptFormat = THREE_SHOT) -> list[str]:
    """``k`` demonstrations in ``fmt``, each from a different question group other than ``exclude_group``."""
    return [demo_block(ex, flavour, fmt) for ex in demo_examples(dataset, exclude_group, k, rng)]


def item_demos(example: ConflictExample, demo_pool: ConflictDataset, seed: int, k_shot: int,
               flavour: Flavour = "org_org", fmt: PromptFormat = THREE_SHOT) -> tuple[str, ...]:
    """The demonstrations of one test item: ``k_shot`` from ``demo_pool``'s other groups, drawn with an RNG
    keyed on (seed, item id).

    The one draw every evaluation uses (harness, probes, capture, the steering benchmark's dev
    and test prompts), so an item's prompt depends only on its pool and seed, never on which
    split it sits in or on the order of the rows.
    """
    return tuple(sample_demos(demo_pool, example.group, k_shot, flavour, random.Random(f"{seed}:{example.id}"), fmt))


def item_format(example: ConflictExample, formats: Sequence[PromptFormat]) -> PromptFormat:
    """The one of ``formats`` that ``example`` is asked in when prompts are fitted across formats: drawn with an
    RNG keyed on the item id, so it depends on neither the split nor the row order (one format: that one)."""
    if not formats:
        raise SparekitError("no prompt format to render the item in", "give at least one prompt format")
    return formats[0] if len(formats) == 1 else random.Random(f"format:{example.id}").choice(list(formats))


def build_prompt(example: ConflictExample, context: Literal["org", "sub", None], demos: Sequence[str],
                 fmt: PromptFormat = THREE_SHOT) -> str:
    """Demonstrations (blocks of ``fmt``) followed by ``example`` with its original, substituted or no context."""
    if context not in ("org", "sub", None):
        raise SparekitError(f"unknown context {context!r}", "use 'org', 'sub' or None")
    text = {"org": example.org_context, "sub": example.sub_context, None: None}[context]
    return fmt.render(example.question, passages(text), demos)


def check_prompt_text(text: str) -> None:
    """An empty or whitespace-only prompt is a clear error (checked before any model loads)."""
    if not text.strip():
        raise SparekitError("the prompt is empty", "pass the text to read, ending in 'answer:' like the probing prompts")
