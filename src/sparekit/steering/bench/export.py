"""The benchmark's export: each label's dev-tuned fits as a fitted bundle, ``<run>/fitted/<label>/``,
the folder ``sparekit steer --fitted``, ``serve --fitted`` and ``export control-vector`` read (a combined
label, ``spare+cad``, exports its :class:`~sparekit.steering.combined.Combined` per direction)."""

from __future__ import annotations

import random
from pathlib import Path

from sparekit.data.dataset import ConflictDataset
from sparekit.data.prompts import sample_demos
from sparekit.steering.base import DIRECTIONS, Direction, Gate, SteeringMethod
from sparekit.steering.bench.tuning import Tuner
from sparekit.steering.fitted import FittedBundle, FittedSteering


def export_bundle(tuner: Tuner, label: str, tuned: dict, methods: dict[Direction, SteeringMethod],
                  pool: ConflictDataset, gate: Gate | None) -> Path:
    """Save ``label``'s fitted ``methods`` per direction with their dev-tuned settings, ``2 * k_shot`` pool
    demonstrations for new questions and ``gate`` (the label's own, else the run's conflict gate if it fitted
    one)."""
    demos = tuple(sample_demos(pool, "", 2 * tuner.config.k_shot, "org_org", random.Random(0)))
    directions = {t: FittedSteering(methods[t], tuned[t]["strength"], demos, tuned[t]["params"], tuned[t]["dev_em"])
                  for t in DIRECTIONS}
    bundle = FittedBundle(label, directions, demos, tuner.lm.info.model_hash, gate)  # type: ignore[arg-type]
    return bundle.save(tuner.out / "fitted" / label)
