"""Dev tuning: each method's (hyper-parameters, strength) per direction with the best dev EM toward the
target, recorded in ``<run>/tuning/<label>.json``; fits are made once per run and shared."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sparekit.data.dataset import ConflictDataset
from sparekit.data.formats import PromptFormat
from sparekit.data.prompts import THREE_SHOT
from sparekit.models.loading import LoadedModel
from sparekit.steering.base import DIRECTIONS, BehaviourData, Direction, SteeringMethod, make_method
from sparekit.steering.bench.cells import Cells
from sparekit.steering.bench.protocol import (DEV_SEED, BenchConfig, cell_params, eval_prompts, method_kind,
                                              paper_choice, partner)
from sparekit.steering.combined import Combined
from sparekit.utils.io import atomic_write_json, read_json


class Tuner:
    """Fits and tunes a run's methods on dev, reusing every fit and every cached dev cell."""

    def __init__(self, lm: LoadedModel, config: BenchConfig, out: Path, cells: Cells,
                 formats: Sequence[PromptFormat] = (THREE_SHOT,), progress: bool = True):
        self.lm, self.config, self.out, self.cells, self.progress = lm, config, out, cells, progress
        #: the dev prompts' formats (``config.fit_formats`` built)
        self.formats = tuple(formats)
        self._fits: dict[tuple[str, str], SteeringMethod] = {}

    def tune(self, label: str, data: BehaviourData, dev: ConflictDataset, pool: ConflictDataset) -> dict[str, Any]:
        """Per direction, the (params, strength) with the best dev EM toward the target.

        A gated or combined variant reuses its method's tuning (and its partner's), so ``+gate`` rows
        isolate what the gate changes.
        """
        kind, gated = method_kind(label)
        if gated or partner(label)[0]:
            return self.tune(kind, data, dev, pool)
        if self.config.protocol == "paper":
            return {toward: paper_choice(kind, self.lm.info.model_type, toward) for toward in DIRECTIONS}
        path = self.out / "tuning" / f"{label}.json"
        grid = self.config.grid(kind)
        strengths = self.config.strengths(make_method(kind))
        searched = json.loads(json.dumps({"grid": grid, "strengths": strengths}))
        previous = read_json(path) if path.is_file() else {}
        if previous.get("searched") == searched:
            return {d: v for d, v in previous.items() if d in DIRECTIONS}
        combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
        best = self._search(label, kind, combos, strengths, data, eval_prompts(dev, pool, "sub", DEV_SEED,
                                                                                self.config.k_shot, self.formats))
        atomic_write_json(path, {**best, "searched": searched})
        return best

    def _search(self, label: str, kind: str, combos: list[dict], strengths: tuple[float | None, ...],
                data: BehaviourData, dev_prompts: list) -> dict[str, Any]:
        """The grid search: every (params, direction, strength) cell on dev, the best per direction."""
        best: dict[str, Any] = {}
        bar = tqdm(total=len(combos) * len(DIRECTIONS) * len(strengths), desc=f"tune {label} on dev", unit="cell",
                   leave=False, disable=not self.progress)
        for params in combos:
            method = self.fit(kind, params, data)
            for toward in DIRECTIONS:
                for strength in strengths:
                    preds = self.cells.get("dev", label, params, method, dev_prompts, toward, strength, None)
                    score = self.cells.score(preds, dev_prompts, toward)  # type: ignore[arg-type]
                    if toward not in best or score > best[toward]["dev_em"]:
                        best[toward] = {"params": params, "strength": strength, "dev_em": score}
                    bar.update(1)
        bar.close()
        return best

    def fit(self, kind: str, params: dict, data: BehaviourData) -> SteeringMethod:
        """Fit ``kind`` with ``params`` once per run (SpARE's MI estimates are the slow part)."""
        key = (kind, json.dumps(params, sort_keys=True))
        if key not in self._fits:
            self._fits[key] = self.method(kind, params).fit(data)
        return self._fits[key]

    def method(self, kind: str, params: dict) -> SteeringMethod:
        """The unfitted method ``kind`` with ``params``, layers defaulting to the benchmark's candidates."""
        defaults = {"layers": tuple(self.config.layers)} if kind == "spare" else {}
        if "layer" not in params and hasattr(make_method(kind), "layer"):
            defaults["layer"] = sorted(self.config.layers)[len(self.config.layers) // 2]
        return make_method(kind, **{**defaults, **params})

    def cell_method(self, label: str, choice: dict, toward: Direction, data: BehaviourData, dev: ConflictDataset,
                    pool: ConflictDataset) -> tuple[SteeringMethod, dict]:
        """The fitted method of a label's cells and the parameters that name them; a combined label
        (:func:`~sparekit.steering.bench.protocol.partner`) pairs its method with its partner's dev-tuned
        fit and strength."""
        method = self.fit(method_kind(label)[0], choice["params"], data)
        other, fallback = partner(label)
        if other is None:
            return method, choice["params"]
        tuned = self.tune(other, data, dev, pool)[toward]
        combined = Combined(method, self.fit(other, tuned["params"], data), tuned["strength"], fallback)
        return combined, cell_params(label, choice["params"], tuned["strength"])
