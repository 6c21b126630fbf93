"""The evaluation harness on a tiny random model: metrics shape, run directory, resume."""

from __future__ import annotations

import json

import pytest

from sparekit.data import ConflictDataset, ConflictExample
from sparekit.errors import SparekitError
from sparekit.evaluation import harness
from sparekit.evaluation.harness import METRICS, condition_prompts, evaluate, memorised_subset


@pytest.fixture(scope="module")
def small() -> ConflictDataset:
    rows = [ConflictExample(id=f"r{i}", question=f"q{i // 2}", org_context=f"fact {i}", org_answer=(f"a{i}",),
                            sub_context=f"other {i}", sub_answer=(f"b{i}",), relation="even" if i % 4 < 2 else "odd")
            for i in range(10)]
    return ConflictDataset(rows, "small")


def test_condition_prompts_share_demos_between_org_and_sub(small):
    org, sub = (condition_prompts(small, c, seed=1, k_shot=2) for c in ("org", "sub"))
    closed = condition_prompts(small, "closed", seed=1, k_shot=2)
    assert set(closed) == set(small.groups()) and set(org) == {ex.id for ex in small}
    for ex in small:
        demos = org[ex.id].rsplit("context: ", 1)[0]
        assert sub[ex.id].startswith(demos) and ex.sub_context in sub[ex.id] and ex.org_context in org[ex.id]
        assert f"question: {ex.question}\n" not in demos
    assert condition_prompts(small, "org", seed=2, k_shot=2) != org


def test_evaluate_writes_run_dir_and_resumes(small, tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "CHUNK", 4)
    out = tmp_path / "run"
    result = evaluate(tiny_llama, small, seeds=[1, 2], k_shot=2, out_dir=out, batch_size=4, progress=False)
    assert result["n"] == 10 and result["seeds"] == [1, 2]
    for name in METRICS:
        assert set(result[name]) == {"mean", "std"}
    assert set(result["by_relation"]) == {"even", "odd"}
    shares = [result[k]["mean"] for k in ("conflict_uses_context", "conflict_uses_memory", "conflict_other")]
    assert sum(shares) == pytest.approx(1.0)
    assert json.loads((out / "config.json").read_text())["model_hash"] == tiny_llama.info.model_hash
    assert (out / "environment.json").is_file() and (out / "results.json").is_file()
    items = [json.loads(line) for line in (out / "items-seed1.jsonl").read_text().splitlines()]
    assert [it["id"] for it in items] == [ex.id for ex in small]
    chunks = sorted((out / "predictions").glob("seed1-sub-*.jsonl"))
    assert len(chunks) == 3  # 10 prompts in chunks of 4

    # resume: a missing chunk is regenerated, present ones are read back (tampered text shows through)
    chunks[0].unlink()
    first = (out / "predictions" / "seed2-org-0000.jsonl")
    rows = [json.loads(line) for line in first.read_text().splitlines()]
    rows[0]["prediction"] = "TAMPERED"
    first.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = evaluate(tiny_llama, small, seeds=[1, 2], k_shot=2, out_dir=out, batch_size=4, progress=False)
    assert chunks[0].is_file()
    items2 = [json.loads(line) for line in (out / "items-seed2.jsonl").read_text().splitlines()]
    assert "TAMPERED" in [it["org"] for it in items2]
    assert again["per_seed"]["1"] == result["per_seed"]["1"]

    with pytest.raises(SparekitError, match="different configuration"):
        evaluate(tiny_llama, small, seeds=[1], k_shot=2, out_dir=out, progress=False)


def test_memorised_subset_keeps_closed_book_correct_rows(small, tiny_llama, monkeypatch):
    monkeypatch.setattr(harness, "closed_book_predictions", lambda lm, ds, *a, **k: [ex.org_answer[0] if
                        ex.id in ("r0", "r5") else "nope" for ex in ds])
    assert [ex.id for ex in memorised_subset(tiny_llama, small)] == ["r0", "r5"]


def test_closed_book_predictions_are_cached(small, tiny_llama, tmp_path, monkeypatch):
    first = harness.closed_book_predictions(tiny_llama, small, k_shot=1, cache_dir=tmp_path)
    assert list(tmp_path.glob("closed-*.jsonl"))

    def no_generation(*args, **kwargs):
        raise AssertionError("cached closed-book predictions were generated again")

    monkeypatch.setattr(harness, "greedy_generate", no_generation)
    assert harness.closed_book_predictions(tiny_llama, small, k_shot=1, cache_dir=tmp_path) == first
    with pytest.raises(AssertionError, match="generated again"):
        harness.closed_book_predictions(tiny_llama, small, k_shot=1)
