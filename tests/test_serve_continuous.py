"""Continuous batching in the built-in engine: rows leave the batch when they finish, later requests join it,
and every row still answers as it would alone (and as a static batch answers)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from serve_helpers import fit_assets, reference  # noqa: E402

from sparekit.evaluation.generation import greedy_generate  # noqa: E402
from sparekit.models.tiny import tiny_model  # noqa: E402
from sparekit.probes.detect import detect_prompt  # noqa: E402
from sparekit.serve import build_engine  # noqa: E402
from sparekit.serve.engine import Engine, Job, Sampling  # noqa: E402
from sparekit.serve.options import RowSteer  # noqa: E402

SHARED = "".join(f"context: fact {i} holds.\nquestion: what is {i}?\nanswer: {i}\n\n" for i in range(4))


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def assets(lm, tmp_path_factory):
    return fit_assets(lm, tmp_path_factory.mktemp("continuous"))


def run_joining(engine: Engine, first: list[dict], later: dict[int, list[dict]]) -> tuple[list[dict], list[int]]:
    """Start ``first`` as a batch; ``later[k]`` joins once ``k`` decoding steps ran (an engine that does not
    take joining rows runs them as a batch afterwards). Returns each row's events (``first`` then ``later`` by
    step) and the rows of every decoding step."""
    results: list[dict] = []
    steps: list[int] = []

    def job(row: dict) -> Job:
        out: dict = {"delta": []}
        results.append(out)
        def emit(kind: str, data) -> None:
            out["delta"].append(data) if kind == "delta" else out.__setitem__(kind, data)

        return Job(emit=emit, **row)

    start = [job(row) for row in first]
    queued = {k: [job(row) for row in rows] for k, rows in sorted(later.items())}

    def join(running: int) -> list[Job]:
        due = [k for k in queued if k <= len(steps)]
        return [j for k in due for j in queued.pop(k)]

    engine.run(start, join, steps.append)
    if queued:
        engine.run([j for k in sorted(queued) for j in queued[k]], None, steps.append)
    return results, steps


def test_rows_joining_mid_batch_answer_as_if_alone(lm, assets):
    engine = build_engine(lm, assets[0], [assets[1]], batching="continuous")
    first = [dict(prompt="context: a b c\nquestion: x?\nanswer:", max_tokens=2, detect=True),
             dict(prompt="hi", max_tokens=9),
             dict(prompt="zz top 12", max_tokens=5, steer=RowSteer("actadd", "context", 1.0), detect=True)]
    later = {1: [dict(prompt="question: what is it?\nanswer:", max_tokens=6, steer=RowSteer("actadd", "context", 2.0)),
                 dict(prompt="a much longer prompt than the others in the batch", max_tokens=4, detect=True)],
             3: [dict(prompt="late", max_tokens=7, steer=RowSteer("actadd", "context", 2.0), detect=True)]}
    results, steps = run_joining(engine, first, later)
    rows = first + later[1] + later[3]
    for row, result in zip(rows, results):
        done = result["done"]
        assert done["text"] == reference(lm, engine, row["prompt"], row.get("steer"), row["max_tokens"]), row
        assert done["completion_tokens"] == row["max_tokens"] and done["finish_reason"] == "length"
        assert done["prompt_tokens"] == len(row["prompt"]) + 1
        if row.get("detect"):
            expected = detect_prompt(lm, row["prompt"], assets[0])["conflict_probability"]
            assert done["sparekit"]["conflict_probability"] == pytest.approx(expected, abs=1e-5)
    # 3 rows step once, two join (5), the first leaves after its 2 tokens (4), one joins after step 3 (5), ...
    assert steps[:4] == [3, 4, 4, 5] and steps[-1] == 1
    assert sum(steps) == sum(row["max_tokens"] - 1 for row in rows)  # no step was spent on a finished row


def test_static_retire_and_continuous_batching_answer_alike(lm, assets):
    """The three batching modes on one batch: shared-prefix prompts, stop strings, seeded sampling, penalties."""
    rows = [dict(prompt=SHARED + "zz", max_tokens=8, stop=("e",)),
            dict(prompt=SHARED + "question: and 9?\nanswer:", max_tokens=3, detect=True),
            dict(prompt=SHARED + "q", max_tokens=10, sampling=Sampling(temperature=1.3, seed=5)),
            dict(prompt=SHARED + "x y", max_tokens=6, sampling=Sampling(frequency_penalty=1.5, presence_penalty=0.5)),
            dict(prompt="no shared prefix", max_tokens=5, steer=RowSteer("actadd", "memory", 2.0), stream=True)]
    answers = {}
    for mode in ("static", "retire", "continuous"):
        engine = build_engine(lm, assets[0], [assets[1]], batching=mode)
        results, steps = run_joining(engine, rows[:3], {2: rows[3:]})
        answers[mode] = [(r["done"]["text"], r["done"]["finish_reason"], r["done"]["completion_tokens"],
                          r["done"]["sparekit"].get("conflict_probability"), "".join(r["delta"])) for r in results]
        if mode == "static":  # every row kept its place; the later rows ran as a batch of their own afterwards
            assert set(steps) == {3, 2}
    assert answers["static"] == answers["retire"] == answers["continuous"]
    assert answers["continuous"][4][4] == answers["continuous"][4][0]  # the streamed deltas add up to the text


def test_a_sliding_window_model_joins_only_inside_its_window():
    """Gemma 3's local layers keep the last ``sliding_window`` columns: rows join only while the batch fits."""
    lm = tiny_model("gemma3_text")  # sliding window 8
    engine = build_engine(lm, batching="continuous")
    short = [dict(prompt="hi", max_tokens=3)], {1: [dict(prompt="yo", max_tokens=2)]}
    results, steps = run_joining(engine, *short)
    assert steps == [1, 2]  # "yo" joined: 4 columns + 2 more tokens stay inside the window
    long = [dict(prompt="a prompt longer than the window", max_tokens=4)], {1: [dict(prompt="yo", max_tokens=3)]}
    results_long, steps_long = run_joining(engine, *long)
    assert steps_long == [1, 1, 1, 1, 1]  # "yo" waited for the long row instead of joining
    for (first, later), found in ((short, results), (long, results_long)):
        for row, result in zip(first + later[1], found):
            expected = greedy_generate(lm, [row["prompt"]], max_new_tokens=row["max_tokens"], stop_at_newline=False)
            assert result["done"]["text"] == expected[0]
