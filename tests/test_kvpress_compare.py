"""benchmarks/bench_kvpress.py's comparison logic on synthetic keys and kept sets (no model, no kvpress)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark_module import benchmark_module


@pytest.fixture(scope="module")
def bench():
    yield from benchmark_module("bench_kvpress")


def _norms(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).float() + 1


def _lowest(norms: torch.Tensor, count: int) -> list[int]:
    return sorted(norms.argsort()[:count].tolist())


def test_kept_positions_finds_gathered_keys_and_refuses_foreign_ones(bench):
    keys = torch.randn(1, 2, 40, 8, generator=torch.Generator().manual_seed(0))
    index = torch.stack([torch.randperm(40, generator=torch.Generator().manual_seed(h))[:15] for h in range(2)])[None]
    pruned = keys.gather(2, index[..., None].expand(-1, -1, -1, 8))
    assert bench.kept_positions(keys, pruned) == [sorted(index[0, h].tolist()) for h in range(2)]
    pruned[0, 1, 3] += 1e-3
    with pytest.raises(ValueError, match="head 1"):
        bench.kept_positions(keys, pruned)


def test_classify_explains_each_rule_difference(bench):
    n, ratio = 101, 0.5
    norms = _norms(n)
    kvpress = _lowest(norms, int(n * (1 - ratio)))  # 50
    sparekit = _lowest(norms, n - math.floor(ratio * n))  # 51
    assert bench.classify(kvpress, kvpress, norms, ratio, 0) == "equal"
    assert bench.classify(sparekit, kvpress, norms, ratio, 0) == "count"
    assert bench.classify(None, kvpress, norms, ratio, 0) == "sliding"
    assert bench.classify(list(range(n)), kvpress, norms, ratio, 0) == "whole"
    rest = norms.clone()
    rest[-8:] = float("inf")
    protected = sorted(set(_lowest(rest, 51 - 8)) | set(range(n - 8, n)))
    assert bench.classify(protected, kvpress, norms, ratio, 8) == "keep_last+count"


def test_classify_flags_a_wrong_choice_and_accepts_a_tie(bench):
    n, ratio = 100, 0.5
    norms = _norms(n, seed=1)
    kvpress = _lowest(norms, 50)
    worst = int(norms.argmax())
    wrong = sorted(set(kvpress[1:]) | {worst})
    assert bench.classify(wrong, kvpress, norms, ratio, 0) == "other"
    order = norms.argsort().tolist()
    inside, outside = order[49], order[50]  # the boundary pair, made equal
    norms[outside] = norms[inside]
    swapped = sorted(set(kvpress) - {inside} | {outside})
    assert bench.classify(swapped, kvpress, norms, ratio, 0) == "tie"
    assert bench.classify(kvpress[:-1], kvpress, norms, ratio, 0) == "other"  # a count neither rule gives
