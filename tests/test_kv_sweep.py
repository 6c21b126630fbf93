"""Prefill once, compress many: equal to pressing during the prompt pass; RULER items are seeded; a sweep resumes."""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sparekit.data import load_dataset
from sparekit.data.dataset import ConflictExample, read_jsonl
from sparekit.errors import SparekitError
from sparekit.evaluation.generation import tokenize
from sparekit.hooks import cache_keyword
from sparekit.kv import make_press
from sparekit.kv.bench import KVGrid, decode, prefill
from sparekit.kv.ruler import TASKS, ruler_items
from sparekit.kv.sweep import (LABELS, Sink, demonstration_tokens, read_records, run_conflict, run_perplexity,
                             run_ruler, summarize, wilson)
from sparekit.models.tiny import tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_kv_ruler  # a script, not a package

PROMPTS = ["The quick brown fox jumps over the lazy dog near the river bank, twice.", "A shorter prompt here."]
PASSAGES = ["Paris is the capital of France. The river Seine runs through it. It has many museums!",
            "Mount Everest is the highest mountain. Climbers start from a base camp. Is it cold? Very."]
OPTIONS = {"ratio": 0.5, "skip_layers": (0,), "min_length": 0, "keep_last": 2}
CONFLICT_PASSES = [("context: Rome is in Italy.\nquestion: Where is Rome?\nanswer: Italy\n\n"
                    "context: The capital of Peru is Oslo, a city by the sea and the hills.\n"),
                   ("context: Lima is in Peru.\nquestion: Where?\nanswer: Peru\n\n"
                    "context: Berlin lies on the Spree river, in the east of Germany, far from any sea.\n")]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@torch.inference_mode()
def _one_step(lm, enc: dict, cache):
    """``cache`` after one decoding step (which prunes it under an open press)."""
    mask = torch.cat([enc["attention_mask"], torch.ones_like(enc["attention_mask"][:, :1])], dim=-1)
    token = torch.full((len(mask), 1), 7)
    lm.model(input_ids=token, attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1, use_cache=True,
             **{cache_keyword(lm.model): cache})
    return cache


@pytest.mark.parametrize("method", ["l2", "l2-inverse", "random", "recent", "recent-sinks", "snapkv"])
def test_compressing_a_copied_prefill_equals_pressing_during_it(llama, method):
    """The same kept keys in every layer and the same greedy tokens, whether the prompt pass ran inside the
    press (kvpress's way) or once outside it and was copied (snapkv reads its window from that one pass)."""
    press = make_press(method, **OPTIONS, **({"window": 4} if method == "snapkv" else {}))
    enc = tokenize(llama, PROMPTS)
    with press(llama), torch.inference_mode():
        out = llama.model(**tokenize(llama, PROMPTS, position_ids=True), use_cache=True)  # as generate runs it
        inside = _one_step(llama, enc, getattr(out, "cache", None) or out.past_key_values)
    pre = prefill(llama, enc, [None, press])
    with press(llama, pre.observed):
        shared = _one_step(llama, enc, copy.deepcopy(pre.cache))
    for a, b in zip(inside.layers, shared.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert shared.layers[1].keys.shape[2] < pre.cache.layers[1].keys.shape[2]  # pruned, even with the new step
    with press(llama):
        generated = llama.model.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                                         pad_token_id=llama.tokenizer.pad_token_id)
    tokens, _ = decode(llama, enc, pre, 5, press)
    assert torch.equal(generated[:, enc["input_ids"].shape[1]:], tokens)


@pytest.mark.parametrize("method", [None, "l2", "snapkv"])
def test_a_padded_batch_reads_its_questions_as_each_row_alone(llama, method):
    """Contexts and questions of different lengths, both left-padded: each row answers as it does alone
    (its question's positions follow its own last context token)."""
    press = make_press(method, **OPTIONS, **({"window": 4} if method == "snapkv" else {})) if method else None
    questions = [" Where?", " And what was it, exactly?"]

    def answers(rows: list[int]) -> torch.Tensor:
        enc = tokenize(llama, [PROMPTS[i] for i in rows])
        asked = llama.tokenizer([questions[i] for i in rows], add_special_tokens=False, padding=True, return_tensors="pt")
        return decode(llama, enc, prefill(llama, enc, [press]), 4, press, question=asked["input_ids"],
                      question_mask=asked["attention_mask"])[0]

    assert torch.equal(answers([0, 1]), torch.cat([answers([0]), answers([1])]))


@pytest.mark.parametrize("method", ["recent", "l2-inverse", "snapkv"])
def test_demonstrations_are_an_uncompressed_prefix_of_the_conflict_pass(llama, method):
    """Every row's demonstration tokens (a different count per row, left-padded) survive in every compressed
    layer, and the ratio applies to the passage after them (``recent`` alone would evict the demonstrations first)."""
    demos = demonstration_tokens(llama, CONFLICT_PASSES)
    assert demos == tuple(1 + p.rindex("context: ") for p in CONFLICT_PASSES)  # <bos> + one token a character
    press = make_press(method, **OPTIONS, keep_first=demos, **({"window": 4} if method == "snapkv" else {}))
    enc = tokenize(llama, CONFLICT_PASSES)
    pre = prefill(llama, enc, [press])
    with press(llama, pre.observed):
        pruned = _one_step(llama, enc, copy.deepcopy(pre.cache))
    real = enc["attention_mask"].sum(-1).tolist()
    passage = [n - d for n, d in zip(real, demos)]
    held = [d + p - p // 2 for d, p in zip(demos, passage)]
    for layer in range(1, llama.info.n_layers):
        full, kept = pre.cache.layers[layer].keys, pruned.layers[layer].keys
        assert kept.shape[2] == max(held) + 1  # the step's own slot is last
        for row in range(2):
            pad, start = full.shape[2] - real[row], max(held) - held[row]
            assert torch.equal(kept[row, :, start:start + demos[row]], full[row, :, pad:pad + demos[row]])


def test_a_conflict_sweep_compresses_the_passage_only(llama, tmp_path):
    examples = [ConflictExample(f"q{i}", "Where?", "", ("Italy",), "", ("Oslo",)) for i in range(2)]
    prompts = [p + "question: Where is it?\nanswer:" for p in CONFLICT_PASSES]
    grid = KVGrid(ratios=(0.0, 0.5), methods=("recent",), min_length=0, batch_size=2)
    run_conflict(llama, examples, prompts, grid, Sink(tmp_path / "c.jsonl", resume=False), None, "toy")
    records = read_records(tmp_path / "c.jsonl")
    assert [r["demonstration_tokens"] for r in records] == list(demonstration_tokens(llama, CONFLICT_PASSES)) * 2
    assert all(r["label"] in LABELS for r in records)
    assert records[2]["kv_bytes"] < records[0]["kv_bytes"]


def test_snapkv_presses_must_share_their_window():
    with pytest.raises(SparekitError, match="share every option but the ratio"):
        prefill(None, {}, [make_press("snapkv", window=4), make_press("snapkv", window=8)])


def test_ruler_items_are_seeded_and_fill_their_length(llama):
    for task in TASKS:
        first = ruler_items(llama.tokenizer, task, 800, 3, seed=1, passages=PASSAGES)  # one token a character
        assert first == ruler_items(llama.tokenizer, task, 800, 3, seed=1, passages=PASSAGES)
        assert first != ruler_items(llama.tokenizer, task, 800, 3, seed=2, passages=PASSAGES)
        for item in first:
            n = len(llama.tokenizer(item.context + item.question)["input_ids"])
            assert 700 < n <= 800
            assert all(answer in item.context for answer in item.answers)
            assert item.score(" ".join(item.answers)) == 1.0 and item.score("nothing") == 0.0
    with pytest.raises(SparekitError, match="unknown task"):
        ruler_items(llama.tokenizer, "sudoku", 800, 1, seed=0, passages=PASSAGES)
    with pytest.raises(SparekitError, match="cannot hold the needles"):
        ruler_items(llama.tokenizer, "multivalue", 300, 1, seed=0, passages=PASSAGES)


def test_a_sweep_runs_resumes_and_summarizes(llama, tmp_path, capsys):
    """Two items, every method at one ratio: one line per item × cell, a rerun adds none, intervals bracket."""
    grid = KVGrid(ratios=(0.0, 0.5), methods=("l2", "snapkv"), min_length=0, batch_size=2)
    items = [ruler_items(llama.tokenizer, "passkey", 250, 1, 0, PASSAGES)[0],
             ruler_items(llama.tokenizer, "variable_tracking", 500, 1, 0, PASSAGES)[0]]
    out = tmp_path / "sweep.jsonl"
    run_ruler(llama, items, grid, Sink(out, resume=False))
    windows = [list(range(3, 60)), list(range(5, 62))]
    run_perplexity(llama, windows, 40, grid, Sink(out, resume=True))
    records = read_records(out)
    assert len(records) == 2 * 3 + 2 * 3
    with pytest.raises(SparekitError, match="pass --resume"):
        Sink(out, resume=False)
    out.write_text(out.read_text() + '{"model": "cut sho')  # a crash mid-line
    run_ruler(llama, items, grid, Sink(out, resume=True))
    assert read_records(out) == records
    rows = summarize(records)
    assert len(rows) == 3 * 3
    for row in rows:
        assert row["interval"][0] <= row["score"] <= row["interval"][1]
    ppl = [r for r in rows if r["task"] == "perplexity"]
    assert all(r["tokens"] == 2 * 16 for r in ppl) and ppl[0]["change"] == 0.0
    bench_kv_ruler.main(["summary", str(out), str(out), "--out", str(tmp_path / "summary")])  # counted once
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(rows))
    assert "| passkey | 250 |" in (tmp_path / "summary.md").read_text() and (tmp_path / "summary.png").is_file()
    capsys.readouterr()  # the summary's table
    bench_kv_ruler.main(["by-depth", str(out), str(out), "--methods", "l2"])
    lines = [line for line in capsys.readouterr().out.splitlines() if "| passkey |" in line]
    hits = {r["method"]: f"{r['score']:g}/1" for r in records if r["task"] == "passkey"}  # one item, counted once
    assert lines == [f"| {llama.info.name} | passkey | 250 | {m} | {hits[m]} |" for m in ("l2", "none")]


def test_perplexity_cells_of_their_own_are_built_per_batch_and_only_where_missing(llama, tmp_path):
    """``presses`` names the cells and builds each batch's press from its ids; a resumed run builds none."""
    grid = KVGrid(ratios=(0.0,), batch_size=2)
    windows = [list(range(3, 60)), list(range(5, 62)), list(range(7, 64))]
    built = []

    def keep_early(ids):  # a press that depends on the batch, as an oracle's does
        built.append(len(ids))
        return make_press("l2", **{**OPTIONS, "keep_last": int(ids[0, 0])})

    presses = {("none", 0.0): lambda ids: None, ("mine", 0.5): keep_early}
    out = tmp_path / "ppl.jsonl"
    run_perplexity(llama, windows, 40, grid, Sink(out, resume=False), presses)
    records = read_records(out)
    assert built == [2, 1] and len(records) == 3 * 2
    assert {(r["method"], r["ratio"]) for r in records} == set(presses)
    assert [r["key"] for r in records if r["method"] == "mine"] == [f"ppl-40-{i}" for i in range(3)]
    run_perplexity(llama, windows, 40, grid, Sink(out, resume=True), presses)
    assert built == [2, 1] and read_records(out) == records


def test_wilson_interval():
    low, high = wilson(45, 50)
    assert 0.78 < low < 0.79 and 0.95 < high < 0.96  # 90 % of 50: (78.6, 95.7)
    assert wilson(0, 50)[0] == 0.0


def test_the_probe_dev_split_leaves_out_the_conflict_studys_question_groups(tmp_path):
    out = tmp_path / "dev.jsonl"
    bench_kv_ruler.main(["probe-dev", "--items", "20", "--seed", "3", "--out", str(out)])
    data = load_dataset("default-passages")
    study = bench_kv_ruler._study(data, 20, 3)
    assert len(study) == 20 and study == bench_kv_ruler._study(data, 20, 3)
    dev = read_jsonl(out)
    assert not {ex.group for ex in study} & {ex.group for ex in dev}
    assert len(dev) == sum(ex.group not in {s.group for s in study} for ex in data) > 0


def test_kv_conflict_keeps_every_demonstration_position_as_the_benchmark_does(llama, monkeypatch):
    """``sparekit kv conflict`` goes through the benchmark's ``answer_conflicts``: every compressed cell's
    press keeps each row's demonstration tokens (every one survives pruning, in every compressed layer), which
    the same press without ``keep_first`` would not; ``--compress-demonstrations`` compresses them too."""
    from sparekit.kv import experiment, sweep

    seen: list[tuple[int, ...]] = []

    def checked_decode(lm, enc, pre, steps, press, **kw):
        if press is not None:
            seen.append(press.keep_first)
            for first, all_kept in ((press.keep_first, True), (0, False)):
                unkept = replace(press, keep_first=first)
                with unkept(lm, pre.observed):
                    pruned = _one_step(lm, enc, copy.deepcopy(pre.cache))
                survived = _demonstrations_survive(enc, pre.cache, pruned, press.keep_first, press.skip_layers)
                assert survived == all_kept or not any(press.keep_first)
        return decode(lm, enc, pre, steps, press, **kw)

    monkeypatch.setattr(experiment, "load_model", lambda *a, **k: llama)
    monkeypatch.setattr(sweep, "decode", checked_decode)
    config = experiment.KVConflictExperiment(limit=4, k_shot=2, ratios=(0.0, 0.5), methods=("recent",), batch_size=2)
    summary = config.run()
    assert summary["compressed"] == "passage" and summary["results"]["recent"]["0.5"]["n"] == 4
    assert len(seen) == 2 and all(len(counts) == 2 and min(counts) > 10 for counts in seen)
    seen.clear()
    summary = replace(config, compress_demonstrations=True).run()
    assert summary["compressed"] == "demonstrations and passage" and seen == [(0, 0), (0, 0)]


def _demonstrations_survive(enc: dict, full, pruned, demos: tuple[int, ...], skip: tuple[int, ...]) -> bool:
    """Whether every demonstration key of every row is still in every compressed layer's pruned cache."""
    real = enc["attention_mask"].sum(-1).tolist()
    for layer in (i for i in range(len(full.layers)) if i not in skip):
        keys, kept = full.layers[layer].keys, pruned.layers[layer].keys
        for row, count in enumerate(demos):
            pad = keys.shape[2] - real[row]
            for position in range(pad, pad + count):
                if not (kept[row] == keys[row, :, position, None]).all(-1).any(-1).all():
                    return False
    return True


def test_kv_conflict_help_says_what_is_compressed(capsys):
    from sparekit.cli.main import main

    assert main(["kv", "conflict", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--compress-demonstrations" in text and "default: the passage only" in text
    assert "only the passage is compressed" in text and "however short" in text
