"""benchmarks/kv_ppl_why.py: the oracle's attention table and press, the variants' presses, the share removed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark_module import benchmark_module
from sparekit.errors import SparekitError
from sparekit.kv.bench import continuation_nll, prefill
from sparekit.kv.presses import L2Press
from sparekit.models.tiny import tiny_model

OPTIONS = {"ratio": 0.5, "skip_layers": (0,), "min_length": 0, "keep_last": 2}


@pytest.fixture(scope="module")
def why():
    yield from benchmark_module("kv_ppl_why")


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _ids(rows: int = 2, width: int = 30) -> torch.Tensor:
    return torch.stack([torch.arange(5 + row, 5 + row + width) % 90 + 4 for row in range(rows)])


@torch.inference_mode()
def test_the_attention_table_is_what_the_continuation_attends_to(why, llama):
    """Minus the eager attention weights of the queries that predict a scored token, on the context's
    positions, averaged over those queries and over the query heads sharing a KV head."""
    ids, length = _ids(), 20
    table = why.attention_table(llama, ids, length)
    attentions = llama.model(input_ids=ids[:, :-1], output_attentions=True).attentions
    assert len(table) == len(attentions)
    for got, weights in zip(table, attentions):
        batch, heads = weights.shape[:2]
        want = -weights[:, :, length:, :length].mean(2).view(batch, 2, heads // 2, length).mean(2)
        assert got.shape == (batch, 2, length)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_the_oracle_press_ranks_each_layer_by_its_own_row_of_the_table(why, llama):
    """Given each layer's key norms as its table, the oracle evicts exactly what L2 evicts: the same NLL;
    given another layer's row it does not."""
    ids, length = _ids(), 20
    enc = {"input_ids": ids[:, :length], "attention_mask": torch.ones_like(ids[:, :length])}
    norms = tuple(layer.keys.norm(dim=-1) for layer in prefill(llama, enc, []).cache.layers)
    l2 = L2Press(**OPTIONS)
    same = why.OraclePress(**OPTIONS, table=norms)
    shifted = why.OraclePress(**OPTIONS, table=norms[1:] + norms[:1])
    scored = ids.shape[1] - length
    got = continuation_nll(llama, ids, scored, {"l2": l2, "same": same})  # one press reading the pass per call
    got |= continuation_nll(llama, ids, scored, {"shifted": shifted})
    torch.testing.assert_close(got["same"][0], got["l2"][0])
    assert got["same"][1] == got["l2"][1]  # the same budget
    assert not torch.allclose(got["shifted"][0], got["l2"][0])


def test_the_variants_change_one_thing_of_l2(why, llama):
    cells = why.presses(llama, why.parse_variants("l2+last16,l2+sinks,thirds,oracle"), length=20)
    press = {cell[0]: make(_ids()) for cell, make in cells.items()}
    assert press["none"] is None and press["l2"] == L2Press(ratio=0.5)
    assert press["l2+last16"] == L2Press(ratio=0.5, keep_last=16)
    assert press["l2+sinks"].forced == (0, 1, 2, 3) and press["l2+sinks"].keep_last == 8
    # 4 layers, 0 and 1 skipped: each third of the compressed ones (here one layer each) alone
    assert press["l2@2-2"].skip_layers == (0, 1, 3) and press["l2@3-3"].skip_layers == (0, 1, 2)
    assert len(press["oracle"].table) == 4 and press["oracle"].ratio == 0.5


def test_unknown_variants_fail_before_a_model_loads(why):
    assert why.parse_variants("l2+last64,oracle,") == ("l2+last64", "oracle")
    for bad in ("l2+lastx", "l2+last-4", "snapkv"):
        with pytest.raises(SparekitError, match="unknown variant"):
            why.parse_variants(bad)


def test_share_of_l2s_cost_removed(why):
    v = np.array([[[11.0, 12.0, 10.0], [20.0, 24.0, 20.0]]])  # windows × (variant, l2, none)
    assert why._share(v)[0] == pytest.approx((36 - 31) / (36 - 30))


def test_kept_shares_compare_l2_with_the_oracle(why, llama, monkeypatch):
    """What each keeps of the last positions and the sinks; an oracle that ranks by key norm is L2 (overlap 1)."""
    ids, length = _ids(width=160), 140  # past L2's min_length (128): compressed
    rows = why.kept_shares(llama, ids, length)
    assert [r["layer"] for r in rows] == [2, 3]
    for row in rows:
        assert row["l2_last16"] >= 0.5 and row["oracle_last16"] >= 0.5  # the last 8 are always kept
        assert 0 <= row["overlap"] < 1 and all(0 <= v <= 1 for k, v in row.items() if k != "layer")

    def by_norm(lm, ids, length):
        enc = {"input_ids": ids[:, :length], "attention_mask": torch.ones_like(ids[:, :length])}
        return tuple(layer.keys.norm(dim=-1) for layer in prefill(lm, enc, []).cache.layers)

    monkeypatch.setattr(why, "attention_table", by_norm)
    for row in why.kept_shares(llama, ids, length):
        assert row["overlap"] == 1.0
        assert all(row[f"oracle_{part}"] == row[f"l2_{part}"] for part in ("last16", "last64", "last128", "sinks"))
    table = why.kept_table(rows)
    assert table[2].startswith("| 2–2 | ") and table[-1].startswith("| 2–3 | ") and len(table) == 5
