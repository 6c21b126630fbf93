"""The plugin over HTTP with the official openai client: ``sparekit serve --engine vllm`` already running at
``SPAREKIT_VLLM_URL`` (``scripts/test_vllm.sh`` starts it), compared with the built-in engine's reference."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
from sparekit.serve.options import Capabilities, OptionError, parse_options

openai = pytest.importorskip("openai")

URL = os.environ.get("SPAREKIT_VLLM_URL", "")
BARE_URL = os.environ.get("SPAREKIT_VLLM_BARE_URL", "")
REFERENCE = os.environ.get("SPAREKIT_VLLM_REFERENCE", "")
pytestmark = pytest.mark.skipif(not Path(REFERENCE).is_file(), reason="needs a reference (SPAREKIT_VLLM_REFERENCE)")


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(Path(REFERENCE).read_text())


@pytest.fixture(scope="module")
def client():
    if not URL:
        pytest.skip("needs a running `sparekit serve --engine vllm` (SPAREKIT_VLLM_URL)")
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
    out = complete(client, reference["prompts"][1], 4, detect=True, steer={"method": "actadd", "toward": "memory",
                                                                        "gate": True})  # the probe-gated test bundle
    reading = out.model_extra["sparekit"]
    assert abs(reading["conflict_probability"] - reference["detect"][1]["conflict_probability"]) <= 0.02
    assert reading["gate"] is True and isinstance(reading["steered"], bool)


def reference_caps(reference: dict) -> Capabilities:
    """What the server loaded, as the reference records it (the same fitted folders)."""
    methods: dict[str, dict[str, float]] = {}
    for key, strength in reference["strengths"].items():
        method, toward = key.split("/")
        methods.setdefault(method, {})[toward] = strength
    return Capabilities(methods, frozenset({"actadd"}), can_detect=True, max_strength=16.0)


def refused_beside_a_good_request(ask, prompt: str, bad: dict) -> tuple[dict, bool]:
    """A bad request sent while a good one is in flight: its 400 body and whether the good one was still
    running; the good one must come back as the same request alone does."""
    alone = ask(prompt, 32).choices[0].text
    with ThreadPoolExecutor(1) as pool:
        good = pool.submit(ask, prompt, 32)
        time.sleep(0.2)  # the good request is in the engine by now (its 32 tokens take seconds on this CPU)
        with pytest.raises(openai.BadRequestError) as caught:
            ask(prompt, 4, **bad)
        in_flight = not good.done()
        assert good.result().choices[0].text == alone
    assert caught.value.status_code == 400
    return caught.value.body, in_flight


def validator_error(raw: dict, caps: Capabilities) -> dict:
    """The error sparekit.serve.options gives ``raw`` (the built-in engine answers with this same body)."""
    with pytest.raises(OptionError) as caught:
        parse_options(raw, caps)
    return caught.value.body()["error"]


@pytest.mark.parametrize(("sparekit", "param"), [
    ({"steer": {"method": "nope", "toward": "memory"}}, "sparekit.steer.method"),
    ({"steer": {"toward": "memory", "strength": 1e6}}, "sparekit.steer.strength"),
    ({"steer": {"toward": "memory", "strength": -1}}, "sparekit.steer.strength"),
    ({"steer": {"method": "spare", "toward": "sideways"}}, "sparekit.steer.toward"),
    ({"steer": {"method": "spare", "toward": "memory", "dose": 2}}, "sparekit.steer.dose"),
    ({"detect": "yes"}, "sparekit.detect"),
])
def test_bad_input_is_a_400_and_the_request_in_flight_is_unchanged(client, reference, sparekit, param):
    body, in_flight = refused_beside_a_good_request(partial(complete, client), reference["prompts"][2], sparekit)
    print(f"\n{param}: 400 while the good request was {'in flight' if in_flight else 'already answered'}")
    assert body["param"] == param and body["type"] == "invalid_request_error"
    assert body == validator_error(sparekit, reference_caps(reference))


@pytest.mark.skipif(not BARE_URL, reason="needs a server on the model without sparekit assets (SPAREKIT_VLLM_BARE_URL)")
@pytest.mark.parametrize(("sparekit", "param", "words"), [
    ({"detect": True}, "sparekit.detect", "no conflict probes"),
    ({"steer": {"method": "spare", "toward": "memory"}}, "sparekit.steer.method", "no fitted methods"),
])
def test_a_model_without_assets_refuses_detect_and_steer(reference, sparekit, param, words):
    bare = openai.OpenAI(base_url=f"{BARE_URL}/v1", api_key="none", max_retries=0, timeout=300)
    model = bare.models.list().data[0].id

    def ask(prompt: str, max_tokens: int, **options):
        return bare.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                       extra_body={"sparekit": options} if options else None)

    body, _ = refused_beside_a_good_request(ask, reference["prompts"][3], sparekit)
    assert body["param"] == param and words in body["message"]
    assert body == validator_error(sparekit, Capabilities())


def test_detect_with_stream_is_refused_in_one_line(client, reference):
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.completions.create(model="default", prompt=reference["prompts"][0], max_tokens=2, stream=True,
                                  extra_body={"sparekit": {"detect": True}})
