"""The steering benchmark: every method through one loop, tuned on dev, scored on test.

Protocol (method.md, SpARE section): the memorised items of a dataset are split by
question group into a feature-learning *pool* (behaviour data, ICL demonstrations,
the gate's conflict probe), a *dev* split (each method's hyper-parameters and
strength per direction) and a *test* split (every reported number). Test prompts use
``k_shot`` org_ctx/org_ans demonstrations from the pool, a different draw per seed.

Per method, seed and direction: EM toward the target under conflict (``em_memory``:
steered toward memory and answers ``org_answer``; ``em_context``: steered toward
context and answers ``sub_answer``), the conditional moves relative to the unsteered
answer, and EM on the same questions *without* conflict (``org_context``) under the
same steering, so harm is visible. Every generation is cached in the run directory
(one atomic JSONL file per cell) and an interrupted run resumes; a rerun with a wider
grid re-tunes on dev, generating only the new cells.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sparekit.data.dataset import ConflictDataset, held_out_relations, split_by_group
from sparekit.data.prompts import demo_block, item_demos, sample_demos
from sparekit.errors import SparekitError
from sparekit.evaluation.harness import dataset_fingerprint, mean_std, memorised_subset
from sparekit.evaluation.metrics import behaviour_label, conditional_metrics, exact_match, uses_context
from sparekit.models.loading import LoadedModel
from sparekit.steering.base import DIRECTIONS, BehaviourData, Direction, Gate, SteeringMethod, SteeringPrompt, make_method
from sparekit.steering.behaviour import behaviour_prompts, collect_behaviour_data
from sparekit.steering.fitted import FittedBundle, FittedSteering
from sparekit.steering.gate import ProbeGate, fit_probe_gate
from sparekit.utils.distributed import barrier, rank_and_world
from sparekit.utils.guards import warn_small_data
from sparekit.utils.io import atomic_path, atomic_write_json, atomic_write_text, read_json
from sparekit.utils.rundir import RunDir

DEFAULT_METHODS = ("none", "icl", "cad", "dola", "actadd", "sea", "knob", "spare", "spare+gate")
#: config keys a rerun may change: methods run, the dev grids (a changed grid is re-tuned, reusing every
#: cell already generated) and the seeds (they choose only the test demonstrations; behaviour data, fits
#: and dev tuning never read them, so added seeds add test cells only)
_EXTENSIBLE = ("methods", "param_grids", "strength_grids", "sweep_strengths", "seeds")
#: (pool, dev, test, behaviour data, gate or None, unsteered labels per seed): what every method's cells need
_Shared = tuple[ConflictDataset, ConflictDataset, ConflictDataset, BehaviourData, Gate | None, dict[int, list[str]]]
#: the demonstration seed of the dev prompts (test prompts use the config's seeds)
DEV_SEED = 7
#: "sparekit": this project's protocol (module docstring); "paper": the official SpARE code's (:func:`paper_config`)
PROTOCOLS = ("sparekit", "paper")

log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    """Everything that determines a steering benchmark's numbers."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: tuple[int, ...] = (42, 43, 44)
    layers: tuple[int, ...] = (5, 6, 7, 8)
    pool_groups: int = 128
    dev_groups: int = 32
    test_limit: int | None = 150
    behaviour_seeds: tuple[int, ...] = (0, 1)
    k_shot: int = 3
    split_seed: int = 0
    gate_layer: int | None = None  # default: the best dev AUROC among the layers from 1/3 depth on
    gate_max_false_positive_rate: float = 0.05  # the gate's threshold: this share of dev no-conflict prompts fire
    param_grids: dict[str, dict[str, list]] = field(default_factory=dict)
    strength_grids: dict[str, list[float]] = field(default_factory=dict)
    sweep_strengths: dict[str, list[float]] = field(default_factory=dict)  # frontier only, beyond the dev grid
    #: leave-one-relation-out: test on this relation's items, fit and tune on the other relations only
    held_out_relation: str | None = None
    #: one of :data:`PROTOCOLS`
    protocol: str = "sparekit"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise SparekitError(f"unknown protocol {self.protocol!r}", f"use one of {', '.join(PROTOCOLS)}")
        if self.protocol == "paper" and any(_kind(label)[1] for label in self.methods):
            raise SparekitError("the paper protocol has no dev split to calibrate a gate on",
                                "drop the +gate methods or use --protocol sparekit")

    def grid(self, kind: str) -> dict[str, list]:
        """Hyper-parameters tuned on dev besides strength (layer choices for one-layer methods)."""
        if kind in self.param_grids:
            return self.param_grids[kind]
        defaults = {"spare": {"mi_mass": [0.05, 0.1, 0.2, 0.4]}, "actadd": {"layer": list(self.layers)},
                    "knob": {"layer": list(self.layers)}, "sea": {"layer": list(self.layers)}}
        return defaults.get(kind, {})

    def strengths(self, method: SteeringMethod) -> tuple[float | None, ...]:
        """The strengths tuned on dev for ``method`` (its own grid unless overridden)."""
        grid = self.strength_grids.get(method.kind, method.strength_grid)
        return tuple(grid) or (None,)

    def sweep(self, method: SteeringMethod) -> tuple[float | None, ...]:
        """The strengths of ``method``'s frontier: the dev grid plus ``sweep_strengths`` (test seed only)."""
        tuned = self.strengths(method)
        extra = self.sweep_strengths.get(method.kind, []) if tuned != (None,) else []
        return tuple(sorted(set(tuned) | set(extra)))


def paper_config(**overrides: Any) -> BenchConfig:
    """The official SpARE code's protocol (yuzhaouoe/SAE-based-representation-engineering), as a preset.

    - pool: 128 question groups drawn among the groups with a memorised row, with *all* their rows;
    - behaviour data: every k in {3, 4, 5} for seeds 42–46, the three flavours of one (item, seed, k)
      sharing their demonstration rows (:func:`~sparekit.steering.behaviour.behaviour_prompts` ``every_k``);
    - test: every row outside the pool groups, memorised or not, with one fixed set of 3 org_ctx/org_ans
      demonstrations per seed (the first row of 3 pool groups in a seeded order), seeds 42–46;
    - no dev split: SpARE uses the paper's values for the model family (Gemma: K = 0.01, α = 1.8 toward
      memory and 3.0 toward context; otherwise K = 0.07, α = 2), other methods their default strength.

    Deliberate differences: answers are cut at the first newline (the official steered decoding stops
    only at the token that ends "\n\n", so a model that writes a single newline keeps going and fails EM:
    a pitfall, not a protocol choice); the official code reshuffles one list of pool groups in place for
    every seed's fixed demonstrations, so they depend on call order; here each seed draws from a fresh
    copy; SpARE edits the same ``layers`` in both directions (the paper's Gemma-2 memory run used others).
    """
    preset: dict[str, Any] = {"protocol": "paper", "methods": tuple(m for m in DEFAULT_METHODS if "+" not in m),
                              "seeds": (42, 43, 44, 45, 46),
                              "behaviour_seeds": (42, 43, 44, 45, 46), "pool_groups": 128, "dev_groups": 0,
                              "test_limit": None}
    return BenchConfig(**{**preset, **overrides})


def paper_choice(kind: str, model_type: str, toward: Direction) -> dict[str, Any]:
    """What the paper protocol runs for ``kind`` (no tuning): the published SpARE values, else defaults."""
    if kind != "spare":
        return {"params": {}, "strength": make_method(kind).default_strength, "dev_em": None}
    gemma = model_type.startswith("gemma")
    alpha = (1.8 if toward == "memory" else 3.0) if gemma else 2.0
    return {"params": {"mi_mass": 0.01 if gemma else 0.07}, "strength": alpha, "dev_em": None}


def fixed_demos(pool: ConflictDataset, seed: int, k_shot: int) -> tuple[str, ...]:
    """The paper protocol's test demonstrations: the first row of ``k_shot`` pool groups in a seeded order."""
    groups = sorted(pool.group_index().items())
    random.Random(seed).shuffle(groups)
    return tuple(demo_block(pool[rows[0]], "org_org") for _, rows in groups[:k_shot])


def _kind(label: str) -> tuple[str, bool]:
    """``"spare+gate"`` -> ("spare", gated); see :func:`_partner` for the other suffix."""
    kind, *suffixes = label.split("+")
    extra = [s for s in suffixes if s != "gate"]
    if len(suffixes) > 2 or len(extra) > 1 or (extra and extra[0] not in _DECODERS):
        raise SparekitError(f"unknown method variant {label!r}",
                            "append +gate to gate a method on the conflict probe, and/or "
                            f"+{'/+'.join(_DECODERS)} to combine it with a decoding-level method")
    return kind, "gate" in suffixes


#: the decoding-level methods a label may add to another (``spare+cad``)
_DECODERS = ("cad", "adacad", "dola")


def _partner(label: str) -> tuple[str | None, bool]:
    """The decoding-level partner of a combined label, and whether it is a fallback.

    ``spare+cad``: SpARE and CAD on every prompt; ``spare+cad+gate``: both where the conflict
    gate fires; ``spare+gate+cad``: SpARE where the gate fires, CAD (the fallback) where it does not.
    """
    _kind(label)
    suffixes = label.split("+")[1:]
    extra = [s for s in suffixes if s != "gate"]
    if not extra:
        return None, False
    return extra[0], "gate" in suffixes and suffixes.index("gate") < suffixes.index(extra[0])


def eval_prompts(items: ConflictDataset, demo_pool: ConflictDataset, context: str, seed: int,
                 k_shot: int) -> list[SteeringPrompt]:
    """The benchmark's prompts (dev, test, the gate's): org_ctx/org_ans demonstrations from the pool, drawn
    per (seed, item) by :func:`~sparekit.data.prompts.item_demos`, the draw the evaluation harness makes, so
    each prompt's text is the harness's ``condition_prompts(items, context, seed, k_shot, demo_pool)``."""
    return [SteeringPrompt(ex, context, item_demos(ex, demo_pool, seed, k_shot)) for ex in items]  # type: ignore[arg-type]


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
        self._record_config()

    # -- bookkeeping ------------------------------------------------------------------
    def _record_config(self) -> None:
        config = {"kind": "bench-steer", "dataset": self.dataset.name, "n_rows": len(self.dataset),
                  "dataset_sha256": dataset_fingerprint(self.dataset),
                  "model": self.lm.info.name, "model_hash": self.lm.info.model_hash, **asdict(self.config)}
        self.run_dir.prepare(config, ignore=_EXTENSIBLE)

    def _cached_cell(self, split: str, label: str, params: dict, method: SteeringMethod,
                     prompts: list[SteeringPrompt], toward: Direction, strength: float | None, gate: Gate | None,
                     seed: int | None = None, measure: str = "prediction", cached_only: bool = False) -> list | None:
        """One benchmark cell, or read back from ``generations/<split>/<cell>.jsonl``.

        ``measure`` is ``"prediction"`` (greedy answers) or ``"nll"`` (per-token NLL of the
        gold ``org_answer`` under the steering). Methods that do not depend on the direction
        (``directional = False``) share one cell. ``cached_only``: ``None`` instead of generating.
        A cell is read back only if every row's id *and* prompt text match: a cell from an older
        prompt builder or an edited dataset is regenerated, never scored against other items.
        """
        way = toward if method.directional else "any"
        context = prompts[0].context if prompts else "none"
        cell = f"{setting_slug(label, params, strength)}-{'' if seed is None else f'seed{seed}-'}{context}-{way}"
        path = self.out / "generations" / split / f"{cell}{'' if measure == 'prediction' else '-' + measure}.jsonl"
        ids = [f"{p.example.id}:{p.context}" for p in prompts]
        texts = [_fingerprint(p.text) for p in prompts]
        if path.is_file():
            try:
                rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
                if [(r["id"], r.get("prompt")) for r in rows] == list(zip(ids, texts)):
                    return [r[measure] for r in rows]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                log.warning("%s is damaged (truncated or not JSON lines): recomputing it", path)
        if cached_only:
            return None
        with method.steer(self.lm, toward=toward, strength=strength, gate=gate, batch_size=self.batch_size) as steered:
            if measure == "prediction":
                values = steered.generate(prompts)
            else:
                values = steered.answer_nll(prompts, [p.example.org_answer[0] for p in prompts])
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps({"id": i, "prompt": t, measure: v}, ensure_ascii=False) + "\n"
                                   for i, t, v in zip(ids, texts, values)), encoding="utf-8")
        return values

    # -- data ---------------------------------------------------------------------------
    def splits(self) -> tuple[ConflictDataset, ConflictDataset, ConflictDataset]:
        """(pool, dev, test) memorised items, split by question group.

        With ``held_out_relation``, test is that relation's items and pool and dev are split
        from the other relations' items: nothing is fitted or tuned on the held-out relation.
        """
        path = self.memorised_file
        if path.is_file():
            keep = set(read_json(path)["ids"])
            memorised = self.dataset.subset([i for i, ex in enumerate(self.dataset) if ex.id in keep])
        else:
            memorised = memorised_subset(self.lm, self.dataset, seed=42, k_shot=self.config.k_shot,
                                         batch_size=self.batch_size)
            atomic_write_json(path, {"ids": [ex.id for ex in memorised]})
        c = self.config
        if c.protocol == "paper":
            return self._limit_test(*self._paper_splits(memorised))
        held_out = None
        if c.held_out_relation is not None:
            if c.held_out_relation not in held_out_relations(self.dataset):
                raise SparekitError(f"{self.dataset.name} has no relation {c.held_out_relation!r}")
            held_out = memorised.subset([i for i, ex in enumerate(memorised) if ex.relation == c.held_out_relation])
            memorised = memorised.subset([i for i, ex in enumerate(memorised) if ex.relation != c.held_out_relation])
            if len(held_out) == 0:
                raise SparekitError(f"no memorised item of relation {c.held_out_relation!r} to test on",
                                    "leave this relation out of the dataset or use a model that knows it")
        n_groups = len(memorised.groups())
        if n_groups < c.k_shot + 3:
            raise SparekitError(f"{self.dataset.name}: only {n_groups} memorised question groups"
                                + ("" if held_out is None else f" outside relation {c.held_out_relation!r}"),
                                "use a larger dataset or a model that knows more of it")
        if held_out is None:
            pool_n = min(c.pool_groups, n_groups // 2)
            dev_n = min(c.dev_groups, (n_groups - pool_n) // 3)
            fractions = [pool_n / n_groups, dev_n / n_groups, 1 - (pool_n + dev_n) / n_groups]
            pool, dev, test = split_by_group(memorised, fractions, seed=c.split_seed)
        else:
            pool_n = min(c.pool_groups, (2 * n_groups) // 3)
            dev_n = min(c.dev_groups, n_groups - pool_n)
            pool, dev = split_by_group(memorised, [pool_n / n_groups, dev_n / n_groups], seed=c.split_seed)
            test = held_out
        return self._limit_test(pool, dev, test)

    def _limit_test(self, pool: ConflictDataset, dev: ConflictDataset, test: ConflictDataset
                    ) -> tuple[ConflictDataset, ConflictDataset, ConflictDataset]:
        """``test_limit`` items of ``test`` (a seeded sample), whatever the protocol."""
        c = self.config
        if c.test_limit is not None and len(test) > c.test_limit:
            test = test.sample(c.test_limit, seed=c.split_seed)
        if c.test_limit is not None:
            warn_small_data("steering benchmark", {"memorised test items": len(test)}, c.test_limit,
                            f"--test-limit asks for {c.test_limit}: use a larger dataset (or --limit), fewer "
                            "--pool-groups / --dev-groups, or a --test-limit the data has")
        return pool, dev, test

    def _paper_splits(self, memorised: ConflictDataset) -> tuple[ConflictDataset, ConflictDataset, ConflictDataset]:
        """The paper protocol: pool = every row of ``pool_groups`` memorised groups, test = every other row."""
        c, data = self.config, self.dataset

        def fit_on(ex) -> bool:  # rows outside the held-out relation (all rows without one)
            return c.held_out_relation is None or ex.relation != c.held_out_relation

        others = [i for i, ex in enumerate(data) if fit_on(ex)]
        known = sorted({ex.group for ex in memorised if fit_on(ex)})
        if len(known) < c.k_shot + 3:
            raise SparekitError(f"{data.name}: only {len(known)} memorised question groups",
                                "use a larger dataset or a model that knows more of it")
        random.Random(c.split_seed).shuffle(known)
        pool_groups = set(known[:min(c.pool_groups, len(known) // 2)])
        pool = data.subset([i for i in others if data[i].group in pool_groups])
        test = data.subset([i for i, ex in enumerate(data) if ex.group not in pool_groups
                            and (c.held_out_relation is None or not fit_on(ex))])
        return pool, data.subset([]), test

    def test_prompts(self, test: ConflictDataset, pool: ConflictDataset, context: str, seed: int) -> list[SteeringPrompt]:
        """Test prompts: demonstrations per item (:func:`eval_prompts`), or one fixed set per seed (paper)."""
        if self.config.protocol == "paper":
            demos = fixed_demos(pool, seed, self.config.k_shot)
            return [SteeringPrompt(ex, context, demos) for ex in test]  # type: ignore[arg-type]
        return eval_prompts(test, pool, context, seed, self.config.k_shot)

    def behaviour(self, pool: ConflictDataset) -> BehaviourData:
        """Behaviour data on the pool, cached as safetensors + JSON.

        Its prompts are also written to ``behaviour_prompts.jsonl`` (``text``, ``id``, ``uses_context``):
        the pool's few-shot conflict prompts, the inputs SpARE reads, e.g. to train an SAE on them
        (``sparekit sae train --prompts``) without ever showing it a dev or test item.
        """
        from safetensors.torch import load_file, save_file

        tensors, meta = self.out / "behaviour.safetensors", self.out / "behaviour.json"
        prompts = behaviour_prompts(pool, self.config.behaviour_seeds, every_k=self.config.protocol == "paper")
        if tensors.is_file() and meta.is_file():
            saved = read_json(meta)
            by_key = {f"{p.example.id}|{'|'.join(p.demos)}": p for p in prompts}
            kept = [by_key[k] for k in saved["keys"]]
            hidden = {int(k.split(".")[1]): v for k, v in load_file(str(tensors)).items()}
            data = BehaviourData(kept, np.asarray(saved["labels"]), hidden, pool, meta=saved["meta"], lm=self.lm)
        else:
            data = collect_behaviour_data(self.lm, prompts, self.config.layers, pool=pool,
                                          context_match=self.dataset.context_match, batch_size=self.batch_size,
                                          progress=self.progress)
            with atomic_path(tensors) as tmp:
                save_file({f"layer.{k}": v.contiguous() for k, v in data.hidden.items()}, str(tmp))
            atomic_write_json(meta, {"keys": [f"{p.example.id}|{'|'.join(p.demos)}" for p in data.prompts],
                                     "labels": data.labels.tolist(), "meta": data.meta})
        if not (self.out / "behaviour_prompts.jsonl").is_file():
            atomic_write_text(self.out / "behaviour_prompts.jsonl", "".join(
                json.dumps({"id": f"{p.example.id}:{i}", "text": p.text, "uses_context": int(label)}) + "\n"
                for i, (p, label) in enumerate(zip(data.prompts, data.labels))))
        return data

    def conflict_gate(self, pool: ConflictDataset, dev: ConflictDataset) -> ProbeGate:
        """The conflict probe gating ``+gate`` methods: fitted on the pool, layer and threshold chosen on dev."""
        path = self.out / "gate_probe"
        if (path / "config.json").is_file():
            return ProbeGate.load(path, model_hash=self.lm.info.model_hash)
        c, n_layers = self.config, self.lm.info.n_layers
        layers = [c.gate_layer] if c.gate_layer is not None else list(range(n_layers // 3, n_layers))
        train, held_out = ([p for ctx in ("org", "sub") for p in eval_prompts(items, pool, ctx, seed, c.k_shot)]
                           for items, seed in ((pool, 0), (dev, DEV_SEED)))
        gate, report = fit_probe_gate(self.lm, train, held_out, layers, c.gate_max_false_positive_rate,
                                      self.batch_size)
        gate.save(path, **report)
        return gate

    # -- scoring --------------------------------------------------------------------------
    @staticmethod
    def _hit(pred: str, prompt: SteeringPrompt, toward: Direction, context_match: str) -> bool:
        if prompt.context == "org" or toward == "memory":
            return exact_match(pred, prompt.example.org_answer)
        return uses_context(pred, prompt.example, context_match)  # type: ignore[arg-type]

    def _score(self, preds: Sequence[str], prompts: Sequence[SteeringPrompt], toward: Direction) -> float:
        hits = [self._hit(p, q, toward, self.dataset.context_match) for p, q in zip(preds, prompts)]
        return float(np.mean(hits)) if hits else 0.0

    # -- tuning -----------------------------------------------------------------------------
    def tune(self, label: str, data: BehaviourData, dev: ConflictDataset, pool: ConflictDataset) -> dict[str, Any]:
        """Per direction, the (params, strength) with the best dev EM toward the target.

        A gated or combined variant reuses its method's tuning (and its partner's), so ``+gate`` rows
        isolate what the gate changes.
        """
        kind, gated = _kind(label)
        if gated or _partner(label)[0]:
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
        dev_prompts = eval_prompts(dev, pool, "sub", DEV_SEED, self.config.k_shot)
        best: dict[str, Any] = {}
        bar = tqdm(total=len(combos) * len(DIRECTIONS) * len(strengths), desc=f"tune {label} on dev", unit="cell",
                   leave=False, disable=not self.progress)
        for params in combos:
            method = self._fit(kind, params, data)
            for toward in DIRECTIONS:
                for strength in strengths:
                    preds = self._cached_cell("dev", label, params, method, dev_prompts, toward, strength, None)
                    score = self._score(preds, dev_prompts, toward)
                    if toward not in best or score > best[toward]["dev_em"]:
                        best[toward] = {"params": params, "strength": strength, "dev_em": score}
                    bar.update(1)
        bar.close()
        atomic_write_json(path, {**best, "searched": searched})
        return best

    def _fit(self, kind: str, params: dict, data: BehaviourData) -> SteeringMethod:
        """Fit ``kind`` with ``params`` once per benchmark (SpARE's MI estimates are the slow part)."""
        key = (kind, json.dumps(params, sort_keys=True))
        fits = self.__dict__.setdefault("_fits", {})
        if key not in fits:
            fits[key] = self.method(kind, params).fit(data)
        return fits[key]

    def method(self, kind: str, params: dict) -> SteeringMethod:
        """The unfitted method ``kind`` with ``params``, layers defaulting to the benchmark's candidates."""
        defaults = {"layers": tuple(self.config.layers)} if kind == "spare" else {}
        if "layer" not in params and hasattr(make_method(kind), "layer"):
            defaults["layer"] = sorted(self.config.layers)[len(self.config.layers) // 2]
        return make_method(kind, **{**defaults, **params})

    def _cell_method(self, label: str, choice: dict, toward: Direction, data: BehaviourData, dev: ConflictDataset,
                     pool: ConflictDataset) -> tuple[SteeringMethod, dict]:
        """The fitted method of a label's cells and the parameters that name them; a combined label
        (:func:`_partner`) pairs its method with its partner's dev-tuned fit and strength."""
        method = self._fit(_kind(label)[0], choice["params"], data)
        partner, fallback = _partner(label)
        if partner is None:
            return method, choice["params"]
        from sparekit.steering.combined import Combined

        other = self.tune(partner, data, dev, pool)[toward]
        combined = Combined(method, self._fit(partner, other["params"], data), other["strength"], fallback)
        return combined, cell_params(label, choice["params"], other["strength"])

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> dict:
        """The benchmark: every method tuned on dev and scored on test (``results.json``, then ``done``)."""
        with self.run_dir.running():
            return self._run()

    def _shared(self) -> _Shared:
        """What every method's cells need: the splits, behaviour data, the gate and the unsteered labels."""
        pool, dev, test = self.splits()
        data = self.behaviour(pool)
        gate = self.conflict_gate(pool, dev) if any(_kind(m)[1] for m in self.config.methods) else None
        return pool, dev, test, data, gate, self._unsteered(test, pool)

    def _run_share(self, rank: int, world: int) -> _Shared:
        """Data-parallel phase (under ``torchrun`` / ``accelerate launch``): rank 0 builds what the methods
        share while the others wait; then each rank tunes and tests its own methods (a method with its
        gated and combined variants, which reuse its tuning); after the barrier every cell is on disk.
        Returns what :meth:`_shared` returns, built once per rank."""
        families = list(dict.fromkeys(_kind(label)[0] for label in self.config.methods))
        if world > len(families):
            raise SparekitError(f"{world} ranks for {len(families)} methods: some ranks would have nothing to do",
                                f"launch at most {len(families)} processes, or benchmark more methods")
        shared = self._shared() if rank == 0 else None
        barrier()
        pool, dev, test, data, gate, baseline = shared or self._shared()  # the others read rank 0's files back
        mine = families[rank::world]
        for label in self.config.methods:
            if _kind(label)[0] in mine:
                self._evaluate(label, data, dev, test, pool, gate, baseline)
        barrier()
        return pool, dev, test, data, gate, baseline

    def _run(self) -> dict:
        rank, world = rank_and_world()
        shared = self._run_share(rank, world) if world > 1 else self._shared()
        pool, dev, test, data, gate, baseline = shared
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
                atomic_write_json(self.out / "results.json", summary)
        return summary

    def _unsteered(self, test: ConflictDataset, pool: ConflictDataset) -> dict[int, list[str]]:
        """Unsteered labels on the conflict prompts, per seed (for the conditional metrics)."""
        none = make_method("none")
        labels = {}
        for seed in self.config.seeds:
            prompts = self.test_prompts(test, pool, "sub", seed)
            preds = self._cached_cell("test", "none", {}, none, prompts, "context", None, None, seed)
            labels[seed] = [behaviour_label(p, q.example, self.dataset.context_match) for p, q in zip(preds, prompts)]
        return labels

    def _evaluate(self, label: str, data: BehaviourData, dev: ConflictDataset, test: ConflictDataset,
                  pool: ConflictDataset, gate: Gate | None, baseline: dict[int, list[str]]) -> dict[str, Any]:
        kind, gated = _kind(label)
        use_gate = gate if gated else None
        tuned = self.tune(label, data, dev, pool)
        per_seed: dict[str, list[float]] = {"em_memory": [], "em_context": [], "em_no_conflict": [],
                                            "em_no_conflict_memory": [], "em_no_conflict_context": []}
        moves: dict[str, list] = {"memory": [], "context": []}
        bar = tqdm(total=len(self.config.seeds) * 4, desc=label, leave=False, disable=not self.progress)
        for seed in self.config.seeds:
            for toward in DIRECTIONS:
                choice = tuned[toward]
                method, params = self._cell_method(label, choice, toward, data, dev, pool)
                for context in ("sub", "org"):
                    prompts = self.test_prompts(test, pool, context, seed)
                    preds = self._cached_cell("test", label, params, method, prompts, toward,
                                                  choice["strength"], use_gate, seed)
                    score = self._score(preds, prompts, toward)
                    if context == "sub":
                        per_seed[f"em_{toward}"].append(score)
                        after = [behaviour_label(p, q.example, self.dataset.context_match)
                                 for p, q in zip(preds, prompts)]
                        moves[toward].append(conditional_metrics(baseline[seed], after))
                    else:
                        per_seed[f"em_no_conflict_{toward}"].append(score)
                    bar.update(1)
            per_seed["em_no_conflict"].append((per_seed["em_no_conflict_memory"][-1]
                                               + per_seed["em_no_conflict_context"][-1]) / 2)
        bar.close()
        result: dict[str, Any] = {name: mean_std(values) for name, values in per_seed.items()}
        result["conditional"] = {toward: {key: mean_std([m[key] for m in runs]) for key in runs[0]}
                                 for toward, runs in moves.items()}
        result["tuned"] = tuned
        result["per_seed"] = per_seed
        partner = _partner(label)[0]
        if partner is None:
            self._export(label, kind, tuned, data, pool, gate)
        else:  # a combination is not saved as one method: its parts' rows export theirs
            result["tuned_partner"] = self.tune(partner, data, dev, pool)
        return result

    def _export(self, label: str, kind: str, tuned: dict, data: BehaviourData, pool: ConflictDataset,
                gate: Gate | None) -> None:
        """Save the dev-tuned methods as a fitted bundle, with demonstrations for new questions and the
        run's gate. ``sparekit steer --fitted <run>/fitted/<label>`` reads it."""
        demos = tuple(sample_demos(pool, "", 2 * self.config.k_shot, "org_org", random.Random(0)))
        directions = {t: FittedSteering(self._fit(kind, tuned[t]["params"], data), tuned[t]["strength"], demos,
                                        tuned[t]["params"], tuned[t]["dev_em"]) for t in DIRECTIONS}
        bundle = FittedBundle(label, directions, demos, self.lm.info.model_hash, gate)  # type: ignore[arg-type]
        bundle.save(self.out / "fitted" / label)

    def frontier(self, labels: Sequence[str] | None = None, seed: int | None = None,
                 cached_only: bool = False) -> dict[str, Any]:
        """Strength sweep per method and direction on test: EM toward the target vs EM without conflict
        and vs the gold answer's per-token NLL without conflict (fluency).

        Uses each method's dev-tuned parameters and its dev grid plus ``sweep_strengths``; the
        frontier (not one setting) is the fair comparison between a dense vector and SpARE.
        ``cached_only`` draws what earlier runs generated and skips points not yet computed.
        """
        with self.run_dir.lock():
            return self._frontier(labels, seed, cached_only)

    def _frontier(self, labels: Sequence[str] | None, seed: int | None, cached_only: bool) -> dict[str, Any]:
        pool, dev, test = self.splits()
        data = self.behaviour(pool)
        seed = self.config.seeds[0] if seed is None else seed
        needs_gate = any(_kind(m)[1] for m in (labels or self.config.methods))
        gate = self.conflict_gate(pool, dev) if needs_gate else None
        prompts = {context: self.test_prompts(test, pool, context, seed) for context in ("sub", "org")}
        curves: dict[str, Any] = {}
        for label in labels or self.config.methods:
            kind, gated = _kind(label)
            tuned = self.tune(label, data, dev, pool)
            curves[label] = {}
            for toward in DIRECTIONS:
                method, params = self._cell_method(label, tuned[toward], toward, data, dev, pool)
                points = []
                cell = ("test", label, params, method)
                for strength in self.config.sweep(self._fit(kind, tuned[toward]["params"], data)):
                    args = (toward, strength, gate if gated else None, seed)
                    conflict = self._cached_cell(*cell, prompts["sub"], *args, cached_only=cached_only)
                    no_conflict = self._cached_cell(*cell, prompts["org"], *args, cached_only=cached_only)
                    nll = self._cached_cell(*cell, prompts["org"], *args, "nll", cached_only=cached_only)
                    if conflict is None or no_conflict is None or nll is None:
                        continue
                    points.append({"strength": strength, "em_target": self._score(conflict, prompts["sub"], toward),
                                   "em_no_conflict": self._score(no_conflict, prompts["org"], toward),
                                   "answer_nll_no_conflict": float(np.mean(nll))})
                curves[label][toward] = points
        atomic_write_json(self.out / "frontier.json", curves)
        return curves


HEADLINE = ("em_memory", "em_context", "em_no_conflict")


def _held_out_runners(lm: LoadedModel, dataset: ConflictDataset, config: BenchConfig, out: Path, batch_size: int,
                      progress: bool) -> Iterator[tuple[str, SteeringBenchmark]]:
    """One benchmark per held-out relation, in ``<out>/held-out-<relation>``, sharing one closed-book pass."""
    for relation in held_out_relations(dataset):
        yield relation, SteeringBenchmark(lm, dataset, replace(config, held_out_relation=relation),
                                          out / f"held-out-{relation}", batch_size, progress,
                                          memorised_file=out / "memorised.json")


def leave_one_relation_out(lm: LoadedModel, dataset: ConflictDataset, config: BenchConfig, out_dir: str | Path,
                           batch_size: int = 8, progress: bool = True) -> dict[str, Any]:
    """The benchmark once per relation held out (``<out>/held-out-<relation>``), and the mean over relations.

    Each run fits behaviour data, methods and the gate, and tunes on dev, using the other
    relations only, then tests on the held-out relation. ``methods[label][metric]`` is the
    mean over held-out relations of each run's mean over seeds, with the std across relations.
    """
    relations = held_out_relations(dataset)
    out = Path(out_dir)
    with RunDir(out, "leave-one-relation-out benchmark").running():
        runs = {relation: runner.run()
                for relation, runner in _held_out_runners(lm, dataset, config, out, batch_size, progress)}
        summary = {"split_by": "relation", "dataset": dataset.name, "model": lm.info.name,
                   "model_hash": lm.info.model_hash, "relations": relations,
                   "methods": {label: {metric: mean_std([runs[r]["methods"][label][metric]["mean"]
                                                         for r in relations])
                                       for metric in HEADLINE} for label in config.methods},
                   "held_out": runs}
        atomic_write_json(out / "results.json", summary)
    return summary


def leave_one_relation_out_frontier(lm: LoadedModel, dataset: ConflictDataset, config: BenchConfig,
                                    out_dir: str | Path, batch_size: int = 8, progress: bool = True,
                                    cached_only: bool = False) -> dict[str, Any]:
    """The frontier of each held-out run of :func:`leave_one_relation_out` (same folders), and the mean
    curve over relations: a point per strength computed on every held-out relation."""
    relations = held_out_relations(dataset)
    out = Path(out_dir)
    with RunDir(out, "leave-one-relation-out frontier").running():
        held_out = {relation: runner.frontier(cached_only=cached_only)
                    for relation, runner in _held_out_runners(lm, dataset, config, out, batch_size, progress)}
        result = {"relations": relations, "mean": mean_frontier(list(held_out.values())), "held_out": held_out}
        atomic_write_json(out / "frontier.json", result)
    return result


def mean_frontier(curves: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Point-wise mean of several frontiers, keeping the (method, direction, strength) points all of them have."""
    mean: dict[str, Any] = {}
    for label, by_direction in curves[0].items():
        mean[label] = {}
        for toward, points in by_direction.items():
            mean[label][toward] = []
            for point in points:
                same = [p for c in curves for p in c.get(label, {}).get(toward, [])
                        if p["strength"] == point["strength"]]
                if len(same) == len(curves):
                    mean[label][toward].append({key: point[key] if key == "strength"
                                                else float(np.mean([p[key] for p in same])) for key in point})
    return mean


def relation_table(summary: dict) -> str:
    """Leave-one-relation-out: EM per held-out relation (→ memory / → context) and the mean over relations (%)."""
    relations = summary["relations"]
    lines = ["| method | EM_M mean | EM_C mean | EM no conflict mean | "
             + " | ".join(f"{r}: EM_M / EM_C" for r in relations) + " |",
             "|---|---|---|---|" + "---|" * len(relations)]
    for label, r in summary["methods"].items():
        means = " | ".join(f"{100 * r[m]['mean']:.1f} ± {100 * r[m]['std']:.1f}" for m in HEADLINE)
        per = " | ".join(f"{100 * summary['held_out'][rel]['methods'][label]['em_memory']['mean']:.1f} / "
                         f"{100 * summary['held_out'][rel]['methods'][label]['em_context']['mean']:.1f}"
                         for rel in relations)
        lines.append(f"| {label} | {means} | {per} |")
    return "\n".join(lines)


def describe(params: dict) -> str:
    """``layer=6,mi_mass=0.1``: readable hyper-parameters ("default" for none)."""
    if not params:
        return "default"
    return ",".join(f"{k}={'-'.join(map(str, v)) if isinstance(v, list | tuple) else v}"
                    for k, v in sorted(params.items()))


def _fingerprint(text: str) -> str:
    """A short hash of a prompt: cached cells are tied to the exact text that was generated from."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cell_params(label: str, params: dict, partner_strength: float | None) -> dict:
    """The parameters that name a label's cells: its own, and for a combined label (:func:`_partner`)
    also its partner's dev-tuned strength."""
    partner = _partner(label)[0]
    return params if partner is None else {**params, f"{partner}_strength": partner_strength}


def setting_slug(label: str, params: dict, strength: float | None) -> str:
    """The start of a cached cell's file name: method label, :func:`describe` of the parameters (hashed
    when too long for a file name) and strength; seed, context and direction follow."""
    text = describe(params)
    return f"{label}-{text if len(text) < 40 else hashlib.sha256(text.encode()).hexdigest()[:10]}-{strength}"


def markdown_table(summary: dict) -> str:
    """The side-by-side table: EM toward each target and EM without conflict, mean ± std (%)."""

    def cell(stat: dict) -> str:
        if stat["mean"] is None:
            return "n/a"
        return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"

    lines = ["| method | EM_M (→ memory) | EM_C (→ context) | EM no conflict (steered) | C→M | M→C | tuned (memory / context) |",
             "|---|---|---|---|---|---|---|"]
    for label, r in summary["methods"].items():
        tuned = r["tuned"]
        choice = " / ".join(f"{describe(tuned[d]['params'])}, s={tuned[d]['strength']}" for d in ("memory", "context"))
        lines.append(f"| {label} | {cell(r['em_memory'])} | {cell(r['em_context'])} | {cell(r['em_no_conflict'])} | "
                     f"{cell(r['conditional']['memory']['C→M'])} | {cell(r['conditional']['context']['M→C'])} | {choice} |")
    return "\n".join(lines)
