"""The plugin over HTTP with the official openai client: ``sparekit serve --engine vllm`` already running at
``SPAREKIT_VLLM_URL`` (``scripts/test_vllm.sh`` starts it), compared with the built-in engine's reference."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

URL = os.environ.get("SPAREKIT_VLLM_URL", "")
REFERENCE = os.environ.get("SPAREKIT_VLLM_REFERENCE", "")
pytestmark = pytest.mark.skipif(not URL or not Path(REFERENCE).is_file(), reason="needs a reference and a running "
                                "`sparekit serve --engine vllm` (SPAREKIT_VLLM_URL)")


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(Path(REFERENCE).read_text())


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=f"{URL}/v1", api_key="none", max_retries=0, timeout=300)


def complete(client, prompt: str, max_tokens: int, **sparekit):
    extra = {"sparekit": sparekit} if sparekit else None
    return client.completions.create(model="default", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                     extra_body=extra)


def test_detect_comes_back_in_the_response(client, reference):
    out = complete(client, reference["prompts"][0], 1, detect=True)
    reading = out.model_extra["sparekit"]
    expected = reference["detect"][0]
    assert abs(reading["conflict_probability"] - expected["conflict_probability"]) <= 0.02
    assert reading["predicted_source"] == expected["predicted_source"] and reading["steered"] is False
    assert out.choices[0].model_extra["sparekit"] == reading


def test_steered_answers_match_the_builtin_engine(client, reference):
    answers = reference["answers"]  # the setting that changes the most answers
    key = max((k for k in answers if k != "none"), key=lambda k: sum(map(str.__ne__, answers[k], answers["none"])))
    method, toward = key.split("/")
    prompts = reference["prompts"][:10]
    with ThreadPoolExecutor(4) as pool:  # concurrent requests: continuous batching mixes them
        outs = list(pool.map(lambda p: complete(client, p, reference["max_tokens"],
                                                steer={"method": method, "toward": toward}), prompts))
    got = [o.choices[0].text for o in outs]
    same = sum(a == b for a, b in zip(got, reference["answers"][key][:10], strict=True))
    print(f"\nover HTTP, {key}: {same}/10 answers identical to the builtin engine")
    assert same >= 8 and all(o.model_extra["sparekit"]["steered"] for o in outs)


def test_detection_and_gate_read_the_unsteered_prompt(client, reference):
    key = next(k for k in reference["answers"] if k != "none")
    method, toward = key.split("/")
    out = complete(client, reference["prompts"][1], 4, detect=True, steer={"method": method, "toward": toward,
                                                                        "gate": True})
    reading = out.model_extra["sparekit"]
    assert abs(reading["conflict_probability"] - reference["detect"][1]["conflict_probability"]) <= 0.02
    assert reading["gate"] is True and isinstance(reading["steered"], bool)


@pytest.mark.parametrize(("sparekit", "param"), [
    ({"steer": {"method": "nope", "toward": "memory"}}, "sparekit.steer.method"),
    ({"steer": {"toward": "memory", "strength": 1e6}}, "sparekit.steer.strength"),
    ({"detect": "yes"}, "sparekit.detect"),
])
def test_bad_input_is_a_400_and_the_batch_goes_on(client, reference, sparekit, param):
    prompt = reference["prompts"][2]
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(complete, client, prompt, reference["max_tokens"])
        with pytest.raises(openai.BadRequestError) as caught:
            complete(client, prompt, 4, **sparekit)
        assert good.result().choices[0].text == reference["answers"]["none"][2] or good.result().choices[0].text
    assert caught.value.status_code == 400 and caught.value.body["param"] == param


def test_detect_with_stream_is_refused_in_one_line(client, reference):
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.completions.create(model="default", prompt=reference["prompts"][0], max_tokens=2, stream=True,
                                  extra_body={"sparekit": {"detect": True}})
