"""Per-item KV compression sweeps with 95 % intervals: RULER-style tasks, perplexity, conflicts.

Each item runs one uncompressed prompt pass (:func:`~sparekit.kv.bench.prefill`); every
(method, ratio) cell compresses its own copy of that cache and decodes the short answer
(a press never changes the prompt pass it compresses, so this equals running the prompt
pass under each press). Every (item, method, ratio) becomes one JSON line, appended and
flushed per batch, so a run resumes (the cells already written are skipped) and shards
(``shard=(i, n)`` takes every n-th item) across machines; :func:`summarize` reads the lines back.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import zip_longest
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sparekit.errors import SparekitError
from sparekit.evaluation.generation import batches, tokenize
from sparekit.evaluation.metrics import behaviour_label
from sparekit.hooks import Hooks
from sparekit.kv.bench import KVGrid, continuation_nll, decode, prefill, relative_to_uncompressed
from sparekit.kv.compress import Press
from sparekit.kv.ruler import RulerItem
from sparekit.models.loading import LoadedModel
from sparekit.probes.reading import ProbeSet, reading_sites

Cell = tuple[str, float]
LABELS = ("context", "memory", "other")


def read_records(path: Path) -> list[dict]:
    """The lines of a sweep file; a last line cut by a crash is dropped (it is recomputed)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


class Sink:
    """Appends records to a JSON-lines file, a batch at a time, and knows which (key, cell) are done."""

    def __init__(self, path: Path, resume: bool):
        records = read_records(path)
        if records and not resume:
            raise SparekitError(f"{path} already holds {len(records)} records", "pass --resume, or another --out")
        path.parent.mkdir(parents=True, exist_ok=True)
        # rewrite without a cut last line, so appended lines start on a line of their own
        text = "".join(json.dumps(r) + "\n" for r in records)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        self.path = path
        self.done = {(r["model"], r["key"], r["method"], r["ratio"]) for r in records}

    def missing(self, model: str, keys: Iterable[str], cells: Sequence[Cell]) -> list[Cell]:
        """The cells some of ``keys`` still lack."""
        keys = list(keys)
        return [cell for cell in cells if any((model, k, *cell) not in self.done for k in keys)]

    def write(self, rows: list[dict]) -> None:
        rows = [r for r in rows if (r["model"], r["key"], r["method"], r["ratio"]) not in self.done]
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        self.done |= {(r["model"], r["key"], r["method"], r["ratio"]) for r in rows}


def shard(items: Sequence, which: tuple[int, int]) -> list:
    """Every ``n``-th item from the ``i``-th (``which = (i, n)``)."""
    i, n = which
    return list(items[i::n])


def _question_batch(lm: LoadedModel, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = lm.tokenizer(questions, add_special_tokens=False, padding=True, return_tensors="pt")
    device = lm.model.device
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def run_ruler(lm: LoadedModel, items: Sequence[RulerItem], grid: KVGrid, sink: Sink) -> None:
    """Every cell of ``grid`` on every item not yet in ``sink``; items of one batch share task and length."""
    model = lm.info.name
    groups: dict[tuple[str, int], list[RulerItem]] = {}
    for item in items:
        groups.setdefault((item.task, item.length), []).append(item)
    # batches of every group in turn: a run cut short has about as many items of each
    chunks = [list(batches(group, grid.batch_size)) for group in groups.values()]
    with tqdm(total=len(items), desc="ruler items", unit="item") as bar:
        for chunk in (c for turn in zip_longest(*chunks) for c in turn if c):
            cells = sink.missing(model, [i.key for i in chunk], grid.cells())
            if cells:
                enc = tokenize(lm, [i.context for i in chunk])
                pre = prefill(lm, enc, [grid.press(*c) for c in cells])
                question, asked = _question_batch(lm, [i.question for i in chunk])
                for method, ratio in cells:
                    tokens, stats = decode(lm, enc, pre, max(i.steps for i in chunk), grid.press(method, ratio),
                                           question=question, question_mask=asked)
                    texts = lm.tokenizer.batch_decode(tokens, skip_special_tokens=True)
                    sink.write([{"model": model, "suite": "ruler", "task": i.task, "length": i.length,
                                 "key": i.key, "depth": i.depth, "method": method, "ratio": ratio,
                                 "score": i.score(text), "output": text, "kv_bytes": stats["kv_bytes"]}
                                for i, text in zip(chunk, texts)])
            bar.update(len(chunk))


def run_perplexity(lm: LoadedModel, windows: Sequence[list[int]], length: int, grid: KVGrid, sink: Sink,
                   presses: dict[Cell, Callable[[torch.Tensor], Press | None]] | None = None) -> None:
    """Summed NLL of each window's last tokens (after ``length`` compressed ones), per cell.

    ``presses`` maps each cell to run to its press for a batch's token ids ``[batch, length + scored]``
    (default: the grid's cells): a press that depends on the batch, as an oracle's does, is built only for
    the batches that still lack its cell.
    """
    model = lm.info.name
    keys = [f"ppl-{length}-{i}" for i in range(len(windows))]
    presses = presses or {c: lambda ids, c=c: grid.press(*c) for c in grid.cells()}
    with tqdm(total=len(windows), desc="perplexity windows", unit="window") as bar:
        for chunk in batches(list(zip(keys, windows)), grid.batch_size):
            cells = sink.missing(model, [k for k, _ in chunk], list(presses))
            if cells:
                ids = torch.tensor([w for _, w in chunk], device=lm.model.device)
                scored = ids.shape[1] - length
                result = continuation_nll(lm, ids, scored, {c: presses[c](ids) for c in cells})
                for (method, ratio), (nll, kv_bytes, _) in result.items():
                    sink.write([{"model": model, "suite": "ppl", "task": "perplexity", "length": length, "key": key,
                                 "method": method, "ratio": ratio, "nll": float(row_nll), "tokens": scored - 1,
                                 "kv_bytes": kv_bytes} for (key, _), row_nll in zip(chunk, nll)])
            bar.update(len(chunk))


def split_question(prompt: str) -> tuple[str, str]:
    """A conflict prompt as (demonstrations and passage: the prompt pass, ``question: …\\nanswer:``)."""
    cut = prompt.rindex("question: ")
    return prompt[:cut], prompt[cut:]


def demonstration_tokens(lm: LoadedModel, prompt_passes: Sequence[str]) -> tuple[int, ...]:
    """Leading tokens of each prompt pass that hold its demonstrations (all before the last ``context: ``).

    Counted as the common start of the token ids of the demonstrations alone and of the
    whole pass, so a token spanning the boundary counts as the passage's (it is compressed).
    """
    counts = []
    for text in prompt_passes:
        demos, whole = (lm.tokenizer(t)["input_ids"] for t in (text[:text.rindex("context: ")], text))
        counts.append(next((i for i, (a, b) in enumerate(zip(demos, whole)) if a != b), min(len(demos), len(whole))))
    return tuple(counts)


def _probe_hooks(lm: LoadedModel, probes: ProbeSet | None) -> Hooks:
    """Captures at the probes' sites on every call: the first after the prompt pass is the question's."""
    hooks = Hooks(lm)
    for site in reading_sites(probes=probes):
        hooks.capture(site, positions=-1, when="always", dtype=torch.float32)
    return hooks


@dataclass(frozen=True)
class CellAnswers:
    """One (method, ratio) cell's answers to a batch of conflict prompts."""

    texts: list[str]  # each answer's first line, stripped
    kv_bytes: int
    decode_s: float
    readings: list[dict] | None  # the probes' reading at each question's last token (None without probes)


def answer_conflicts(lm: LoadedModel, prompts: Sequence[str], cells: Sequence[Cell], grid: KVGrid,
                     probes: ProbeSet | None = None, compress_demonstrations: bool = False,
                     steps: int = 12) -> tuple[tuple[int, ...], dict[Cell, CellAnswers]]:
    """One batch of conflict prompts under every cell: ``(demonstration tokens per prompt, {cell: answers})``.

    The prompt pass holds the demonstrations and the passage; the question is read through the
    compressed cache. Only the passage is compressed: the demonstrations are an uncompressed
    prefix (``keep_first``), outside the ratio, so a cell measures the passage's eviction, not
    the answer format's (``compress_demonstrations`` compresses them with it). They stay where
    the harness puts them (moving them after the passage would part the question from its
    passage and change the uncompressed prompt too). The probes read the question's last token
    through the compressed cache, so compression can move their reading.
    """
    parts = [split_question(p) for p in prompts]
    enc = tokenize(lm, [context for context, _ in parts])
    demos = demonstration_tokens(lm, [context for context, _ in parts])
    first = tuple(0 for _ in demos) if compress_demonstrations else demos
    presses = {c: replace(p, keep_first=first) if (p := grid.press(*c)) else None for c in cells}
    pre = prefill(lm, enc, presses.values())
    question, asked = _question_batch(lm, [q for _, q in parts])
    out = {}
    for cell, press in presses.items():
        with _probe_hooks(lm, probes) as hooks:
            tokens, stats = decode(lm, enc, pre, steps, press, stop_at_newline=True, question=question,
                                   question_mask=asked)
        readings = probes.read({s: hooks.all(s)[0] for s in probes.sites.values()}) if probes else None
        texts = [t.split("\n", 1)[0].strip() for t in lm.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
        out[cell] = CellAnswers(texts, stats["kv_bytes"], stats["decode_s"], readings)
    return demos, out


def run_conflict(lm: LoadedModel, examples: Sequence, prompts: Sequence[str], grid: KVGrid, sink: Sink,
                 probes: ProbeSet | None, dataset: str) -> None:
    """Knowledge source of each conflict answer and the probes' reading per cell (:func:`answer_conflicts`),
    one record per (item, cell) in ``sink``."""
    model = lm.info.name
    with tqdm(total=len(examples), desc="conflict items", unit="item") as bar:
        for chunk in batches(list(range(len(examples))), grid.batch_size):
            cells = sink.missing(model, [examples[i].id for i in chunk], grid.cells())
            if cells:
                demos, answers = answer_conflicts(lm, [prompts[i] for i in chunk], cells, grid, probes)
                for (method, ratio), got in answers.items():
                    sink.write([{"model": model, "suite": "conflict", "task": dataset, "length": 0,
                                 "key": examples[i].id, "method": method, "ratio": ratio, "output": text,
                                 "label": behaviour_label(text, examples[i]), "kv_bytes": got.kv_bytes,
                                 "demonstration_tokens": demos[row], **(got.readings[row] if got.readings else {})}
                                for row, (i, text) in enumerate(zip(chunk, got.texts))])
            bar.update(len(chunk))


def conflict_shares(lm: LoadedModel, prompts: Sequence[str], examples: Sequence, grid: KVGrid,
                    compress_demonstrations: bool = False) -> dict:
    """Knowledge-source shares (context / memory / other) of conflict answers per (method, ratio)
    (:func:`answer_conflicts`, so ``sparekit kv conflict`` measures what the benchmark does), with the
    KV bytes and decode time relative to the uncompressed cell."""
    rows: dict[Cell, dict] = {}
    for chunk in batches(list(range(len(prompts))), grid.batch_size):
        _, answers = answer_conflicts(lm, [prompts[i] for i in chunk], grid.cells(), grid,
                                      compress_demonstrations=compress_demonstrations)
        for cell, got in answers.items():
            row = rows.setdefault(cell, {"labels": [], "kv_bytes": 0, "decode_s": 0.0})
            row["labels"] += [behaviour_label(t, examples[i]) for t, i in zip(got.texts, chunk)]
            row["kv_bytes"] += got.kv_bytes
            row["decode_s"] += got.decode_s

    def shares(row: dict) -> dict:
        n = len(row["labels"])
        return {label: row["labels"].count(label) / n for label in LABELS} | {"n": n}

    return relative_to_uncompressed(rows, shares)


# -- intervals and the summary --------------------------------------------------------------------------------


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default)."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)  # rounding may step just outside [0, 1]


def bootstrap(values: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], n: int = 2000,
              seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of ``stat`` over items resampled with replacement.

    ``values`` is ``[items, k]``; ``stat`` maps ``[resamples, items, k]`` to ``[resamples]``.
    """
    rng = np.random.default_rng(seed)
    draws = stat(values[rng.integers(0, len(values), size=(n, len(values)))])
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def _ppl(v: np.ndarray) -> np.ndarray:
    return np.exp(v[..., 0].sum(-1) / v[..., 1].sum(-1))


def _ppl_change(v: np.ndarray) -> np.ndarray:
    return np.exp((v[..., 0].sum(-1) - v[..., 2].sum(-1)) / v[..., 1].sum(-1)) - 1


def _cell_stats(rows: list[dict], base: dict[str, dict]) -> dict:
    """Score and its interval, and the change from the uncompressed cell on the same items (paired)."""
    paired = [r for r in rows if r["key"] in base]
    out: dict = {"n": len(rows), "kv_bytes": float(np.mean([r["kv_bytes"] for r in rows]))}
    if rows[0]["suite"] == "ppl":
        v = np.array([[r["nll"], r["tokens"], base[r["key"]]["nll"]] for r in paired] or [[0.0, 1.0, 0.0]])
        out.update(score=float(_ppl(v[None])[0]), interval=bootstrap(v, _ppl), tokens=sum(r["tokens"] for r in rows),
                   change=float(_ppl_change(v[None])[0]), change_interval=bootstrap(v, _ppl_change))
    elif rows[0]["suite"] == "conflict":
        for label in LABELS:
            hits = sum(r["label"] == label for r in rows)
            out[label] = (hits / len(rows), wilson(hits, len(rows)))
        for name in ("conflict_probability", "context_probability"):
            probs = np.array([[r[name]] for r in rows if r.get(name) is not None])
            if len(probs):
                out[name] = (float(probs.mean()), bootstrap(probs, lambda v: v[..., 0].mean(-1)))
        moved = [r for r in paired if base[r["key"]]["label"] == "context"]
        hits = sum(r["label"] == "memory" for r in moved)
        out["context_to_memory"] = (hits / len(moved) if moved else math.nan, wilson(hits, len(moved)))
    else:
        scores = np.array([r["score"] for r in rows])
        binary = bool(np.isin(scores, (0.0, 1.0)).all())
        out.update(score=float(scores.mean()), interval=wilson(scores.sum(), len(scores)) if binary
                   else bootstrap(scores[:, None], lambda v: v[..., 0].mean(-1)))
        v = np.array([[r["score"] - base[r["key"]]["score"]] for r in paired] or [[0.0]])
        out.update(change=float(v.mean()), change_interval=bootstrap(v, lambda x: x[..., 0].mean(-1)))
    return out


def summarize(records: Iterable[dict]) -> list[dict]:
    """One row per (model, suite, task, length, method, ratio), ratio 0 (``none``) once per group.

    A record repeated across files (shards that overlap, a copied file) counts once.
    """
    groups: dict[tuple, dict[Cell, list[dict]]] = {}
    seen = set()
    for r in records:
        if (r["model"], r["key"], r["method"], r["ratio"]) in seen:
            continue
        seen.add((r["model"], r["key"], r["method"], r["ratio"]))
        groups.setdefault((r["model"], r["suite"], r["task"], r["length"]), {}).setdefault((r["method"], r["ratio"]),
                                                                                          []).append(r)
    out = []
    for (model, suite, task, length), cells in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        base = {r["key"]: r for r in cells.get(("none", 0.0), [])}
        for (method, ratio), rows in sorted(cells.items(), key=lambda kv: (kv[0][0] != "none", kv[0])):
            out.append({"model": model, "suite": suite, "task": task, "length": length, "method": method,
                        "ratio": ratio, **_cell_stats(rows, base)})
    return out
