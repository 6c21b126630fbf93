"""The offline training corpus for SAEs: de-duplicated Wikipedia passages from NQ-Swap.

NQ-Swap's ``org_context`` fields are real Wikipedia paragraphs (2,049 distinct ones,
~710k Gemma 3 tokens). They ship with sparekit's test data, need no network, and are
the very text distribution SpARE later reads. Held-out passages are chosen by
*question group* (seeded), so evaluation text never appears in training.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from sparekit.data.dataset import read_jsonl
from sparekit.data.loaders import NQSWAP_LOCAL

_TAGS = re.compile(r"</?(?:P|Table|Tr|Td|Th|Li|Ul|Ol|Dd|Dl|Dt|H\d)>")


def corpus_path(corpus: str) -> Path:
    """``'nqswap'`` (the NQ-Swap dev file shipped in the package) or a file path."""
    return NQSWAP_LOCAL if corpus == "nqswap" else Path(corpus)


def clean_passage(text: str) -> str:
    """Drop NQ's HTML-ish markers (``<P>``, ``</P>``...) and collapse whitespace."""
    return " ".join(_TAGS.sub(" ", text).split())


def nqswap_passages(path: str | Path, holdout: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """Distinct cleaned passages split into ``(train, heldout)`` by question group."""
    by_question: dict[str, list[str]] = {}
    for example in read_jsonl(path):
        by_question.setdefault(example.question, []).append(clean_passage(example.org_context))
    questions = sorted(by_question)
    random.Random(seed).shuffle(questions)
    n_held = max(1, round(holdout * len(questions))) if holdout > 0 else 0
    held = list(dict.fromkeys(p for q in questions[:n_held] for p in by_question[q]))
    held_set = set(held)
    train = list(dict.fromkeys(p for q in questions[n_held:] for p in by_question[q] if p not in held_set))
    return train, held


def token_windows(tokenizer, texts: list[str], max_tokens: int = 256) -> list[str]:
    """Split texts into pieces of at most ``max_tokens`` tokens so no text is truncated away."""
    pieces = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        step = max_tokens - 1  # room for BOS
        pieces.extend(tokenizer.decode(ids[i:i + step]).strip() for i in range(0, len(ids), step))
    return [p for p in pieces if p]


def corpus_windows(tokenizer, path: str | Path, holdout: float = 0.1, seed: int = 0,
                   max_tokens: int = 256) -> tuple[list[str], list[str]]:
    """Train and held-out NQ-Swap passages cut into windows of at most ``max_tokens`` tokens."""
    train, held = nqswap_passages(path, holdout, seed)
    return token_windows(tokenizer, train, max_tokens), token_windows(tokenizer, held, max_tokens)
