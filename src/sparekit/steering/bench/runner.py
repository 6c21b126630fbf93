"""The steering benchmark's run: every method through one loop, tuned on dev, scored on test.

Per method, seed and direction: EM toward the target under conflict (``em_memory``:
steered toward memory and answers ``org_answer``; ``em_context``: steered toward
context and answers ``sub_answer``), the conditional moves relative to the unsteered
answer, and EM on the same questions *without* conflict (``org_context``) under the
same steering, so harm is visible. Every generation is cached in the run directory
(:mod:`~sparekit.steering.bench.cells`) and an interrupted run resumes; a rerun with a wider
grid re-tunes on dev, generating only the new cells. The protocol is in
:mod:`~sparekit.steering.bench.protocol`, the splits in :mod:`~sparekit.steering.bench.data`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sparekit.data.dataset import ConflictDataset, held_out_values
from sparekit.data.formats import DEFAULT_FORMAT, prompt_format
from sparekit.errors import SparekitError
from sparekit.evaluation.generation import batches
from sparekit.evaluation.harness import dataset_fingerprint, mean_std
from sparekit.evaluation.metrics import behaviour_label, conditional_metrics
from sparekit.models.loading import LoadedModel
from sparekit.reporting.steering import HEADLINE, mean_frontier
from sparekit.steering.base import DIRECTIONS, BehaviourData, Gate, SteeringPrompt, make_method
from sparekit.steering.bench.cells import Cells
from sparekit.steering.bench.data import Splits, benchmark_splits, cached_behaviour, memorised_items
from sparekit.steering.bench.export import export_bundle
from sparekit.steering.bench.gating import cached_gate
from sparekit.steering.bench.protocol import EXTENSIBLE, BenchConfig, method_kind, partner, test_prompts
from sparekit.steering.bench.tuning import Tuner
from sparekit.steering.gate import ProbeGate, RecallGate
from sparekit.utils.arrays import to_numpy
from sparekit.utils.distributed import barrier, rank_and_world
from sparekit.utils.io import atomic_write_json
from sparekit.utils.rundir import RunDir

#: (pool, dev, test, behaviour data, gate or None, unsteered labels per seed): what every method's cells need
_Shared = tuple[ConflictDataset, ConflictDataset, ConflictDataset, BehaviourData, ProbeGate | None,
                dict[int, list[str]]]


class SteeringBenchmark:
    """Runs :class:`BenchConfig` on one model and dataset, caching every generation in ``out_dir``."""

    def __init__(self, lm: LoadedModel, dataset: ConflictDataset, config: BenchConfig, out_dir: str | Path,
                 batch_size: int = 8, progress: bool = True, memorised_file: str | Path | None = None):
        self.lm, self.dataset, self.config = lm, dataset, config
        self.out = Path(out_dir)
        #: the closed-book memorised ids (one file may serve several runs on the same model and dataset)
        self.memorised_file = Path(memorised_file) if memorised_file is not None else self.out / "memorised.json"
        self.batch_size, self.progress = batch_size, progress
        self.run_dir = RunDir(self.out, "steering benchmark")
        self.cells = Cells(lm, self.out, batch_size, dataset.context_match)
        #: the prompt formats of everything fitted or tuned, and of the test prompts (``chat`` reads the
        #: tokenizer's template: a model without one fails here)
        self.fit_formats = tuple(prompt_format(name, lm.tokenizer) for name in config.fit_formats)
        self.test_format = prompt_format(config.test_format, lm.tokenizer)
        self.tuner = Tuner(lm, config, self.out, self.cells, self.fit_formats, progress)
        #: one recall gate for every +recall label: its closed-book answers are shared across methods
        self.recall_gate = RecallGate()
        config_record = {"kind": "bench-steer", "dataset": dataset.name, "n_rows": len(dataset),
                         "dataset_sha256": dataset_fingerprint(dataset), "model": lm.info.name,
                         "model_hash": lm.info.model_hash, **config.record()}
        self.run_dir.prepare(config_record, ignore=EXTENSIBLE)

    # -- what every method's cells share -------------------------------------------------------
    def splits(self) -> Splits:
        """(pool, dev, test) memorised items (:func:`~sparekit.steering.bench.data.benchmark_splits`)."""
        memorised = memorised_items(self.lm, self.dataset, self.memorised_file, self.config.k_shot, self.batch_size,
                                    self.config.memorised_seeds)
        return benchmark_splits(memorised, self.dataset, self.config)

    def behaviour(self, pool: ConflictDataset) -> BehaviourData:
        """The pool's behaviour data, cached in the run directory."""
        return cached_behaviour(self.lm, pool, self.config, self.out, self.dataset.context_match, self.batch_size,
                                self.progress, self.fit_formats)

    def conflict_gate(self, pool: ConflictDataset, dev: ConflictDataset) -> ProbeGate:
        """The conflict probe gating ``+gate`` methods: fitted on the pool, layer and threshold chosen on dev."""
        return cached_gate(self.lm, pool, dev, self.config, self.out, self.batch_size, self.fit_formats)

    def gate_for(self, label: str, conflict_gate: ProbeGate | None) -> Gate | None:
        """The gate of ``label``'s cells: the run's conflict probe (``+gate``), the recall gate (``+recall``), or
        none."""
        return {"gate": conflict_gate, "recall": self.recall_gate, None: None}[method_kind(label)[1]]

    def fire_rates(self, gate: Gate, test: ConflictDataset, pool: ConflictDataset) -> dict[str, dict[str, float]]:
        """The share of test prompts ``gate`` lets steering act on, with conflict (``sub``) and without
        (``org``), mean ± std over seeds: how often a gated method steers at all."""
        rates = {}
        for context in ("sub", "org"):
            per_seed = []
            for seed in self.config.seeds:
                prompts = self.test_prompts(test, pool, context, seed)
                fired = np.concatenate([to_numpy(gate.decide(self.lm, chunk))
                                        for chunk in batches(prompts, self.batch_size)])
                per_seed.append(float(fired.mean()) if len(fired) else 0.0)
            rates[context] = mean_std(per_seed)
        return rates

    def test_prompts(self, test: ConflictDataset, pool: ConflictDataset, context: str,
                     seed: int) -> list[SteeringPrompt]:
        return test_prompts(self.config, test, pool, context, seed, self.test_format)

    def _shared(self) -> _Shared:
        """What every method's cells need: the splits, behaviour data, the gate and the unsteered labels."""
        pool, dev, test = self.splits()
        data = self.behaviour(pool)
        gate = self.conflict_gate(pool, dev) if any(method_kind(m)[1] == "gate" for m in self.config.methods) \
            else None
        return pool, dev, test, data, gate, self._unsteered(test, pool)

    def _unsteered(self, test: ConflictDataset, pool: ConflictDataset) -> dict[int, list[str]]:
        """Unsteered labels on the conflict prompts, per seed (for the conditional metrics)."""
        none = make_method("none")
        labels = {}
        for seed in self.config.seeds:
            prompts = self.test_prompts(test, pool, "sub", seed)
            preds = self.cells.get(self.config.test_split, "none", {}, none, prompts, "context", None, None, seed)
            labels[seed] = [behaviour_label(p, q.example, self.dataset.context_match)
                            for p, q in zip(preds, prompts)]  # type: ignore[arg-type]
        return labels

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> dict:
        """The benchmark: every method tuned on dev and scored on test (``results.json``, then ``done``)."""
        with self.run_dir.running():
            return self._run()

    def _run(self) -> dict:
        rank, world = rank_and_world()
        pool, dev, test, data, gate, baseline = self._run_share(rank, world) if world > 1 else self._shared()
        labels = data.labels
        summary: dict[str, Any] = {
            "dataset": self.dataset.name, "model": self.lm.info.name, "model_hash": self.lm.info.model_hash,
            "splits": {"pool_groups": len(pool.groups()), "dev_groups": len(dev.groups()),
                       "test_items": len(test), "test_groups": len(test.groups())},
            "behaviour": {"n": int(len(labels)), "uses_context": int((labels == 1).sum()),
                          "uses_memory": int((labels == 0).sum()), **data.meta},
            "seeds": list(self.config.seeds), "methods": {},
        }
        for label in tqdm(self.config.methods, desc="methods", disable=not self.progress or rank != 0):
            summary["methods"][label] = self._evaluate(label, data, dev, test, pool, gate, baseline)
            if rank == 0:
                atomic_write_json(self.out / self.config.output("results.json"), summary)
        return summary

    def _run_share(self, rank: int, world: int) -> _Shared:
        """Data-parallel phase (under ``torchrun`` / ``accelerate launch``): rank 0 builds what the methods
        share while the others wait; then each rank tunes and tests its own methods (a method with its
        gated and combined variants, which reuse its tuning); after the barrier every cell is on disk.
        Returns what :meth:`_shared` returns, built once per rank."""
        families = list(dict.fromkeys(method_kind(label)[0] for label in self.config.methods))
        if world > len(families):
            raise SparekitError(f"{world} ranks for {len(families)} methods: some ranks would have nothing to do",
                                f"launch at most {len(families)} processes, or benchmark more methods")
        shared = self._shared() if rank == 0 else None
        barrier()
        pool, dev, test, data, gate, baseline = shared or self._shared()  # the others read rank 0's files back
        mine = families[rank::world]
        for label in self.config.methods:
            if method_kind(label)[0] in mine:
                self._evaluate(label, data, dev, test, pool, gate, baseline)
        barrier()
        return pool, dev, test, data, gate, baseline

    def _evaluate(self, label: str, data: BehaviourData, dev: ConflictDataset, test: ConflictDataset,
                  pool: ConflictDataset, gate: ProbeGate | None, baseline: dict[int, list[str]]) -> dict[str, Any]:
        """One method's test scores, mean ± std over seeds, its dev tuning, and its export."""
        tuned = self.tuner.tune(label, data, dev, pool)
        use_gate = self.gate_for(label, gate)
        per_seed: dict[str, list[float]] = {"em_memory": [], "em_context": [], "em_no_conflict": [],
                                            "em_no_conflict_memory": [], "em_no_conflict_context": []}
        moves: dict[str, list] = {"memory": [], "context": []}
        bar = tqdm(total=len(self.config.seeds) * 4, desc=label, leave=False, disable=not self.progress)
        methods = {toward: self.tuner.cell_method(label, tuned[toward], toward, data, dev, pool)
                   for toward in DIRECTIONS}
        for seed in self.config.seeds:
            for toward in DIRECTIONS:
                method, params = methods[toward]
                for context in ("sub", "org"):
                    prompts = self.test_prompts(test, pool, context, seed)
                    preds = self.cells.get(self.config.test_split, label, params, method, prompts, toward,
                                           tuned[toward]["strength"], use_gate, seed)
                    score = self.cells.score(preds, prompts, toward)  # type: ignore[arg-type]
                    per_seed[f"em_{toward}" if context == "sub" else f"em_no_conflict_{toward}"].append(score)
                    if context == "sub":
                        after = [behaviour_label(p, q.example, self.dataset.context_match)
                                 for p, q in zip(preds, prompts)]  # type: ignore[arg-type]
                        moves[toward].append(conditional_metrics(baseline[seed], after))
                    bar.update(1)
            per_seed["em_no_conflict"].append((per_seed["em_no_conflict_memory"][-1]
                                               + per_seed["em_no_conflict_context"][-1]) / 2)
        bar.close()
        result: dict[str, Any] = {name: mean_std(values) for name, values in per_seed.items()}
        result["conditional"] = {toward: {key: mean_std([m[key] for m in runs]) for key in runs[0]}
                                 for toward, runs in moves.items()}
        result.update(tuned=tuned, per_seed=per_seed)
        if use_gate is not None:
            result["gate_fired"] = self.fire_rates(use_gate, test, pool)
        other = partner(label)[0]
        if other is not None:
            result["tuned_partner"] = self.tuner.tune(other, data, dev, pool)
        if rank_and_world()[0] == 0:  # one writer: in a data-parallel run every rank evaluates every label
            export_bundle(self.tuner, label, tuned, {t: m for t, (m, _) in methods.items()}, pool, use_gate or gate)
        return result

    # -- the frontier ---------------------------------------------------------------------------
    def frontier(self, labels: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                 cached_only: bool = False) -> dict[str, Any]:
        """Strength sweep per method and direction on test: EM toward the target vs EM without conflict
        and vs the gold answer's per-token NLL without conflict (fluency), each point the mean over ``seeds``
        (default: the run's test-demonstration seeds, as the tuned rows are).

        Uses each method's dev-tuned parameters and its dev grid plus ``sweep_strengths``; the
        frontier (not one setting) is the fair comparison between a dense vector and SpARE.
        ``cached_only`` draws what earlier runs generated and skips points not yet computed for every seed.
        """
        with self.run_dir.lock():
            pool, dev, test = self.splits()
            data = self.behaviour(pool)
            labels = labels or self.config.methods
            gate = self.conflict_gate(pool, dev) if any(method_kind(m)[1] == "gate" for m in labels) else None
            prompts = {seed: {context: self.test_prompts(test, pool, context, seed) for context in ("sub", "org")}
                       for seed in (seeds or self.config.seeds)}
            bar = tqdm(total=0, desc="frontier", unit="point", disable=not self.progress or cached_only)
            curves = {label: {toward: self._sweep(label, toward, data, dev, pool, prompts, gate, cached_only, bar)
                              for toward in DIRECTIONS} for label in labels}
            bar.close()
            atomic_write_json(self.out / self.config.output("frontier.json"), curves)
            return curves

    def _sweep(self, label: str, toward: str, data: BehaviourData, dev: ConflictDataset, pool: ConflictDataset,
               prompts: dict[int, dict[str, list[SteeringPrompt]]], gate: ProbeGate | None,
               cached_only: bool, bar: tqdm) -> list[dict[str, Any]]:
        """One method's frontier toward ``toward``: a point per strength whose three cells exist for every seed of
        ``prompts``, each value the seeds' mean; ``bar`` counts the (strength, seed) points done."""
        kind = method_kind(label)[0]
        tuned = self.tuner.tune(label, data, dev, pool)[toward]
        method, params = self.tuner.cell_method(label, tuned, toward, data, dev, pool)  # type: ignore[arg-type]
        points = []
        strengths = self.config.sweep(self.tuner.fit(kind, tuned["params"], data))
        bar.total += len(strengths) * len(prompts)
        bar.set_postfix_str(f"{label} → {toward}")
        for strength in strengths:
            cell = (self.config.test_split, label, params, method)
            per_seed = []
            for seed, seeded in prompts.items():
                args = (toward, strength, self.gate_for(label, gate), seed)
                conflict = self.cells.get(*cell, seeded["sub"], *args, cached_only=cached_only)
                no_conflict = self.cells.get(*cell, seeded["org"], *args, cached_only=cached_only)
                nll = self.cells.get(*cell, seeded["org"], *args, "nll", cached_only=cached_only)
                bar.update()
                if conflict is None or no_conflict is None or nll is None:
                    break
                per_seed.append((self.cells.score(conflict, seeded["sub"], toward),
                                 self.cells.score(no_conflict, seeded["org"], toward), float(np.mean(nll))))
            else:
                target, free, nll_mean = (float(np.mean(values)) for values in zip(*per_seed))
                points.append({"strength": strength, "em_target": target, "em_no_conflict": free,
                               "answer_nll_no_conflict": nll_mean, "seeds": len(per_seed)})
        return points


def held_out_folds(dataset: ConflictDataset, config: BenchConfig, field: str) -> dict[str, BenchConfig]:
    """Each fold's config by its held-out value: a relation or a kind (``field``) of ``dataset``, or a prompt
    format (``field="format"``: each of ``config.fit_formats`` in turn is the test format, the others are fitted on)."""
    if field != "format":
        return {value: replace(config, **{f"held_out_{field}": value}) for value in held_out_values(dataset, field)}
    if len(config.fit_formats) < 2:
        raise SparekitError("leave one format out needs at least two --fit-formats, one to test and one to fit on",
                            "e.g. --fit-formats three_shot,zero_shot,rag,llamaindex")
    if config.test_format != DEFAULT_FORMAT:
        raise SparekitError("--split-by format tests each of --fit-formats in turn",
                            "drop --test-format, or run one fold with --test-format and the other --fit-formats")
    return {fmt: replace(config, test_format=fmt, fit_formats=tuple(f for f in config.fit_formats if f != fmt))
            for fmt in config.fit_formats}


def _held_out_runners(lm: LoadedModel, dataset: ConflictDataset, config: BenchConfig, out: Path, batch_size: int,
                      progress: bool, field: str) -> Iterator[tuple[str, SteeringBenchmark]]:
    """One benchmark per fold of :func:`held_out_folds`, in ``<out>/held-out-<value>``, sharing one closed-book
    pass."""
    for value, fold in held_out_folds(dataset, config, field).items():
        yield value, SteeringBenchmark(lm, dataset, fold, out / f"held-out-{value}", batch_size, progress,
                                       memorised_file=out / "memorised.json")


def leave_one_out(lm: LoadedModel, dataset: ConflictDataset, config: BenchConfig, out_dir: str | Path,
                  batch_size: int = 8, progress: bool = True, field: str = "relation") -> dict[str, Any]:
    """The benchmark once per relation (``field="kind"``: per kind of knowledge; ``"format"``: per prompt format of
    ``config.fit_formats``) held out (``<out>/held-out-<value>``), and the mean over those folds.

    Each run fits behaviour data, methods and the gate, and tunes on dev, using the other
    relations (kinds, formats) only, then tests on the held-out one. ``methods[label][metric]`` is the
    mean over folds of each run's mean over seeds, with the std across folds (the spread) and
    the ``worst`` and ``best`` fold.
    """
    out = Path(out_dir)
    with RunDir(out, f"leave-one-{field}-out benchmark").running():
        runs = {value: runner.run()
                for value, runner in _held_out_runners(lm, dataset, config, out, batch_size, progress, field)}
        summary = {"split_by": field, "dataset": dataset.name, "model": lm.info.name,
                   "model_hash": lm.info.model_hash, **fold_summary(runs, config.methods)}
        atomic_write_json(out / config.output("results.json"), summary)
    return summary


def fold_summary(runs: dict[str, dict], methods: Sequence[str]) -> dict[str, Any]:
    """``folds``, ``methods`` and ``held_out`` of a leave-one-out summary from its folds' results: per method
    and headline metric, the mean over folds of each fold's mean over seeds, the std across folds (the
    spread), the worst and the best fold."""
    def stats(values: list[float]) -> dict[str, float]:
        return {**mean_std(values), "worst": min(values), "best": max(values)}

    return {"folds": list(runs), "held_out": runs,
            "methods": {label: {metric: stats([run["methods"][label][metric]["mean"] for run in runs.values()])
                                for metric in HEADLINE} for label in methods}}


def leave_one_out_frontier(lm: LoadedModel, dataset: ConflictDataset, config: BenchConfig, out_dir: str | Path,
                           batch_size: int = 8, progress: bool = True, cached_only: bool = False,
                           field: str = "relation") -> dict[str, Any]:
    """The frontier of each held-out run of :func:`leave_one_out` (same folders), and the mean
    curve over folds: a point per strength computed on every held-out relation (kind)."""
    folds = list(held_out_folds(dataset, config, field))
    out = Path(out_dir)
    with RunDir(out, f"leave-one-{field}-out frontier").running():
        held_out = {value: runner.frontier(cached_only=cached_only)
                    for value, runner in _held_out_runners(lm, dataset, config, out, batch_size, progress, field)}
        result = {"folds": folds, "mean": mean_frontier(list(held_out.values())), "held_out": held_out}
        atomic_write_json(out / config.output("frontier.json"), result)
    return result
