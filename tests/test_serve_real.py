"""The server on the real default model: batched answers equal ``sparekit steer``'s, detection equals ``detect``'s."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from serve_helpers import get, metric, post, serving  # noqa: E402

from sparekit.steering.question import steer_question  # noqa: E402
from sparekit.probes.detect import detect_prompt, prompt_builder  # noqa: E402
from sparekit.serve import Limits, build_engine  # noqa: E402

CONTEXT, QUESTION = "The capital of France is Porto-Novo.", "What is the capital of France?"


@pytest.mark.slow
def test_default_model_answers_in_one_batch_like_the_cli(default_lm):
    engine = build_engine(default_lm)
    probe = {"context": CONTEXT, "question": QUESTION, "detect": "probe"}  # read off the batch's own prompt pass
    bodies = [probe, {**probe, "steer": {"method": "spare", "toward": "memory"}},
              {**probe, "steer": {"method": "spare", "toward": "context"}}]
    with serving(engine, Limits(batch_wait_ms=2000, max_batch=3)) as (_, url):
        with ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(lambda body: post(url + "/v1/answer", body), bodies))
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        completion = client.completions.create(
            model="default", prompt=engine.answer_prompt(CONTEXT, QUESTION), max_tokens=4, stop=["\n"],
            extra_body={"sparekit": {"detect": True, "steer": {"method": "spare", "toward": "memory", "gate": True}}})
        text = get(url + "/metrics")[1]
        by_recall = {t: post(url + "/v1/answer", {"context": c, "question": QUESTION, "detect": False,
                                                  "steer": {"method": "spare", "toward": "memory", "gate": "recall"}})
                     for t, c in (("conflict", CONTEXT), ("true", "The capital of France is Paris."))}
    assert metric(text, "sparekit_batch_size_count") == 2 and metric(text, "sparekit_batch_size_sum") == 4
    (s0, plain), (s1, memory), (s2, context) = replies
    assert s0 == s1 == s2 == 200
    cli = {t: steer_question(default_lm, CONTEXT, QUESTION, t, "spare", None, None, prompt_builder(default_lm)) for t in ("memory", "context")}
    assert plain["answer"] == cli["memory"]["unsteered"]
    assert memory["answer"] == cli["memory"]["steered"] and context["answer"] == cli["context"]["steered"]
    assert memory["answer"] != plain["answer"]  # the README's example: Africa instead of France
    detected = detect_prompt(default_lm, cli["memory"]["prompt"])
    for reply in (plain, memory):  # the steered row reads the unsteered prompt too
        assert reply["sparekit"]["conflict_probability"] == pytest.approx(detected["conflict_probability"], abs=1e-4)
        assert reply["sparekit"]["predicted_source"] == detected["predicted_source"]
    gated = steer_question(default_lm, CONTEXT, QUESTION, "memory", "spare", None, None, prompt_builder(default_lm),
                           gated=True)
    assert completion.sparekit["steered"] == gated["gate_fired"]
    assert completion.choices[0].text.strip() == gated["steered"]
    for kind, context in (("conflict", CONTEXT), ("true", "The capital of France is Paris.")):  # --gate-by recall
        cli_gated = steer_question(default_lm, context, QUESTION, "memory", "spare", None, None,
                                   prompt_builder(default_lm), gate_by="recall")
        status, reply = by_recall[kind]
        assert status == 200 and reply["sparekit"]["steered"] == cli_gated["gate_fired"] == (kind == "conflict")
        assert reply["answer"] == cli_gated["steered"]
