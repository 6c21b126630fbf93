"""Conflict examples in the NQ-Swap schema, strict JSONL loading and group-wise splits.

A row has ``question, org_context, org_answer, sub_context, sub_answer`` (answers are
lists of aliases) and optionally ``id``, ``relation`` and ``kind`` (the kind of knowledge the
relation belongs to). Rows sharing ``question`` form one *question group*: splits and
demonstrations are drawn by group, so the same question never leaks between train and test or
from a demo into its own test item.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import string
import unicodedata
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

from sparekit.errors import SparekitError
from sparekit.utils.io import atomic_path, check_readable

REQUIRED_FIELDS = ("question", "org_context", "org_answer", "sub_context", "sub_answer")
OPTIONAL_FIELDS = ("id", "relation", "kind")
_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: unicode NFD, lower-case, drop punctuation and a/an/the, collapse whitespace."""
    s = unicodedata.normalize("NFD", s).lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


ContextMatch = Literal["answer", "substring"]


@dataclass(frozen=True)
class ConflictExample:
    """One conflict item: the same question with its original and its substituted context."""

    id: str
    question: str
    org_context: str
    org_answer: tuple[str, ...]
    sub_context: str
    sub_answer: tuple[str, ...]
    relation: str | None = None
    kind: str | None = None

    @property
    def group(self) -> str:
        """The split key: rows with the same question text belong together."""
        return self.question

    def to_json(self) -> dict:
        row = {"id": self.id, "question": self.question, "org_context": self.org_context,
               "org_answer": list(self.org_answer), "sub_context": self.sub_context,
               "sub_answer": list(self.sub_answer)}
        if self.relation is not None:
            row["relation"] = self.relation
        if self.kind is not None:
            row["kind"] = self.kind
        return row


class ConflictDataset(Sequence[ConflictExample]):
    """An immutable list of :class:`ConflictExample` with a name and its context-match rule.

    ``context_match`` says how "uses context" is judged: ``"answer"`` (EM against
    ``sub_answer``, NQ-Swap) or ``"substring"`` (the normalised prediction occurs in the
    normalised ``sub_context``, Macnoise).
    """

    def __init__(self, examples: Sequence[ConflictExample], name: str, context_match: ContextMatch = "answer"):
        if context_match not in ("answer", "substring"):
            raise SparekitError(f"unknown context_match {context_match!r}", "use 'answer' or 'substring'")
        self._examples = tuple(examples)
        self.name = name
        self.context_match = context_match
        self._by_group: dict[str, list[int]] | None = None

    def __len__(self) -> int:
        return len(self._examples)

    @overload
    def __getitem__(self, index: int) -> ConflictExample: ...
    @overload
    def __getitem__(self, index: slice) -> ConflictDataset: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.subset(range(len(self))[index])
        return self._examples[index]

    def __iter__(self) -> Iterator[ConflictExample]:
        return iter(self._examples)

    def __repr__(self) -> str:
        return f"ConflictDataset(name={self.name!r}, rows={len(self)}, groups={len(self.groups())})"

    def subset(self, indices: Sequence[int]) -> ConflictDataset:
        """The rows at ``indices`` (in that order), keeping name and context rule."""
        return ConflictDataset([self._examples[i] for i in indices], self.name, self.context_match)

    def group_index(self) -> dict[str, list[int]]:
        """Question group -> row indices, in first-appearance order."""
        if self._by_group is None:
            by_group: dict[str, list[int]] = {}
            for i, ex in enumerate(self._examples):
                by_group.setdefault(ex.group, []).append(i)
            self._by_group = by_group
        return self._by_group

    def groups(self) -> list[str]:
        return list(self.group_index())

    def relation_counts(self) -> dict[str, int]:
        """Rows per ``relation`` (``"-"`` for rows without one), in first-appearance order."""
        counts: dict[str, int] = {}
        for ex in self._examples:
            counts[ex.relation or "-"] = counts.get(ex.relation or "-", 0) + 1
        return counts

    def sample(self, limit: int, seed: int) -> ConflictDataset:
        """A seeded sample of ``limit`` rows drawn as whole question groups (the last one cut to fit)."""
        if limit < 1:
            raise SparekitError(f"limit must be >= 1, got {limit}")
        groups = self.groups()
        random.Random(seed).shuffle(groups)
        chosen: list[int] = []
        index = self.group_index()
        for group in groups:
            if len(chosen) >= limit:
                break
            chosen.extend(index[group])
        return self.subset(sorted(chosen[:limit]))


def split_by_group(dataset: ConflictDataset, fractions: Sequence[float], seed: int) -> list[ConflictDataset]:
    """Seeded disjoint splits of whole question groups, sized by ``fractions`` of the groups.

    Fractions must be positive and sum to at most 1; the last split takes the rounding rest
    when they sum to 1.
    """
    if not fractions or any(f <= 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise SparekitError(f"bad split fractions {list(fractions)}", "give positive fractions summing to <= 1")
    groups = dataset.groups()
    random.Random(seed).shuffle(groups)
    bounds, acc = [], 0.0
    for fraction in fractions:
        acc += fraction
        bounds.append(len(groups) if acc >= 1 - 1e-9 else round(acc * len(groups)))
    index = dataset.group_index()
    splits, start = [], 0
    for end in bounds:
        rows = sorted(i for group in groups[start:end] for i in index[group])
        splits.append(dataset.subset(rows))
        start = end
    return splits


def held_out_relations(dataset: ConflictDataset) -> list[str]:
    """The relations a leave-one-relation-out protocol holds out in turn (first-appearance order)."""
    return held_out_values(dataset, "relation")


def held_out_values(dataset: ConflictDataset, field: str) -> list[str]:
    """The values of ``field`` (``relation`` or ``kind``) a leave-one-out protocol holds out in turn
    (first-appearance order).

    Every row needs the field and there must be at least two values: with one, nothing is left to fit on.
    """
    missing = sum(getattr(ex, field) is None for ex in dataset)
    if missing:
        raise SparekitError(f"{dataset.name}: {missing} of {len(dataset)} rows have no {field!r} field",
                            f"give every row a {field} to split by {field}, or drop --split-by {field}")
    values = list(dict.fromkeys(getattr(ex, field) for ex in dataset))
    if len(values) < 2:
        raise SparekitError(f"{dataset.name}: only one {field} ({values[0] if values else 'none'}), "
                            "nothing to fit on when it is held out",
                            f"leave-one-{field}-out needs rows of at least two {field}s")
    return values  # type: ignore[return-value]


def breadth_draws(relations: Sequence[str], k: int, draws: int, seed: int = 0,
                  held_out: Sequence[str] | None = None) -> list[tuple[list[str], list[str]]]:
    """Does breadth buy transfer? ``draws`` seeded (held-out relations, ``k`` training relations) pairs: each
    draw holds out one relation drawn at random, or the fixed ``held_out`` set, and draws ``k`` of the others.
    One drawing for every breadth curve (the probe's, SpARE's), so their points are comparable."""
    most = len(relations) - (len(held_out) if held_out else 1)
    if not 1 <= k <= most:
        raise SparekitError(f"cannot fit on {k} relations and hold {len(held_out) if held_out else 'one'} out of "
                            f"{len(relations)}", f"choose sizes from 1 to {most}")
    out = []
    for draw in range(draws):
        rng = random.Random(f"{seed}:{k}:{draw}")
        held = list(held_out) if held_out else [rng.choice(list(relations))]
        out.append((held, rng.sample([r for r in relations if r not in held], k)))
    return out


def _answers(value, field: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise SparekitError(f"{where}: field {field!r} must be a list of strings")
    answers = tuple(a.strip() for a in value if a.strip())
    if not answers:
        raise SparekitError(f"{where}: field {field!r} is an empty answer list")
    return answers


def decode_row(line: str, where: str) -> object:
    """One JSONL line decoded; a ``\\ud800``-style escape of half a surrogate pair is refused here, with its
    line, rather than failing as an encoding error (or a traceback) wherever the text is written later."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SparekitError(f"{where}: malformed JSON ({exc.msg})") from None
    if "\\u" in line:
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SparekitError(f"{where}: holds a lone surrogate ({exc.object[exc.start]!r}), which is not text",
                                "fix the escape, a \\ud800-\\udbff half needs its \\udc00-\\udfff pair, or drop "
                                "the row") from None
    return row


def row_id(row: dict, default: str, where: str) -> str:
    """A row's ``id``: a string or an integer (``default`` when absent); an object, list or null is refused."""
    value = row.get("id", default)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise SparekitError(f"{where}: field 'id' must be a string or an integer, got {json.dumps(value)}",
                            "fix the id, or leave the 'id' field out")
    return str(value)


def parse_row(row: object, where: str, default_id: str) -> ConflictExample:
    """Validate one decoded JSON row; ``where`` (``file:line``) prefixes every error."""
    if not isinstance(row, dict):
        raise SparekitError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in row]
    if missing:
        raise SparekitError(f"{where}: missing field(s) {', '.join(missing)}",
                            f"every row needs {', '.join(REQUIRED_FIELDS)}")
    for field in ("question", "org_context", "sub_context"):
        if not isinstance(row[field], str) or not row[field].strip():
            raise SparekitError(f"{where}: field {field!r} must be a non-empty string")
    for field in ("relation", "kind"):
        if row.get(field) is not None and not isinstance(row[field], str):
            raise SparekitError(f"{where}: field {field!r} must be a string")
    return ConflictExample(
        id=row_id(row, default_id, where),
        question=row["question"].strip(),
        org_context=row["org_context"].strip(),
        org_answer=_answers(row["org_answer"], "org_answer", where),
        sub_context=row["sub_context"].strip(),
        sub_answer=_answers(row["sub_answer"], "sub_answer", where),
        relation=row.get("relation"),
        kind=row.get("kind"),
    )


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise SparekitError(f"dataset path {path} is a folder, not a file",
                            "give the .jsonl or .jsonl.gz file inside it, 'default' or 'nqswap'")
    if not path.is_file():
        raise SparekitError(f"dataset file not found: {path}", "give a .jsonl or .jsonl.gz path, 'default' or 'nqswap'")
    check_readable(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # a cut or damaged gzip stream
        raise SparekitError(f"{path}: cannot read ({exc})") from None


def read_jsonl(path: str | Path, name: str | None = None, context_match: ContextMatch = "answer") -> ConflictDataset:
    """Load a whole JSONL(.gz) file in the NQ-Swap schema, or raise one error naming file and line."""
    path = Path(path)
    stem = name or path.name.split(".")[0]
    examples: list[ConflictExample] = []
    data = _read_bytes(path).removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM, as Windows editors write
    for lineno, raw in enumerate(data.splitlines(), start=1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SparekitError(f"{where}: not valid UTF-8", "re-encode the file as UTF-8") from None
        if not line.strip():
            continue
        examples.append(parse_row(decode_row(line, where), where, default_id=f"{stem}-{lineno}"))
    if not examples:
        raise SparekitError(f"{path}: the dataset is empty")
    ids = [ex.id for ex in examples]
    if len(set(ids)) != len(ids):
        raise SparekitError(f"{path}: duplicate row ids", "ids must be unique (or leave the 'id' field out)")
    return ConflictDataset(examples, stem, context_match)


def write_jsonl(dataset: Sequence[ConflictExample], path: str | Path) -> None:
    """Write rows as JSONL (gzip-compressed for ``.gz``), atomically."""
    text = "".join(json.dumps(ex.to_json(), ensure_ascii=False) + "\n" for ex in dataset)
    with atomic_path(path) as tmp:
        if str(path).endswith(".gz"):
            with tmp.open("wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as fh:
                fh.write(text.encode("utf-8"))
        else:
            tmp.write_text(text, encoding="utf-8")
