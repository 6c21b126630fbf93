"""What the steering benchmark reads: the memorised items, their pool / dev / test splits and the pool's
behaviour data, each cached in the run directory so a rerun reads them back."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file

from sparekit.data.dataset import ConflictDataset, held_out_values, split_by_group
from sparekit.data.formats import PromptFormat
from sparekit.data.prompts import THREE_SHOT
from sparekit.errors import SparekitError
from sparekit.evaluation.harness import dataset_fingerprint, memorised_subset
from sparekit.models.loading import LoadedModel
from sparekit.steering.base import BehaviourData, SteeringPrompt
from sparekit.steering.behaviour import behaviour_prompts, collect_behaviour_data
from sparekit.steering.bench.protocol import MEMORISED_SEED, BenchConfig
from sparekit.utils.guards import warn_small_data
from sparekit.utils.io import atomic_path, atomic_write_json, atomic_write_text, cache_dir, read_json, waiting_lock

Splits = tuple[ConflictDataset, ConflictDataset, ConflictDataset]


def memorised_items(lm: LoadedModel, dataset: ConflictDataset, path: Path, k_shot: int, batch_size: int,
                    seeds: Sequence[int] = (MEMORISED_SEED,)) -> ConflictDataset:
    """The items ``lm`` answers closed-book under every one of ``seeds``' demonstrations, by the ids in ``path``
    (written on the first run with the seeds; one file may serve several runs on the same model and dataset, and a
    file written for other seeds is refused)."""
    seeds = [int(s) for s in seeds]
    if not path.is_file():
        kept = set.intersection(*(set(_memorised_ids(lm, dataset, k_shot, batch_size, seed)) for seed in seeds))
        atomic_write_json(path, {"ids": [ex.id for ex in dataset if ex.id in kept], "seeds": seeds})
    found = read_json(path)
    recorded = found.get("seeds", [MEMORISED_SEED])  # a file from before the option: the one default seed
    if recorded != seeds:
        raise SparekitError(f"{path} holds the items memorised under closed-book seeds "
                            f"{','.join(map(str, recorded))}, not {','.join(map(str, seeds))}",
                            "choose another --out, or delete the file to recompute it")
    keep = set(found["ids"])
    return dataset.subset([i for i, ex in enumerate(dataset) if ex.id in keep])


def _memorised_ids(lm: LoadedModel, dataset: ConflictDataset, k_shot: int, batch_size: int, seed: int) -> list[str]:
    """The ids memorised under one seed's closed-book demonstrations.

    Kept in sparekit's cache under the model's hash, the rows' fingerprint, ``k_shot`` and the seed, so runs in
    separate folders (``--held-out-relation`` fold by fold, two at once) make each seed's closed-book pass over the
    dataset once, whatever seeds they combine it with: the second waits for the first, then reads its ids. A model
    whose hash names no one set of weights (:attr:`~sparekit.models.architecture.ModelInfo.pins_weights`) makes the
    pass each time."""
    def closed_book_pass() -> list[str]:
        return [ex.id for ex in memorised_subset(lm, dataset, seed=seed, k_shot=k_shot, batch_size=batch_size)]

    if not lm.info.pins_weights:
        return closed_book_pass()
    named = "" if seed == MEMORISED_SEED else f"|seed {seed}"  # the default seed keeps its earlier key
    key = hashlib.sha256(f"{lm.info.model_hash}|{dataset_fingerprint(dataset)}|{k_shot}{named}".encode())
    shared = cache_dir() / "memorised" / f"{key.hexdigest()[:32]}.json"
    with waiting_lock(shared.with_suffix(".lock")):
        if not shared.is_file():
            atomic_write_json(shared, {"ids": closed_book_pass(), "seeds": [seed]})
    return read_json(shared)["ids"]


def benchmark_splits(memorised: ConflictDataset, dataset: ConflictDataset, config: BenchConfig) -> Splits:
    """(pool, dev, test) memorised items, split by question group, at most ``test_limit`` test items.

    With a held-out relation (kind), test is that relation's (kind's) items and pool and dev are split
    from the other relations' (kinds') items: nothing is fitted or tuned on what is held out.
    """
    if config.protocol == "paper":
        return _limit_test(config, *_paper_splits(memorised, dataset, config))
    held, held_out, where = config.held_out(), None, ""
    if held is not None:
        memorised, held_out = _hold_out(memorised, dataset, *held)
        where = f" outside {held[0]} {held[1]!r}"
    n_groups = len(memorised.groups())
    if n_groups < config.k_shot + 3:
        raise SparekitError(f"{dataset.name}: only {n_groups} memorised question groups{where}",
                            "use a larger dataset or a model that knows more of it")
    if held_out is None:
        pool_n = min(config.pool_groups, n_groups // 2)
        dev_n = min(config.dev_groups, (n_groups - pool_n) // 3)
        fractions = [pool_n / n_groups, dev_n / n_groups, 1 - (pool_n + dev_n) / n_groups]
        return _limit_test(config, *split_by_group(memorised, fractions, seed=config.split_seed))
    pool_n = min(config.pool_groups, (2 * n_groups) // 3)
    dev_n = min(config.dev_groups, n_groups - pool_n)
    pool, dev = split_by_group(memorised, [pool_n / n_groups, dev_n / n_groups], seed=config.split_seed)
    return _limit_test(config, pool, dev, held_out)


def _hold_out(memorised: ConflictDataset, dataset: ConflictDataset, field: str,
              value: str) -> tuple[ConflictDataset, ConflictDataset]:
    """(the memorised items outside ``field`` = ``value``, those inside): what is fitted on and what is tested on."""
    if value not in held_out_values(dataset, field):
        raise SparekitError(f"{dataset.name} has no {field} {value!r}")
    held_out = memorised.subset([i for i, ex in enumerate(memorised) if getattr(ex, field) == value])
    if len(held_out) == 0:
        raise SparekitError(f"no memorised item of {field} {value!r} to test on",
                            f"leave this {field} out of the dataset or use a model that knows it")
    return memorised.subset([i for i, ex in enumerate(memorised) if getattr(ex, field) != value]), held_out


def _limit_test(config: BenchConfig, pool: ConflictDataset, dev: ConflictDataset, test: ConflictDataset) -> Splits:
    """``test_limit`` items of ``test`` (a seeded sample), whatever the protocol."""
    if config.test_limit is not None and len(test) > config.test_limit:
        test = test.sample(config.test_limit, seed=config.split_seed)
    if config.test_limit is not None:
        warn_small_data("steering benchmark", {"memorised test items": len(test)}, config.test_limit,
                        f"--test-limit asks for {config.test_limit}: use a larger dataset (or --limit), fewer "
                        "--pool-groups / --dev-groups, or a --test-limit the data has")
    return pool, dev, test


def _paper_splits(memorised: ConflictDataset, data: ConflictDataset, c: BenchConfig) -> Splits:
    """The paper protocol: pool = every row of ``pool_groups`` memorised groups, test = every other row."""
    held_out = c.held_out()

    def fit_on(ex) -> bool:  # rows outside the held-out relation or kind (all rows without one)
        return held_out is None or getattr(ex, held_out[0]) != held_out[1]

    others = [i for i, ex in enumerate(data) if fit_on(ex)]
    known = sorted({ex.group for ex in memorised if fit_on(ex)})
    if len(known) < c.k_shot + 3:
        raise SparekitError(f"{data.name}: only {len(known)} memorised question groups",
                            "use a larger dataset or a model that knows more of it")
    random.Random(c.split_seed).shuffle(known)
    pool_groups = set(known[:min(c.pool_groups, len(known) // 2)])
    pool = data.subset([i for i in others if data[i].group in pool_groups])
    test = data.subset([i for i, ex in enumerate(data) if ex.group not in pool_groups
                        and (held_out is None or not fit_on(ex))])
    return pool, data.subset([]), test


def cached_behaviour(lm: LoadedModel, pool: ConflictDataset, config: BenchConfig, out: Path, context_match: str,
                     batch_size: int, progress: bool, formats: Sequence[PromptFormat] = (THREE_SHOT,)) -> BehaviourData:
    """Behaviour data on the pool, cached as ``behaviour.safetensors`` + ``behaviour.json``.

    ``formats``: ``config.fit_formats`` built (each pool item asked in one of them).

    Its prompts are also written to ``behaviour_prompts.jsonl`` (``text``, ``id``, ``uses_context``):
    the pool's few-shot conflict prompts, the inputs SpARE reads, e.g. to train an SAE on them
    (``sparekit sae train --prompts``) without ever showing it a dev or test item.
    """
    tensors, meta = out / "behaviour.safetensors", out / "behaviour.json"
    prompts = behaviour_prompts(pool, config.behaviour_seeds, every_k=config.protocol == "paper", formats=formats)
    if tensors.is_file() and meta.is_file():
        saved = read_json(meta)
        by_key = {_key(p): p for p in prompts}
        hidden = {int(k.split(".")[1]): v for k, v in load_file(str(tensors)).items()}
        data = BehaviourData([by_key[k] for k in saved["keys"]], np.asarray(saved["labels"]), hidden, pool,
                             meta=saved["meta"], lm=lm)
    else:
        data = collect_behaviour_data(lm, prompts, config.layers, pool=pool, context_match=context_match,
                                      batch_size=batch_size, progress=progress)
        with atomic_path(tensors) as tmp:
            save_file({f"layer.{k}": v.contiguous() for k, v in data.hidden.items()}, str(tmp))
        atomic_write_json(meta, {"keys": [_key(p) for p in data.prompts], "labels": data.labels.tolist(),
                                 "meta": data.meta})
    if not (out / "behaviour_prompts.jsonl").is_file():
        atomic_write_text(out / "behaviour_prompts.jsonl", "".join(
            json.dumps({"id": f"{p.example.id}:{i}", "text": p.text, "uses_context": int(label)}) + "\n"
            for i, (p, label) in enumerate(zip(data.prompts, data.labels))))
    return data


def _key(prompt: SteeringPrompt) -> str:
    """A behaviour prompt's cache key: its item and its demonstrations."""
    return f"{prompt.example.id}|{'|'.join(prompt.demos)}"
