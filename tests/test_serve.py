"""``sparekit serve``: batching correctness, the OpenAI client against a live server, every bound, drain, load."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from serve_helpers import fit_assets, get, metric, post, reference, run_jobs, serving  # noqa: E402

from sparekit.activations.last_token import last_token_states  # noqa: E402
from sparekit.evaluation.generation import greedy_generate  # noqa: E402
from sparekit.models.tiny import tiny_model  # noqa: E402
from sparekit.probes.detect import detect_prompt  # noqa: E402
from sparekit.probes.training_free import recall_answers, without_context  # noqa: E402
from sparekit.serve import Limits, build_engine  # noqa: E402
from sparekit.serve.options import RowSteer  # noqa: E402
from sparekit.steering import FittedBundle  # noqa: E402
from sparekit.steering.gate import RecallGate  # noqa: E402

MODEL = "tiny-llama"  # tiny_model("llama").info.name: the one model the test server serves
PROMPTS = ["context: a b c\nquestion: x?\nanswer:", "hi", "question: what is it?\nanswer:", "zz top 12"]


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def assets(lm, tmp_path_factory):
    return fit_assets(lm, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def engine(lm, assets):
    return build_engine(lm, assets[0], [assets[1]])


@pytest.fixture(scope="module")
def server(engine):
    with serving(engine, Limits(max_body_bytes=20_000, max_prompt_tokens=300, max_tokens=64, max_strength=10)) as s:
        yield s


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="unused", max_retries=0, timeout=60)


# -- the engine: rows mixed in one batch ------------------------------------------------------------
def test_mixed_batch_rows_match_each_row_alone(lm, engine, assets):
    steers = [None, RowSteer("actadd", "memory", 1.0), RowSteer("actadd", "context", 2.0), None]
    rows = [dict(prompt=p, max_tokens=n, steer=s, detect=True) for p, n, s in zip(PROMPTS, (6, 3, 8, 5), steers)]
    results = run_jobs(engine, rows)
    for row, result in zip(rows, results):
        assert result["done"]["text"] == reference(lm, engine, row["prompt"], row["steer"], row["max_tokens"])
        assert result["done"]["completion_tokens"] <= row["max_tokens"]
        # detection reads the unsteered prompt, whether from the shared pass or the steered rows' early pass
        expected = detect_prompt(lm, row["prompt"], assets[0])
        assert result["done"]["sparekit"]["conflict_probability"] == pytest.approx(expected["conflict_probability"],
                                                                                   abs=1e-5)
        assert result["done"]["sparekit"]["predicted_source"] == expected["predicted_source"]
        assert result["done"]["sparekit"]["steered"] == (row["steer"] is not None)
    # the steering changes something (otherwise the comparison above proves little)
    assert results[1]["done"]["text"] != reference(lm, engine, PROMPTS[1], None, 3)


def test_shared_prefix_is_computed_once_and_answers_stay_the_same(lm, assets):
    """Prefix caching: rows sharing a long demonstration prefix run only their own suffix, with equal results."""
    cached, full = (build_engine(lm, assets[0], [assets[1]], prefix_cache=on) for on in (True, False))
    shared = "".join(f"context: fact {i} holds.\nquestion: what is {i}?\nanswer: {i}\n\n" for i in range(4))
    prompts = [shared + p for p in PROMPTS]
    steers = [None, RowSteer("actadd", "memory", 1.0), RowSteer("actadd", "context", 2.0), None]
    rows = [dict(prompt=p, max_tokens=6, steer=s, detect=True) for p, s in zip(prompts, steers)]
    for attempt in range(2):  # the second batch reuses the kept prefix
        with_prefix, without = run_jobs(cached, rows), run_jobs(full, rows)
        for a, b in zip(with_prefix, without):
            assert a["done"]["text"] == b["done"]["text"] and a["done"]["prompt_tokens"] == b["done"]["prompt_tokens"]
            assert a["done"]["sparekit"]["conflict_probability"] == pytest.approx(
                b["done"]["sparekit"]["conflict_probability"], abs=1e-5)
    (prefix,) = cached.prefixes.entries  # one prefix kept: the shared demonstrations, short of every own token
    assert len(prefix) >= 32 and lm.tokenizer.decode(prefix, skip_special_tokens=True) in shared
    assert full.prefixes is None
    assert with_prefix[1]["done"]["text"] != run_jobs(full, [dict(rows[1], steer=None)])[0]["done"]["text"]
    # a lone request reuses a prefix it shares with one seen before
    alone = run_jobs(cached, [dict(prompt=shared + "zz", max_tokens=5)])[0]["done"]["text"]
    assert alone == run_jobs(full, [dict(prompt=shared + "zz", max_tokens=5)])[0]["done"]["text"]


def test_gate_steers_only_the_rows_where_it_fires(lm, engine):
    gate = engine.steering.gates["actadd"]
    scores = gate.probe.predict_proba(last_token_states(lm, PROMPTS, [gate.site])[gate.site].numpy())[:, 1]
    gate.threshold = float(np.median(scores))
    steer = RowSteer("actadd", "memory", 8.0, gate=True)
    results = run_jobs(engine, [dict(prompt=p, max_tokens=4, steer=steer) for p in PROMPTS])
    fired = [r["done"]["sparekit"]["steered"] for r in results]
    assert fired == (scores > gate.threshold).tolist() and any(fired) and not all(fired)
    for prompt, result, fire in zip(PROMPTS, results, fired):
        assert result["done"]["text"] == reference(lm, engine, prompt, steer if fire else None, 4)


def recall_prompts(lm) -> tuple[str, list[str]]:
    """A question and two three_shot prompts for it: one whose context names the tiny model's closed-book answer
    (the recall gate stays shut), one whose context does not (it fires)."""
    question = "what is x?"
    (answers,), _ = recall_answers(lm, [question])
    return question, [f"context: {context}\nquestion: {question}\nanswer:" for context in ("a b c", answers[0])]


@pytest.mark.parametrize("own", [False, True], ids=["gate-by-recall", "own-recall-gate"])
def test_recall_gate_decides_each_row_as_steer_does(lm, engine, assets, tmp_path, own):
    """``"gate": "recall"``, or a method whose own gate is the recall gate: each row's closed-book twin and
    question decide before the batch, as ``sparekit steer --gate-by recall`` decides; only firing rows are steered."""
    if own:
        saved = FittedBundle.load(assets[1])
        folder = FittedBundle("actadd", saved.directions, saved.demos, saved.model_hash, RecallGate()).save(
            tmp_path / "actadd")
        engine = build_engine(lm, assets[0], [folder])
        assert engine.capabilities(10).twin_gates == {"actadd"}
    question, prompts = recall_prompts(lm)
    steer = RowSteer("actadd", "memory", 8.0, gate=True, gate_by=None if own else "recall")
    rows = [dict(prompt=p, max_tokens=4, steer=steer, closed_book=without_context(p), question=question,
                 detect=True, detector="probe") for p in prompts]
    results = run_jobs(engine, rows + rows[:1])  # a question asked twice in a batch: one closed-book generation
    expected = RecallGate().decide_texts(lm, prompts, [without_context(p) for p in prompts], [question] * 2).tolist()
    fired = [r["done"]["sparekit"]["steered"] for r in results]
    assert fired == [*expected, expected[0]] == [True, False, True]
    for prompt, result, fire in zip(prompts, results, fired):
        assert result["done"]["text"] == reference(lm, engine, prompt, steer if fire else None, 4)
        assert result["done"]["sparekit"]["conflict_probability"] == pytest.approx(  # the probe reads it unsteered
            detect_prompt(lm, prompt, assets[0])["conflict_probability"], abs=1e-5)
    assert ("gate_by" in results[0]["done"]["sparekit"]) is not own


def test_stop_strings_cut_the_text_and_streamed_deltas_add_up(lm, engine):
    full = run_jobs(engine, [dict(prompt=PROMPTS[0], max_tokens=12)])[0]["done"]["text"]
    stop = full[4:6]
    cut = full[:full.find(stop)]
    streamed = run_jobs(engine, [dict(prompt=PROMPTS[0], max_tokens=12, stop=(stop,), stream=True)])[0]
    assert streamed["done"]["text"] == cut and streamed["done"]["finish_reason"] == "stop"
    assert "".join(streamed["delta"]) == cut


# -- the official openai client against a live server -------------------------------------------------
def test_openai_client_completion_with_detect_and_steer(lm, engine, client):
    response = client.completions.create(
        model=MODEL, prompt=PROMPTS[0], max_tokens=6, temperature=0,
        extra_body={"sparekit": {"detect": True, "steer": {"method": "actadd", "toward": "context", "strength": 2}}})
    assert response.choices[0].text == reference(lm, engine, PROMPTS[0], RowSteer("actadd", "context", 2.0), 6)
    assert response.choices[0].text != reference(lm, engine, PROMPTS[0], None, 6)
    info = response.sparekit
    assert info["steered"] is True and info["method"] == "actadd" and info["strength"] == 2.0
    assert 0 <= info["conflict_probability"] <= 1 and info["predicted_source"] in ("context", "memory")
    assert response.usage.completion_tokens == 6 and response.usage.prompt_tokens == len(PROMPTS[0]) + 1


def test_openai_client_streaming_matches_the_plain_answer(client):
    plain = client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=10)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=10, stream=True,
                                            extra_body={"sparekit": {"detect": True}}))
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[0].sparekit["steered"] is False and "conflict_probability" in chunks[0].sparekit
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason == "length"


def test_openai_client_stop_and_prompt_list(client):
    full = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=10).choices[0].text
    stopped = client.completions.create(model=MODEL, prompt=[PROMPTS[1], PROMPTS[3]], max_tokens=10, stop=[full[3:5]])
    assert stopped.choices[0].text == full[:full.find(full[3:5])]
    assert [c.index for c in stopped.choices] == [0, 1]


def test_answer_endpoint_uses_the_prompt_format(server, engine):
    status, body = post(server[1] + "/v1/answer", {"context": "a b", "question": "q?", "max_tokens": 4})
    assert status == 200 and set(body["sparekit"]) >= {"conflict_probability", "predicted_source", "steered"}
    assert engine.answer_prompt("a b", "q?").endswith("context: a b\nquestion: q?\nanswer:")
    assert "\n" not in body["answer"]
    assert engine.answer_prompt(["a b", "c"], "q?", "rag") == "Passage: a b\nPassage: c\nQuestion: q?\nAnswer:"
    status, body = post(server[1] + "/v1/answer", {"context": ["a b", "c"], "question": "q?", "prompt_format": "rag",
                                                   "max_tokens": 4})
    assert status == 200 and "conflict_probability" in body["sparekit"]
    for bad in ({"prompt_format": "rga"}, {"prompt_format": "chat"}, {"prompt_format": 3}, {"context": 3}):
        status, body = post(server[1] + "/v1/answer", {"question": "q?", **bad})
        assert status == 400 and body["error"]["param"].split(".")[0] == next(iter(bad)), body


def test_recall_gate_over_http_reads_what_it_can_and_refuses_the_rest(lm, server):
    question, prompts = recall_prompts(lm)
    gated = {"method": "actadd", "toward": "memory", "strength": 8, "gate": "recall"}
    status, body = post(server[1] + "/v1/completions", {"prompt": prompts, "max_tokens": 3,
                                                        "sparekit": {"steer": gated}})
    assert status == 200 and [c["sparekit"]["steered"] for c in body["choices"]] == [True, False]
    status, body = post(server[1] + "/v1/completions", {"prompt": "hi", "max_tokens": 3, "sparekit": {"steer": gated}})
    assert status == 400 and body["error"]["param"] == "sparekit.steer.gate"
    assert "the recall gate reads a prompt given as text only as three_shot blocks" in body["error"]["message"]
    status, body = post(server[1] + "/v1/answer", {"context": "a b c", "question": question, "max_tokens": 3,
                                                   "steer": gated})
    assert status == 200 and body["sparekit"]["steered"] is True and body["sparekit"]["gate_by"] == "recall"
    status, body = post(server[1] + "/v1/answer", {"question": question, "steer": gated})
    assert status == 400 and body["error"]["param"] == "steer.gate" and "none was given" in body["error"]["message"]


def test_health_metrics_and_playground(server):
    assert json.loads(get(server[1] + "/healthz")[1])["methods"] == ["none", "actadd"]
    post(server[1] + "/v1/completions", {"prompt": "x", "max_tokens": 2})
    status, text = get(server[1] + "/metrics")
    assert status == 200
    assert metric(text, 'sparekit_requests_total{endpoint="/v1/completions",status="200"}') >= 1
    for name in ("sparekit_queue_depth", "sparekit_batch_size_bucket", "sparekit_request_seconds_bucket",
                 "sparekit_errors_total", "sparekit_active_streams"):
        assert name in text
    status, page = get(server[1] + "/")
    assert status == 200 and 'id="gauge-value"' in page and "<script src" not in page  # no CDN


# -- bounds: every one answers with its status and one sentence -------------------------------------------
@pytest.mark.parametrize("body, status, words, param", [
    ({"prompt": "x", "max_tokens": 65}, 400, "limit of 64", "max_tokens"),
    ({"prompt": "x" * 400, "max_tokens": 2}, 400, "limit of 300", "prompt"),
    ({"prompt": "x", "max_tokens": 0}, 400, "at least 1", "max_tokens"),
    ({"prompt": "x", "max_tokens": "many"}, 400, "max_tokens", "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, 400, "integer", "max_tokens"),
    ({"prompt": "x", "temperature": 2.5}, 400, "0 to 2", "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "greater than 0", "top_p"),
    ({"prompt": "x", "logit_bias": {"999999": 5}}, 400, "token ids below", "logit_bias"),
    ({"prompt": "x", "n": 2}, 400, "not supported", "n"),
    ({"prompt": "x", "logprobs": 2}, 400, "not supported", "logprobs"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream: true", "stream_options"),
    ({"max_tokens": 2}, 400, "prompt", "prompt"),
    ({"prompt": "x", "model": "gpt-4o"}, 404, "'gpt-4o' does not exist", "model"),
    ({"prompt": "x", "steer": {"method": "actadd"}}, 400, 'go under "sparekit"', "steer"),
    ({"prompt": "x", "best_of_luck": 1}, 400, "Unknown parameter: best_of_luck", "best_of_luck"),
    ({"prompt": "x", "sparekit": {"steer": {"method": "dola", "toward": "memory"}}}, 400, "none, actadd",
     "sparekit.steer.method"),
    ({"prompt": "x", "sparekit": {"steer": {"method": "actadd", "toward": "up"}}}, 400, "context, memory",
     "sparekit.steer.toward"),
    ({"prompt": "x", "sparekit": {"steer": {"method": "actadd", "toward": "memory", "strength": -1}}}, 400, "0 to 10",
     "sparekit.steer.strength"),
    ({"prompt": "x", "sparekit": {"steer": {"method": "actadd", "toward": "memory", "strength": 11}}}, 400, "0 to 10",
     "sparekit.steer.strength"),
    ({"prompt": "x", "sparekit": {"steer": {"method": "actadd", "toward": "memory", "strength": "1"}}}, 400,
     "0 to 10", "sparekit.steer.strength"),
    ({"prompt": "x", "sparekit": {"steer": {"toward": "memory", "power": 1}}}, 400, "power", "sparekit.steer.power"),
    ({"prompt": "x", "sparekit": {"detect": "maybe"}}, 400, "detect", "sparekit.detect"),
    ({"prompt": "x" * 30_000}, 413, "20000 bytes", None),
    (b"{not json", 400, "not valid JSON", None),
])
def test_bad_requests_get_status_and_one_sentence(server, body, status, words, param):
    code, reply = post(server[1] + "/v1/completions", body)
    assert code == status, reply
    message = reply["error"]["message"]
    assert words in message and "\n" not in message and message.endswith(".")
    assert reply["error"]["param"] == param
    assert reply["error"]["type"] == ("invalid_request_error" if status in (400, 404, 413) else reply["error"]["type"])


def test_openai_client_sees_the_error_message(client):
    with pytest.raises(openai.BadRequestError, match="valid methods: none, actadd"):
        client.completions.create(model=MODEL, prompt="x", extra_body={"sparekit": {"steer": {"method": "spare2",
                                                                                               "toward": "memory"}}})


@pytest.fixture()
def paused(engine):
    """Hold the batcher's next batch until released: makes queue and stream limits deterministic."""
    release, started, original = threading.Event(), threading.Event(), engine.run

    def run(jobs, *feed):
        started.set()
        release.wait(30)
        original(jobs, *feed)

    engine.run = run
    yield started, release
    release.set()
    engine.run = original


def test_full_queue_and_too_many_streams_get_429(engine, paused):
    started, release = paused
    limits = Limits(max_queue=1, max_streams=1, max_batch=1, batch_wait_ms=0)
    with serving(engine, limits) as (_, url), ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, url + "/v1/completions", {"prompt": "a", "max_tokens": 2})
        assert started.wait(10)  # running (held)
        second = pool.submit(post, url + "/v1/completions", {"prompt": "b", "max_tokens": 2})
        _wait_metric(url, "sparekit_queue_depth", 1.0)
        code, reply = post(url + "/v1/completions", {"prompt": "c", "max_tokens": 2})
        assert code == 429 and "queue is full" in reply["error"]["message"]
        release.set()
        assert first.result()[0] == second.result()[0] == 200


def _open_stream(url: str, max_tokens: int) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"prompt": "stream me", "max_tokens": max_tokens, "stream": True}).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def _wait_metric(url: str, name: str, value: float) -> None:
    deadline = time.monotonic() + 20
    while metric(get(url + "/metrics")[1], name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.02)


def test_stream_limit_and_disconnect_frees_the_slot(engine, paused):
    started, release = paused
    with serving(engine, Limits(max_streams=1, batch_wait_ms=0)) as (_, url):
        sock = _open_stream(url, 4)
        assert started.wait(10)
        _wait_metric(url, "sparekit_active_streams", 1.0)
        code, reply = post(url + "/v1/completions", {"prompt": "x", "max_tokens": 2, "stream": True})
        assert code == 429 and "streams" in reply["error"]["message"]
        sock.close()  # the client goes away while its job is held
        _wait_metric(url, "sparekit_active_streams", 0.0)
        _wait_metric(url, "sparekit_cancelled_total", 1.0)
        release.set()
        code, _ = post(url + "/v1/completions", {"prompt": "x", "max_tokens": 2, "stream": True})
        assert code == 200


def test_disconnect_mid_generation_stops_the_row(engine):
    done, original = [], engine.run

    def run(jobs, *feed):
        for job in jobs:
            emit = job.emit
            job.emit = lambda kind, data, emit=emit: (done.append(data) if kind == "done" else None, emit(kind, data))
        original(jobs, *feed)

    engine.run = run
    try:
        with serving(engine, Limits(max_tokens=4000)) as (_, url):
            sock = _open_stream(url, 4000)
            received = b""
            while b"data:" not in received:
                received += sock.recv(4096)
            sock.close()  # after the first chunk: the row is generating
            _wait_metric(url, "sparekit_cancelled_total", 1.0)
            deadline = time.monotonic() + 20
            while not done:
                assert time.monotonic() < deadline
                time.sleep(0.02)
    finally:
        engine.run = original
    assert done[0]["finish_reason"] == "cancelled" and done[0]["completion_tokens"] < 4000


def test_sigterm_drains_in_flight_and_refuses_new(engine, paused):
    started, release = paused
    with serving(engine, Limits(drain_timeout_s=30)) as (server, url), ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(post, url + "/v1/completions", {"prompt": "a", "max_tokens": 3})
        assert started.wait(10)
        server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
        code, reply = post(url + "/v1/completions", {"prompt": "b", "max_tokens": 2})
        assert code == 503 and "shutting down" in reply["error"]["message"]
        assert get(url + "/healthz")[0] == 503
        assert not server.should_exit  # still draining
        release.set()
        assert in_flight.result()[0] == 200
        deadline = time.monotonic() + 10
        while not server.should_exit:
            assert time.monotonic() < deadline
            time.sleep(0.02)


# -- load: 200 requests from 16 concurrent clients, none lost, batches formed -----------------------------
def test_load_200_requests_16_clients(lm, engine):
    prompts = [f"item {i}: {'abc'[i % 3] * (1 + i % 7)}" for i in range(200)]
    with serving(engine, Limits(max_batch=16)) as (_, url):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)

        def ask(prompt: str) -> str:
            return client.completions.create(model=MODEL, prompt=prompt, max_tokens=4).choices[0].text

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, prompts))
        text = get(url + "/metrics")[1]
    assert len(answers) == 200
    assert metric(text, 'sparekit_requests_total{endpoint="/v1/completions",status="200"}') == 200
    assert metric(text, "sparekit_batch_size_sum") == 200
    assert metric(text, "sparekit_batch_size_count") < 100  # requests shared batches
    sample = list(range(0, 200, 25))
    expected = greedy_generate(lm, [prompts[i] for i in sample], max_new_tokens=4, stop_at_newline=False)
    assert [answers[i] for i in sample] == expected



# -- the command line: a real process, a real SIGTERM ----------------------------------------------------------
def test_cli_serve_drains_on_sigterm(lm, tmp_path):
    import os
    import subprocess
    import sys

    folder = tmp_path / "tiny"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "sparekit", "serve", "-m", str(folder), "--port", str(port),
                             "--drain-timeout", "60", "--max-tokens", "2000"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if get(url + "/healthz")[0] == 200:
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        sock = _open_stream(url, 2000)  # seconds of tokens: still streaming when the late request arrives
        received = b""
        while b"data:" not in received:
            received += sock.recv(4096)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        code, reply = post(url + "/v1/completions", {"prompt": "late", "max_tokens": 2})
        assert code == 503 and "another replica" in reply["error"]["message"]
        while not received.endswith(b"data: [DONE]\r\n\r\n") and b"data: [DONE]" not in received[-64:]:
            chunk = sock.recv(65536)
            assert chunk, "the stream was cut before its end"
            received += chunk
        sock.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_kv_compress_serves_what_the_library_generates_under_the_same_compression(lm, assets):
    """``sparekit serve --kv-compress R``: each batch runs inside sparekit.kv.kv_compress."""
    from sparekit.errors import SparekitError
    from sparekit.kv import kv_compress
    from sparekit.serve.engine import Job

    compressed = build_engine(lm, assets[0], [assets[1]], kv_ratio=0.5)
    prompts = ["context: " + "the cat sat on a mat and " * 8 + "\nquestion: where?\nanswer:",
               "context: " + "a long passage of words " * 7 + "\nquestion: what?\nanswer:"]
    done: dict[int, dict] = {}
    jobs = [Job(p, 8, (lambda kind, value, i=i: done.__setitem__(i, value) if kind == "done" else None))
            for i, p in enumerate(prompts)]
    compressed.run(jobs)
    with kv_compress(lm, ratio=0.5):
        expected = greedy_generate(lm, prompts, max_new_tokens=8, stop_at_newline=False)
    assert [done[i]["text"] for i in range(2)] == expected
    plain = greedy_generate(lm, prompts, max_new_tokens=8, stop_at_newline=False)
    assert expected != plain  # the compression is real on these prompts (> min_length tokens)
    with pytest.raises(SparekitError):
        build_engine(lm, assets[0], [assets[1]], kv_ratio=1.5)
