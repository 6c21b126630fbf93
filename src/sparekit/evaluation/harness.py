"""Evaluate the unsteered model on a conflict dataset: closed-book, original context, conflict.

For every seed (the seed chooses the demonstrations) three conditions are generated:

- ``closed``: no context, ``closed`` demos; one prompt per question group (the answer
  does not depend on the substitution). Groups answered correctly form the *memorised* set.
- ``org``: the original context, ``org_org`` demos.
- ``sub``: the substituted context (conflict), with the same ``org_org`` demos as ``org``.

With ``out_dir`` the run is resumable: predictions are written atomically in chunks of
``CHUNK`` prompts (``predictions/seed{S}-{condition}-{i}.jsonl``) and chunks already on
disk are read back instead of regenerated. Under a launcher (``torchrun -m sparekit eval …``)
the ranks first write disjoint chunk files, then every rank reads them all; rank 0 writes the
results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from sparekit import models  # models.load_model, looked up per call: tests and embedders may swap it
from sparekit.data import load_dataset
from sparekit.data.dataset import ConflictDataset
from sparekit.data.formats import PromptFormat
from sparekit.data.prompts import THREE_SHOT, build_prompt, item_demos, sample_demos
from sparekit.errors import SparekitError
from sparekit.utils.registry import unknown_name
from sparekit.evaluation.generation import batches, greedy_generate
from sparekit.evaluation.metrics import behaviour_label, exact_match
from sparekit.models.loading import LoadedModel
from sparekit.utils.distributed import barrier, local_device, rank_and_world
from sparekit.utils.config import DATASET_HELP, DTYPE_HELP, config_dict, device_field, device_map_field, model_field, option
from sparekit.utils.io import atomic_path, atomic_write_json, ensure_dir
from sparekit.utils.rundir import RunDir, run_path

logger = logging.getLogger(__name__)
CONDITIONS = ("closed", "org", "sub")
CHUNK = 64
MAX_NEW_TOKENS = 12
METRICS = ("closed_book_em", "org_context_em", "conflict_uses_context", "conflict_uses_memory", "conflict_other",
           "memorised_n", "memorised_org_context_em", "memorised_conflict_uses_context",
           "memorised_conflict_uses_memory")


def condition_prompts(dataset: ConflictDataset, condition: str, seed: int, k_shot: int,
                      demo_pool: ConflictDataset | None = None, fmt: PromptFormat = THREE_SHOT) -> dict[str, str]:
    """Prompt per key for one (seed, condition): keys are question groups for ``closed``, row ids otherwise.

    Demonstrations come from other question groups of ``demo_pool`` (default: ``dataset``
    itself), drawn with an RNG keyed on (seed, item) (:func:`~sparekit.data.prompts.item_demos`),
    so an item's demos do not depend on the order of the rows. ``fmt``: the prompt format; one
    that takes no demonstrations at request time (``zero_shot``, ``rag``, …) takes none here either.
    """
    k_shot = k_shot if fmt.shots else 0
    if condition == "closed":
        index = dataset.group_index()
        return {group: build_prompt(dataset[rows[0]], None, sample_demos(dataset, group, k_shot, "closed",
                                                                         random.Random(f"{seed}:{group}"), fmt), fmt)
                for group, rows in index.items()}
    if condition not in ("org", "sub"):
        raise unknown_name("condition", condition, CONDITIONS)
    pool = dataset if demo_pool is None else demo_pool
    return {ex.id: build_prompt(ex, condition, item_demos(ex, pool, seed, k_shot, fmt=fmt), fmt) for ex in dataset}


def _read_chunk(path: Path, keys: list[str]) -> list[dict] | None:
    """The rows of a finished predictions chunk for ``keys``, or None (with a warning) when it is damaged.

    Chunks are written atomically, but a crash on a filesystem without atomic rename or a
    full disk can still leave a cut file; a resumable job recomputes it instead of dying.
    A chunk holding other items is not damage but another run: that stays an error.
    """
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        if rows and all(isinstance(r, dict) and isinstance(r.get("key"), str) and isinstance(r.get("prediction"), str)
                        for r in rows):
            found = [r["key"] for r in rows]
            if found == keys:
                return rows
            if found != keys[:len(found)]:
                raise SparekitError(f"{path} does not match this run's items", "delete the run directory to restart")
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    logger.warning("%s is damaged (truncated or not JSON lines): recomputing it", path)
    path.unlink()
    return None


def generate_keyed(lm: LoadedModel, prompts: dict[str, str], batch_size: int, chunk_dir: Path | None,
                   chunk_prefix: str, bar: tqdm, mine: Callable[[int], bool] | None = None) -> dict[str, str]:
    """Greedy predictions for ``prompts``, reading/writing chunk files under ``chunk_dir`` when given.

    Prompts are sorted by length so batches waste little left padding. ``mine``: which chunk
    numbers this process generates (data-parallel ranks); the others are read if on disk, else
    left out of the result.
    """
    keys = sorted(prompts, key=lambda k: (len(prompts[k]), k))
    predictions: dict[str, str] = {}
    for i, chunk in enumerate(batches(keys, CHUNK)):
        path = None if chunk_dir is None else chunk_dir / f"{chunk_prefix}-{i:04d}.jsonl"
        rows = None if path is None or not path.is_file() else _read_chunk(path, list(chunk))
        if rows is not None:
            predictions.update((r["key"], r["prediction"]) for r in rows)
        elif mine is not None and not mine(i):
            continue
        else:
            outputs = greedy_generate(lm, [prompts[k] for k in chunk], max_new_tokens=MAX_NEW_TOKENS,
                                      batch_size=batch_size)
            predictions.update(zip(chunk, outputs))
            if path is not None:
                with atomic_path(path) as tmp:
                    tmp.write_text("".join(json.dumps({"key": k, "prediction": o}, ensure_ascii=False) + "\n"
                                           for k, o in zip(chunk, outputs)), encoding="utf-8")
        bar.update(len(chunk))
    return predictions


#: the closed-book demonstration seed that decides which items the model has memorised
MEMORISED_SEED = 42


def closed_book_predictions(lm: LoadedModel, dataset: ConflictDataset, seed: int = MEMORISED_SEED, k_shot: int = 3,
                            batch_size: int = 8, cache_dir: Path | None = None) -> list[str]:
    """The few-shot closed-book prediction for each row (shared by the rows of a question group).

    With ``cache_dir``, predictions are written there in chunks and read back on a rerun.
    """
    prompts = condition_prompts(dataset, "closed", seed, k_shot)
    with tqdm(total=len(prompts), desc="closed-book", unit="prompt", leave=False) as bar:
        by_group = generate_keyed(lm, prompts, batch_size, cache_dir, "closed", bar)
    return [by_group[ex.group] for ex in dataset]


def memorised_subset(lm: LoadedModel, dataset: ConflictDataset, seed: int = MEMORISED_SEED, k_shot: int = 3,
                     batch_size: int = 8, cache_dir: Path | None = None) -> ConflictDataset:
    """Rows whose question the model answers correctly closed-book: only these can be in conflict."""
    preds = closed_book_predictions(lm, dataset, seed, k_shot, batch_size, cache_dir)
    return dataset.subset([i for i, (ex, p) in enumerate(zip(dataset, preds)) if exact_match(p, ex.org_answer)])


def dataset_fingerprint(dataset: ConflictDataset) -> str:
    """SHA-256 of the rows' content, so a run directory is tied to the exact items evaluated."""
    digest = hashlib.sha256()
    for ex in dataset:
        digest.update(json.dumps(ex.to_json(), sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def run_config(lm: LoadedModel, dataset: ConflictDataset, seeds: Sequence[int], k_shot: int) -> dict:
    """Everything that determines the predictions of a run (batch size and environment excluded)."""
    return {"kind": "eval", "dataset": dataset.name, "dataset_sha256": dataset_fingerprint(dataset),
            "n": len(dataset), "context_match": dataset.context_match, "seeds": [int(s) for s in seeds],
            "k_shot": k_shot, "max_new_tokens": MAX_NEW_TOKENS, "model": lm.info.name,
            "model_hash": lm.info.model_hash}


def default_run_dir(config: dict, root: str | Path = "runs") -> Path:
    """``runs/eval-<dataset>-<hash of config>``: the same config resumes the same directory."""
    return run_path(root, "eval", config["dataset"], config=config)


def _item_records(dataset: ConflictDataset, closed: dict[str, str], org: dict[str, str],
                  sub: dict[str, str]) -> list[dict]:
    return [{"id": ex.id, "relation": ex.relation, "closed": closed[ex.group], "org": org[ex.id], "sub": sub[ex.id],
             "closed_em": exact_match(closed[ex.group], ex.org_answer), "org_em": exact_match(org[ex.id], ex.org_answer),
             "sub_label": behaviour_label(sub[ex.id], ex, dataset.context_match)} for ex in dataset]


def _share(rows: list[dict], test: Callable[[dict], bool]) -> float | None:
    return sum(map(test, rows)) / len(rows) if rows else None


def _metrics(items: list[dict]) -> dict[str, float | int | None]:
    memorised = [it for it in items if it["closed_em"]]
    return {
        "closed_book_em": _share(items, lambda it: it["closed_em"]),
        "org_context_em": _share(items, lambda it: it["org_em"]),
        "conflict_uses_context": _share(items, lambda it: it["sub_label"] == "context"),
        "conflict_uses_memory": _share(items, lambda it: it["sub_label"] == "memory"),
        "conflict_other": _share(items, lambda it: it["sub_label"] == "other"),
        "memorised_n": len(memorised),
        "memorised_org_context_em": _share(memorised, lambda it: it["org_em"]),
        "memorised_conflict_uses_context": _share(memorised, lambda it: it["sub_label"] == "context"),
        "memorised_conflict_uses_memory": _share(memorised, lambda it: it["sub_label"] == "memory"),
    }


def mean_std(values: list[float | None]) -> dict[str, float | None]:
    """Mean and population std over seeds (None values, from empty subsets, are left out)."""
    kept = [v for v in values if v is not None]
    if not kept:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(kept), "std": statistics.pstdev(kept)}


def evaluate(lm: LoadedModel, dataset: ConflictDataset, seeds: Sequence[int], k_shot: int = 3,
             out_dir: str | Path | None = None, batch_size: int = 8, progress: bool = True,
             experiment: dict | None = None) -> dict:
    """Unsteered accuracy and knowledge-source shares, mean ± std over ``seeds``.

    Returns ``n``, ``seeds``, every name in :data:`METRICS` as ``{"mean", "std"}``, the same
    per ``relation`` under ``by_relation`` (empty without relations) and ``per_seed`` values. With ``out_dir`` the config, environment, per-item predictions
    (``items-seed{S}.jsonl``) and ``results.json`` are written there, and an interrupted
    run resumes from its chunk files.
    """
    if not seeds:
        raise SparekitError("no seeds given", "pass at least one seed, e.g. --seeds 42")
    if len(dataset) == 0:
        raise SparekitError(f"{dataset.name}: nothing to evaluate (0 rows)")
    config = run_config(lm, dataset, seeds, k_shot)
    if out_dir is None:
        return _evaluate(lm, dataset, seeds, k_shot, None, batch_size, progress)
    with RunDir(out_dir, "eval run").session(config, experiment=experiment):
        return _evaluate(lm, dataset, seeds, k_shot, Path(out_dir), batch_size, progress)


def _evaluate(lm: LoadedModel, dataset: ConflictDataset, seeds: Sequence[int], k_shot: int, out: Path | None,
              batch_size: int, progress: bool) -> dict:
    rank, world = rank_and_world()
    if world > 1:
        _generate_share(lm, dataset, seeds, k_shot, out, batch_size, rank, world, progress)
    total = len(seeds) * (len(dataset.groups()) + 2 * len(dataset))
    per_seed: dict[str, dict] = {}
    per_relation: dict[str, dict] = {}
    with tqdm(total=total, desc=f"eval {dataset.name}", unit="prompt", disable=not progress or rank != 0) as bar:
        for seed in seeds:
            preds = {cond: generate_keyed(lm, condition_prompts(dataset, cond, seed, k_shot), batch_size,
                                           None if out is None else out / "predictions", f"seed{seed}-{cond}", bar)
                     for cond in CONDITIONS}
            items = _item_records(dataset, preds["closed"], preds["org"], preds["sub"])
            per_seed[str(seed)] = _metrics(items)
            relations = sorted({it["relation"] for it in items if it["relation"] is not None})
            per_relation[str(seed)] = {r: _metrics([it for it in items if it["relation"] == r]) for r in relations}
            if out is not None and rank == 0:
                with atomic_path(out / f"items-seed{seed}.jsonl") as tmp:
                    tmp.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items),
                                   encoding="utf-8")
    result = {"dataset": dataset.name, "model": lm.info.name, "model_hash": lm.info.model_hash,
              "n": len(dataset), "seeds": [int(s) for s in seeds], "k_shot": k_shot,
              **{name: mean_std([per_seed[str(s)][name] for s in seeds]) for name in METRICS},
              "by_relation": {r: {name: mean_std([per_relation[str(s)][r][name] for s in seeds]) for name in METRICS}
                              for r in per_relation[str(seeds[0])]},
              "per_seed": per_seed}
    if out is not None:
        result["run_dir"] = str(out)
        if rank == 0:
            atomic_write_json(out / "results.json", result)
    return result


def _generate_share(lm: LoadedModel, dataset: ConflictDataset, seeds: Sequence[int], k_shot: int, out: Path | None,
                    batch_size: int, rank: int, world: int, progress: bool) -> None:
    """Data-parallel phase: each rank writes its cells (chunk files, numbered across seeds and
    conditions, taken round-robin); after the barrier every cell is on disk for every rank."""
    if out is None:
        raise SparekitError("a data-parallel eval shares its cells through the run directory", "pass --out")
    cells = [(seed, cond, condition_prompts(dataset, cond, seed, k_shot)) for seed in seeds for cond in CONDITIONS]
    sizes = [-(-len(prompts) // CHUNK) for _, _, prompts in cells]
    if world > sum(sizes):
        raise SparekitError(f"{world} ranks for {sum(sizes)} generation cells: some ranks would have nothing to do",
                            f"launch at most {sum(sizes)} processes")
    first = 0
    with tqdm(total=sum(len(prompts) for _, _, prompts in cells), desc=f"eval {dataset.name} (rank 0 of {world})",
              unit="prompt", disable=not progress or rank != 0) as bar:
        for (seed, cond, prompts), size in zip(cells, sizes):
            generate_keyed(lm, prompts, batch_size, out / "predictions", f"seed{seed}-{cond}", bar,
                           mine=lambda i, first=first: (first + i) % world == rank)
            first += size
    barrier()



@dataclass
class EvalExperiment:
    """``sparekit eval``: the unsteered model on a conflict dataset, mean ± std over seeds."""

    dataset: str = option("default", short="-d", help=DATASET_HELP)
    model: str = model_field()
    limit: int | None = option(None, min=1, help="Seeded sample of N rows (whole question groups).")
    limit_seed: int = option(0, help="Seed of the --limit sample.")
    seeds: tuple[int, ...] = option((42, 43, 44, 45, 46), help="Comma-separated seeds; each draws different demonstrations.")
    k_shot: int = option(3, min=0, help="Demonstrations per prompt.")
    batch_size: int = option(8, min=1, help="Prompts per generation batch.")
    out: str | None = option(None, help="Run directory (default runs/eval-<dataset>-<config hash>); rerun to resume.")
    device: str | None = device_field()
    device_map: str | None = device_map_field()
    dtype: str = option("float32", help=DTYPE_HELP)

    def run(self, progress: bool = True) -> dict:
        """:func:`evaluate` on the named dataset and model, in the run directory (``run_dir`` in the result)."""
        data = load_dataset(self.dataset, limit=self.limit, seed=self.limit_seed)
        if self.out is not None:
            ensure_dir(self.out)  # a bad --out fails now, not after loading the model
        lm = models.load_model(self.model, dtype=self.dtype, device=local_device(self.device),
                               device_map=self.device_map)
        run_dir = self.out or default_run_dir(run_config(lm, data, self.seeds, self.k_shot))
        return evaluate(lm, data, self.seeds, k_shot=self.k_shot, out_dir=run_dir, batch_size=self.batch_size,
                        progress=progress, experiment=config_dict(self))
