"""benchmarks/kv_needle_kept.py's join with the records, spans, regions and forced press (no model)."""

from __future__ import annotations

import re

import pytest
import torch

from benchmark_module import benchmark_module
from sparekit.kv.ruler import RulerItem


@pytest.fixture(scope="module")
def kept():
    yield from benchmark_module("kv_needle_kept")


def _item(index: int = 0, key: str = "12345", depth: float = 0.1) -> RulerItem:
    context = f"Noise here. The pass key is {key}. Remember it. {key} is the pass key. Noise there."
    return RulerItem("passkey", 1024, index, depth, context, " What is the pass key?", (key,), 8)


def _record(item: RulerItem, method: str, ratio: float, output: str, score: float, **changes) -> dict:
    return {"model": "m", "suite": "ruler", "key": item.key, "depth": item.depth, "method": method, "ratio": ratio,
            "output": output, "score": score, **changes}


def test_outcomes_join_only_records_of_the_same_item(kept):
    same, other_key, other_depth, no_hit, unrecorded = (_item(i) for i in range(5))
    records = [_record(same, "none", 0.0, " 12345.", 1.0), _record(same, "l2", 0.9, " the pass key", 0.0),
               _record(other_key, "none", 0.0, " 99999.", 1.0),  # another passkey: rescored 0, recorded 1
               _record(other_depth, "none", 0.0, " 12345.", 1.0, depth=0.5),
               _record(no_hit, "l2", 0.9, " the pass key", 0.0),  # only misses: the answer is never checked
               _record(same, "none", 0.0, " 12345.", 1.0, model="other"), {"suite": "ppl", "model": "m", "key": "x"}]
    scores, unmatched = kept.outcomes([same, other_key, other_depth, no_hit, unrecorded], records, "m")
    assert scores == {(same.key, "none", 0.0): 1.0, (same.key, "l2", 0.9): 0.0}
    assert unmatched == [other_key.key, other_depth.key, no_hit.key]


class _Words:
    """A tokenizer whose tokens are the runs of non-space characters (with character offsets)."""

    def __call__(self, text: str, return_offsets_mapping: bool = False) -> dict:
        return {"offset_mapping": [m.span() for m in re.finditer(r"\S+", text)]}


def test_span_finds_every_occurrence_and_regions_label_positions(kept):
    lm = type("LM", (), {"tokenizer": _Words()})()
    item = _item()
    answer = kept._span(lm, item.context, "12345")
    assert answer.tolist() == [6, 9]  # "12345." and "12345": both copies of the passkey
    needle = kept._span(lm, item.context, kept._needle(item))
    assert needle.tolist() == [2, 3, 4, 5, 6]
    label = kept.regions(20, torch.cat([needle, answer]), keep_last=3)
    names = [kept.REGIONS[i] for i in label.tolist()]
    assert names[:4] == ["sinks"] * 4 and names[17:] == ["last"] * 3
    assert [i for i, name in enumerate(names) if name == "needle"] == [4, 5, 6, 9]  # 2, 3 are sinks
    assert names.count("haystack") == 20 - 4 - 3 - 4


def test_head_stats_shares_and_what_is_kept(kept):
    label = kept.regions(10, torch.tensor([5, 6]), keep_last=2)
    stats = kept.head_stats(torch.tensor([0, 5, 8, 9]), {"answer": torch.tensor([5, 6])}, label)
    assert stats["answer"] == 0.5
    assert stats["kept_in"] == [0.25, 0.25, 0.0, 0.5]  # sinks, needle, haystack, last
    assert stats["fifths"] == [0.5, 0.0, 0.5, 0.0, 1.0]


def test_needle_press_keeps_the_forced_positions_in_the_same_budget(kept):
    keys = torch.arange(1, 11, dtype=torch.float32).reshape(1, 1, 10, 1)  # norm grows with the position
    mask = torch.ones(1, 10, dtype=torch.bool)
    press = kept.NeedleL2Press(ratio=0.5, keep_last=0, forced=(8, 9))
    keep = kept.keep_counts(mask.sum(-1), press.ratio, 0, 0)
    index, _ = kept.select_positions(press.scores(keys, mask, None), mask, keep, 0)
    assert index[0, 0].tolist() == [0, 1, 2, 8, 9]
    plain, _ = kept.select_positions(kept.L2Press(ratio=0.5).scores(keys, mask, None), mask, keep, 0)
    assert plain[0, 0].tolist() == [0, 1, 2, 3, 4]
    only = kept.NeedleL2Press(ratio=0.5, forced=(8, 9), layers=(2,))  # observed: the layer's index
    assert torch.isinf(only.scores(keys, mask, 2)[0, 0, 8:]).all()
    assert torch.equal(only.scores(keys, mask, 3), keys.norm(dim=-1))
