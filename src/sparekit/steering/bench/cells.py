"""The benchmark's cells: one method's generations (or answer NLLs) on one split, direction, strength and
seed, cached as one atomic JSONL file each under ``<run>/generations/<split>/``, and their scores."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sparekit.evaluation.metrics import exact_match, uses_context
from sparekit.models.loading import LoadedModel
from sparekit.steering.base import Direction, Gate, SteeringMethod, SteeringPrompt
from sparekit.steering.bench.protocol import setting_slug
from sparekit.utils.io import atomic_path

log = logging.getLogger(__name__)


class Cells:
    """Generates, caches and scores a run's cells (an interrupted run resumes from the files)."""

    def __init__(self, lm: LoadedModel, out: Path, batch_size: int, context_match: str):
        self.lm, self.out, self.batch_size, self.context_match = lm, out, batch_size, context_match

    def get(self, split: str, label: str, params: dict, method: SteeringMethod, prompts: list[SteeringPrompt],
            toward: Direction, strength: float | None, gate: Gate | None, seed: int | None = None,
            measure: str = "prediction", cached_only: bool = False) -> list | None:
        """One cell, generated or read back from ``generations/<split>/<cell>.jsonl``.

        ``measure`` is ``"prediction"`` (greedy answers) or ``"nll"`` (per-token NLL of the
        gold ``org_answer`` under the steering). Methods that do not depend on the direction
        (``directional = False``) share one cell. ``cached_only``: ``None`` instead of generating.
        A cell is read back only if every row's id *and* prompt text match, and a gated cell only under the
        same :meth:`Gate.signature`: a cell from an older prompt builder, an edited dataset or a gate that has
        changed is regenerated, never scored against other items or decisions.
        """
        way = toward if method.directional else "any"
        path = self.path(split, label, params, strength, seed, prompts[0].context if prompts else "none", way, measure)
        ids = [f"{p.example.id}:{p.context}" for p in prompts]
        texts = [_fingerprint(p.text) for p in prompts]
        signature = None if gate is None else gate.signature()
        cached = _read_cell(path, list(zip(ids, texts)), measure, signature)
        if cached is not None or cached_only:
            return cached
        with method.steer(self.lm, toward=toward, strength=strength, gate=gate, batch_size=self.batch_size) as steered:
            if measure == "prediction":
                values = steered.generate(prompts)
            else:
                values = steered.answer_nll(prompts, [p.example.org_answer[0] for p in prompts])
        with atomic_path(path) as tmp:
            gated = {} if signature is None else {"gate": signature}
            tmp.write_text("".join(json.dumps({"id": i, "prompt": t, **gated, measure: v}, ensure_ascii=False) + "\n"
                                   for i, t, v in zip(ids, texts, values)), encoding="utf-8")
        return values

    def path(self, split: str, label: str, params: dict, strength: float | None, seed: int | None, context: str,
             way: str, measure: str = "prediction") -> Path:
        """The file of one cell: ``way`` is the direction, or ``"any"`` for a method that has none."""
        cell = f"{setting_slug(label, params, strength)}-{'' if seed is None else f'seed{seed}-'}{context}-{way}"
        return self.out / "generations" / split / f"{cell}{'' if measure == 'prediction' else '-' + measure}.jsonl"

    def hit(self, pred: str, prompt: SteeringPrompt, toward: Direction) -> bool:
        """Whether ``pred`` answers toward the target: the memorised answer, or the substituted context's."""
        if prompt.context == "org" or toward == "memory":
            return exact_match(pred, prompt.example.org_answer)
        return uses_context(pred, prompt.example, self.context_match)  # type: ignore[arg-type]

    def score(self, preds: Sequence[str], prompts: Sequence[SteeringPrompt], toward: Direction) -> float:
        """The share of ``preds`` that hit the target (0 for no prompts)."""
        hits = [self.hit(p, q, toward) for p, q in zip(preds, prompts)]
        return float(np.mean(hits)) if hits else 0.0


def _read_cell(path: Path, rows: list[tuple[str, str]], measure: str, gate: str | None) -> list | None:
    """A cached cell's values if its (id, prompt) rows are ``rows``, decided by ``gate`` (its signature; None
    ungated); ``None`` if absent, stale or damaged."""
    if not path.is_file():
        return None
    try:
        saved = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        if [(r["id"], r.get("prompt")) for r in saved] == rows and all(r.get("gate") == gate for r in saved):
            return [r[measure] for r in saved]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        log.warning("%s is damaged (truncated or not JSON lines): recomputing it", path)
    return None


def _fingerprint(text: str) -> str:
    """A short hash of a prompt: cached cells are tied to the exact text that was generated from."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
