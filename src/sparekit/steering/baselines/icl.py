"""``icl``: demonstrations that show the wanted behaviour (in-context learning baseline).

Each prompt's demonstrations are replaced by ``k`` from the feature-learning pool, each
from a different question group than the test item: flavour ``sub_sub`` (substituted
context, substituted answer) toward context, ``sub_org`` (substituted context, original
answer) toward memory. The draw is seeded by ``seed`` and the example id, and is the same
for both directions, so the two steered prompts differ only in the demonstrated answers.
The pool rows are kept as learned state, so a saved method rewrites identically.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from sparekit.data.dataset import ConflictDataset, parse_row
from sparekit.data.prompts import sample_demos
from sparekit.errors import SparekitError
from sparekit.steering.base import BehaviourData, Direction, SteeringMethod, SteeringPrompt, register

FLAVOUR = {"context": "sub_sub", "memory": "sub_org"}


@register("icl")
class InContextDemonstrations(SteeringMethod):
    """Rewrite the demonstrations to ``k`` examples of the target behaviour; no strength."""

    def __init__(self, k: int = 3, seed: int = 0):
        self.k = k
        self.seed = seed

    def fit(self, data: BehaviourData) -> InContextDemonstrations:
        if not isinstance(self.k, int) or self.k < 1:
            raise SparekitError(f"icl: k must be a positive integer, got {self.k!r}")
        if data.pool is None or len(data.pool) == 0:
            raise SparekitError("icl: the behaviour data carries no feature-learning pool to draw demonstrations from",
                                "collect behaviour data with pool=<the feature-learning split>")
        if len(data.pool.groups()) <= self.k:
            raise SparekitError(f"icl: {self.k} demonstrations from other groups need more than "
                                f"{len(data.pool.groups())} question groups in the pool", "use a smaller k")
        self.pool_ = data.pool
        self.fitted_ = True
        return self

    def rewrite(self, prompts: list[SteeringPrompt], toward: Direction, strength: float | None) -> list[SteeringPrompt]:
        flavour = FLAVOUR[toward]
        return [replace(p, demos=tuple(sample_demos(self.pool_, p.example.group, self.k, flavour,  # type: ignore[arg-type]
                                                    random.Random(f"{self.seed}/{p.example.id}"), p.fmt)))
                for p in prompts]

    def state_extra(self) -> dict[str, Any]:
        return {"pool_name": self.pool_.name, "context_match": self.pool_.context_match,
                "pool": [example.to_json() for example in self.pool_]}

    def load_extra(self, extra: dict[str, Any]) -> None:
        rows = [parse_row(row, f"icl pool row {i}", str(i)) for i, row in enumerate(extra["pool"])]
        self.pool_ = ConflictDataset(rows, extra["pool_name"], extra["context_match"])
