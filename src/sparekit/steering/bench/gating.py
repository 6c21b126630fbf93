"""The benchmark's conflict gate: fitted on the pool, its layer and threshold chosen on dev, cached in
``<run>/gate_probe`` (what the ``+gate`` methods read and the fitted bundles carry)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sparekit.data.dataset import ConflictDataset
from sparekit.data.formats import PromptFormat
from sparekit.data.prompts import THREE_SHOT
from sparekit.models.loading import LoadedModel
from sparekit.steering.bench.protocol import DEV_SEED, BenchConfig, eval_prompts
from sparekit.steering.gate import ProbeGate, fit_probe_gate


def cached_gate(lm: LoadedModel, pool: ConflictDataset, dev: ConflictDataset, config: BenchConfig, out: Path,
                batch_size: int, formats: Sequence[PromptFormat] = (THREE_SHOT,)) -> ProbeGate:
    """The run's gate, fitted on the first call: candidate layers from 1/3 depth on unless ``gate_layer``;
    its prompts in ``formats`` (``config.fit_formats`` built)."""
    path = out / "gate_probe"
    if (path / "config.json").is_file():
        return ProbeGate.load(path, model_hash=lm.info.model_hash)
    n_layers = lm.info.n_layers
    layers = [config.gate_layer] if config.gate_layer is not None else list(range(n_layers // 3, n_layers))
    train, held_out = ([p for ctx in ("org", "sub")
                        for p in eval_prompts(items, pool, ctx, seed, config.k_shot, formats)]
                       for items, seed in ((pool, 0), (dev, DEV_SEED)))
    gate, report = fit_probe_gate(lm, train, held_out, layers, config.gate_max_false_positive_rate, batch_size)
    gate.save(path, **report)
    return gate
