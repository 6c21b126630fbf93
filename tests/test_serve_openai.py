"""OpenAI compatibility of ``sparekit serve`` as RAG frameworks use it: models, chat, sampling, strict bodies."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from serve_helpers import fit_assets, post, run_jobs, serving  # noqa: E402

from sparekit.models.tiny import tiny_model  # noqa: E402
from sparekit.serve import Limits, build_engine  # noqa: E402
from sparekit.serve.engine import Sampling  # noqa: E402

PROMPT = "question: what is it?\nanswer:"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def engine(lm, tmp_path_factory):
    probes, fitted = fit_assets(lm, tmp_path_factory.mktemp("openai"))
    return build_engine(lm, probes, [fitted])


@pytest.fixture(scope="module")
def server(engine):
    with serving(engine, Limits(max_tokens=32)) as s:
        yield s


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_list_and_unknown_model(client, lm):
    assert [m.id for m in client.models.list()] == [lm.info.name]
    assert client.models.retrieve(lm.info.name).id == lm.info.name
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-4o", prompt="x", max_tokens=1)
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


def test_invalid_requests_are_bad_request_errors_naming_the_param(client, lm):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=lm.info.name, prompt="x", max_tokens=2,
                                  extra_body={"steer": {"method": "actadd", "toward": "memory"}})
    assert err.value.body["param"] == "steer" and '"sparekit"' in err.value.body["message"]


def test_chat_without_a_template_reads_plain_turns(client, engine, lm):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is it?"}]
    reply = client.chat.completions.create(model=lm.info.name, messages=messages, max_tokens=6,
                                           extra_body={"sparekit": {"detect": True}})
    expected = run_jobs(engine, [{"prompt": "System: Answer briefly.\nUser: What is it?\nAssistant:",
                                  "max_tokens": 6, "stop": ("\nUser:", "\nSystem:"), "detect": True}])[0]["done"]
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected["text"]
    assert reply.usage.prompt_tokens == expected["prompt_tokens"]
    assert 0 <= reply.choices[0].sparekit["conflict_probability"] <= 1


def test_chat_uses_the_model_template_and_streams_with_usage(client, lm, monkeypatch):
    monkeypatch.setattr(lm.tokenizer, "chat_template", TEMPLATE)
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}]
    plain = client.chat.completions.create(model=lm.info.name, messages=messages, max_tokens=5)
    chunks = list(client.chat.completions.create(model=lm.info.name, messages=messages, max_tokens=5, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens
    assert plain.usage.prompt_tokens == len(lm.tokenizer("<|user|>hi there\n<|assistant|>")["input_ids"])


def test_chat_refuses_image_parts(client, lm):
    with pytest.raises(openai.BadRequestError, match="Only text content parts"):
        client.chat.completions.create(model=lm.info.name, max_tokens=2, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])


def test_seeded_sampling_is_reproducible_and_independent_of_its_batch(engine):
    sampled = {"prompt": PROMPT, "max_tokens": 12, "sampling": Sampling(temperature=1.5, seed=7)}
    greedy = {"prompt": "hi", "max_tokens": 12}
    alone = run_jobs(engine, [sampled])[0]["done"]["text"]
    mixed = run_jobs(engine, [greedy, sampled, {**sampled, "sampling": Sampling(temperature=1.5, seed=8)}])
    assert mixed[1]["done"]["text"] == alone                       # same seed, other rows beside it
    assert mixed[2]["done"]["text"] != alone                       # another seed draws otherwise
    assert mixed[0]["done"]["text"] == run_jobs(engine, [greedy])[0]["done"]["text"]  # greedy rows untouched
    greedy_text = run_jobs(engine, [{**sampled, "sampling": Sampling()}])[0]["done"]["text"]
    assert greedy_text != alone
    nucleus = Sampling(temperature=1.0, top_p=1e-6, seed=1)  # the nucleus holds the top token only: greedy
    assert run_jobs(engine, [{**sampled, "sampling": nucleus}])[0]["done"]["text"] == greedy_text


def test_logit_bias_and_penalties_change_the_answer(client, lm):
    token = lm.tokenizer(" zebra", add_special_tokens=False)["input_ids"][-1]
    biased = client.completions.create(model=lm.info.name, prompt=PROMPT, max_tokens=3, logit_bias={str(token): 100})
    assert biased.choices[0].text == lm.tokenizer.decode([token] * 3)
    repeated = client.completions.create(model=lm.info.name, prompt=PROMPT, max_tokens=12)
    penalised = client.completions.create(model=lm.info.name, prompt=PROMPT, max_tokens=12, frequency_penalty=2.0,
                                          presence_penalty=2.0)
    ids = lm.tokenizer(penalised.choices[0].text, add_special_tokens=False)["input_ids"]
    assert penalised.choices[0].text != repeated.choices[0].text or len(set(ids)) == len(ids)


def test_answer_refuses_an_empty_question_and_a_boolean_limit(server):
    status, body = post(server[1] + "/v1/answer", {"question": "  "})
    assert status == 400 and body["error"]["param"] == "question"
    status, body = post(server[1] + "/v1/answer", {"question": "q?", "max_tokens": True})
    assert status == 400 and body["error"]["param"] == "max_tokens"


def test_langchain_chat_openai_against_the_server(server, engine, lm):
    langchain_openai = pytest.importorskip("langchain_openai")
    chat = langchain_openai.ChatOpenAI(base_url=server[1] + "/v1", api_key="unused", model=lm.info.name,
                                       max_tokens=6, temperature=0, max_retries=0,
                                       extra_body={"sparekit": {"steer": {"method": "actadd", "toward": "memory"}}})
    reply = chat.invoke("What is it?")
    status, body = post(server[1] + "/v1/chat/completions", {
        "model": lm.info.name, "max_tokens": 6, "temperature": 0, "messages": [{"role": "user", "content": "What is it?"}],
        "sparekit": {"steer": {"method": "actadd", "toward": "memory"}}})
    assert status == 200 and reply.content == body["choices"][0]["message"]["content"]
    assert body["choices"][0]["sparekit"]["steered"] is True
    assert json.loads(json.dumps(reply.response_metadata.get("token_usage", {}))).get("total_tokens") == \
        body["usage"]["total_tokens"]


def test_a_bare_model_refuses_detect_and_steer_by_param(lm):
    """No probes and no fitted method (a hub model without sparekit assets): 400s that say so, by param."""
    with serving(build_engine(lm), Limits(max_tokens=8)) as (_, url):
        status, body = post(url + "/v1/completions", {"prompt": "x", "max_tokens": 2, "sparekit": {"detect": True}})
        assert status == 400 and body["error"]["param"] == "sparekit.detect" and "--probe" in body["error"]["message"]
        status, body = post(url + "/v1/completions", {"prompt": "x", "max_tokens": 2,
                                                      "sparekit": {"steer": {"method": "spare", "toward": "memory"}}})
        assert status == 400 and body["error"]["param"] == "sparekit.steer.method"
        assert "valid methods: none" in body["error"]["message"]
        status, body = post(url + "/v1/completions", {"prompt": "x", "max_tokens": 2})
        assert status == 200 and body["sparekit"]["steered"] is False
