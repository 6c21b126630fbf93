"""Activation store: exact round-trip, resume, bounded chunks, streaming reads, errors."""

from __future__ import annotations

import json

import pytest
import torch

from sparekit.activations import ActivationStore, capture_activations
from sparekit.activations import store as store_module
from sparekit.errors import SparekitError
from sparekit.evaluation.generation import tokenize
from sparekit.hooks import Site

TEXTS = ["hello world", "a", "the quick brown fox jumps", "xyz" * 7, "context: q", "answer: b"]


def _hidden(lm, text: str, layer: int) -> torch.Tensor:
    with torch.no_grad():
        out = lm.model(**tokenize(lm, [text]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0].cpu()  # the store hands rows back on the CPU


def test_last_token_round_trip_matches_hidden_states(tiny_lm, tmp_path):
    store = capture_activations(tiny_lm, TEXTS, [Site(2), Site(1, "mlp")], tmp_path, dtype=torch.float32,
                                shard_rows=4, batch_size=3, progress=False)
    assert len(store) == len(TEXTS) and len(store.manifest["shards"]) == 2
    rows = store.load(Site(2))
    assert rows.dtype == torch.float32 and rows.shape == (len(TEXTS), tiny_lm.info.d_model)
    for i, text in enumerate(TEXTS):
        torch.testing.assert_close(rows[i], _hidden(tiny_lm, text, 2)[-1], rtol=1e-4, atol=1e-5)
    reopened = ActivationStore(tmp_path)
    assert reopened.sites == [Site(1, "mlp"), Site(2)]
    assert reopened.manifest["model_hash"] == tiny_lm.info.model_hash
    assert reopened.ids == [str(i) for i in range(len(TEXTS))]


def test_all_positions_drop_padding_and_first_token(tiny_llama, tmp_path):
    # Layer 2, not the last one: HF applies the final norm to the last hidden_states entry.
    store = capture_activations(tiny_llama, TEXTS, [Site(2)], tmp_path, positions="all", skip_first_token=True,
                                dtype="float32", shard_rows=16, batch_size=4, progress=False)
    lengths = [len(tiny_llama.tokenizer(t)["input_ids"]) for t in TEXTS]
    assert len(store) == sum(n - 1 for n in lengths)
    rows, prompt_index = store.load(Site(2)), store.load("prompt_index")
    assert (store.load("position") >= 1).all()
    for i, text in enumerate(TEXTS):
        torch.testing.assert_close(rows[prompt_index == i], _hidden(tiny_llama, text, 2)[1:], rtol=1e-4, atol=1e-5)


def test_float16_storage_and_stream(tiny_llama, tmp_path):
    store = capture_activations(tiny_llama, TEXTS * 3, [Site(0)], tmp_path, positions="all", shard_rows=20,
                                progress=False)
    assert store.manifest["dtype"] == "float16"
    full = store.load(Site(0))
    assert torch.equal(torch.cat(list(store.iter_batches(Site(0), 7))), full)
    batches = list(store.iter_batches(Site(0), 7, shuffle=True, seed=3))
    assert all(b.shape[0] == 7 for b in batches[:-1])
    shuffled = torch.cat(batches)
    assert not torch.equal(shuffled, full)
    assert torch.equal(shuffled.sort(0).values, full.sort(0).values)
    assert torch.equal(torch.cat(list(store.iter_batches(Site(0), 7, shuffle=True, seed=3))), shuffled)
    dataset = store.as_torch_dataset(Site(0))
    assert len(dataset) == len(full) and torch.equal(dataset[len(full) - 1], full[-1])


def test_resume_skips_recorded_shards(tiny_llama, tmp_path, monkeypatch):
    kwargs = dict(dtype=torch.float32, shard_rows=2, batch_size=2, progress=False)
    first = capture_activations(tiny_llama, TEXTS, [Site(1)], tmp_path, **kwargs).load(Site(1))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest["shards"]) == 3
    # Simulate an interruption after the first shard.
    kept = manifest["shards"][:1]
    manifest.update(shards=kept, rows=kept[0]["rows"], complete=False)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    calls = []
    real = store_module._run_chunk
    monkeypatch.setattr(store_module, "_run_chunk", lambda lm, chunk, *a: calls.append(chunk) or real(lm, chunk, *a))
    resumed = capture_activations(tiny_llama, TEXTS, [Site(1)], tmp_path, **kwargs)
    assert [c[0][0] for c in calls] == [2, 4]
    assert torch.equal(resumed.load(Site(1)), first)
    calls.clear()
    capture_activations(tiny_llama, TEXTS, [Site(1)], tmp_path, **kwargs)
    assert calls == []


def test_resume_refuses_a_different_capture(tiny_llama, tmp_path):
    capture_activations(tiny_llama, TEXTS, [Site(1)], tmp_path, progress=False)
    with pytest.raises(SparekitError, match="sites differs"):
        capture_activations(tiny_llama, TEXTS, [Site(2)], tmp_path, progress=False)
    with pytest.raises(SparekitError, match="texts_sha256 differs"):
        capture_activations(tiny_llama, TEXTS[::-1], [Site(1)], tmp_path, progress=False)


def test_chunks_bound_memory_by_shard_rows(tiny_llama, tmp_path, monkeypatch):
    """Each chunk in flight holds at most shard_rows + one text's tokens; reads hold one shard."""
    texts = TEXTS * 10
    longest = max(len(tiny_llama.tokenizer(t)["input_ids"]) for t in texts)
    store = capture_activations(tiny_llama, texts, [Site(0)], tmp_path, positions="all", shard_rows=30,
                                progress=False)
    rows = [s["rows"] for s in store.manifest["shards"]]
    assert len(rows) > 5 and max(rows) < 30 + longest and sum(rows) == len(store)
    reads = []
    real = ActivationStore._read
    monkeypatch.setattr(ActivationStore, "_read", lambda self, i, key: reads.append(i) or real(self, i, key))
    stream = store.iter_batches(Site(0), 8)
    next(stream)
    assert reads == [0]


def test_errors(tiny_llama, tmp_path):
    with pytest.raises(SparekitError, match="out of range"):
        capture_activations(tiny_llama, TEXTS, [Site(99)], tmp_path, progress=False)
    with pytest.raises(SparekitError, match="ids"):
        capture_activations(tiny_llama, TEXTS, [Site(0)], tmp_path, ids=["a"], progress=False)
    with pytest.raises(SparekitError, match="missing manifest.json"):
        ActivationStore(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(SparekitError, match="not valid JSON"):
        ActivationStore(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "activation_store", "format_version": 1}))
    with pytest.raises(SparekitError, match="corrupt"):
        ActivationStore(tmp_path)
    store = capture_activations(tiny_llama, TEXTS, [Site(0)], tmp_path / "ok", progress=False)
    with pytest.raises(SparekitError, match="not in this store"):
        store.load(Site(1))


def test_capture_cli_on_a_corpus(tiny_llama, tmp_path, capsys):
    from sparekit.cli.main import main

    folder = tmp_path / "model"
    tiny_llama.model.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    args = ["capture", "--texts", str(corpus), "--model", str(folder), "--layers", "1-2", "--components",
            "resid,mlp", "--positions", "all", "--skip-first-token", "--out", str(tmp_path / "acts"), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sites"] == ["mlp.1", "resid.1", "mlp.2", "resid.2"]
    assert result["rows"] == sum(len(tiny_llama.tokenizer(t)["input_ids"]) - 1 for t in TEXTS)
    assert main(["capture", "--texts", str(corpus), "--model", str(folder), "--layers", "9",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "out of range" in capsys.readouterr().err
