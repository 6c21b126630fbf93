"""One prompt builder on the real default model: the same context and question, in the same prompt format, give
the same prompt text and the same conflict probability from `sparekit detect --json`, `demo`'s reading,
`/v1/answer`, `sparekit steer --json` and the library (`sparekit.detect`)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")

from serve_helpers import post, serving  # noqa: E402

import sparekit  # noqa: E402
from sparekit.probes.detect import read_contexts  # noqa: E402
from sparekit.cli.main import main  # noqa: E402
from sparekit.probes.detect import load_probes, prompt_builder, resolve_probe_dir  # noqa: E402
from sparekit.serve import Limits, build_engine  # noqa: E402

QUESTION = "What is the capital of France?"
#: (contexts, prompt format): a conflict and a true context in the shipped format, then the other formats
CASES = [(["The capital of France is Porto-Novo."], "three_shot"), (["The capital of France is Paris."], "three_shot"),
         (["The capital of France is Porto-Novo."], "zero_shot"),
         (["France is a country in Western Europe.", "The capital of France is Porto-Novo."], "rag"),
         (["The capital of France is Porto-Novo."], "llamaindex")]


def cli_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def server(default_lm):
    engine = build_engine(default_lm)
    with serving(engine, Limits()) as (_, url):
        yield engine, url


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["probe", None])
@pytest.mark.parametrize("contexts, fmt", CASES)
def test_every_entry_point_builds_and_reads_the_same_prompt(default_lm, server, capsys, monkeypatch, contexts, fmt,
                                                             detector):
    """With the probe, and with each surface's default (``auto``: recall, the question and context being known)."""
    monkeypatch.setattr("sparekit.models.load_model", lambda *args, **kwargs: default_lm)  # one model load in all
    engine, url = server
    context_options = [arg for c in contexts for arg in ("--context", c)]
    option, named = (["--detector", detector], {"detector": detector}) if detector else ([], {})
    detected = cli_json(capsys, ["detect", "--question", QUESTION, *context_options, "--prompt-format", fmt, "--json",
                                 *option])
    library = sparekit.detect(default_lm, QUESTION, contexts, prompt_format=fmt, **named)
    probes = load_probes(resolve_probe_dir(None, default_lm.info), default_lm.info.model_hash)
    demo = read_contexts(default_lm, probes, prompt_builder(default_lm, probes.folder, fmt), QUESTION,
                         {"case": contexts, "closed": None}, **named)["case"]
    status, answer = post(url + "/v1/answer", {"context": contexts, "question": QUESTION, "prompt_format": fmt,
                                               **({"detect": detector} if detector else {})})
    assert status == 200, answer
    prompts = {"detect": detected["prompt"], "library": library["prompt"], "demo": demo["prompt"],
               "server": engine.answer_prompt(contexts, QUESTION, fmt)}
    readings = {"detect": detected, "library": library, "demo": demo, "server": answer["sparekit"]}
    if len(contexts) == 1:  # `steer` takes one CONTEXT
        steered = cli_json(capsys, ["steer", contexts[0], QUESTION, "--toward", "memory", "--prompt-format", fmt,
                                    "--json", *option])
        prompts["steer"], readings["steer"] = steered["prompt"], steered["detection"]
    assert len(set(prompts.values())) == 1, prompts
    assert {r["detector"] for r in readings.values()} == {detector or "recall"}
    assert prompts["detect"].endswith(("answer:", "Answer:")) and all(c in prompts["detect"] for c in contexts)
    p = detected["conflict_probability"]
    for where, reading in readings.items():  # demo reads its two contexts in one left-padded batch: float32 noise
        assert reading["conflict_probability"] == pytest.approx(p, abs=1e-5), where  # of ~2e-5 on the logit
        assert reading["predicted_source"] == detected["predicted_source"], where


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["three_shot", "zero_shot", "rag", "llamaindex"])
def test_the_shipped_probes_read_conflict_and_truth_apart_in_every_format(default_lm, fmt):
    """The shipped probes (fitted across formats, issue 29 item 3) tell the README's conflict from the truth in
    every format the default model has; the shipped three_shot prompt keeps its bytes."""
    conflict = sparekit.detect(default_lm, QUESTION, "The capital of France is Porto-Novo.", prompt_format=fmt,
                               detector="probe")
    truth = sparekit.detect(default_lm, QUESTION, "The capital of France is Paris.", prompt_format=fmt,
                            detector="probe")
    assert conflict["conflict_probability"] > 0.5 > truth["conflict_probability"], (conflict, truth)
    assert conflict["in_distribution"] and truth["in_distribution"]  # the shipped probe carries its statistics
    if fmt == "three_shot":
        assert conflict["prompt"].startswith("context: In Qatar, people pay with the Rial.\nquestion: What is the cur")


@pytest.mark.slow
def test_chat_without_a_template_is_one_line_everywhere(default_lm, server, capsys, monkeypatch):
    monkeypatch.setattr("sparekit.models.load_model", lambda *args, **kwargs: default_lm)
    _, url = server
    for argv in (["detect", "--question", QUESTION, "--prompt-format", "chat"],
                 ["steer", "c", QUESTION, "--toward", "memory", "--prompt-format", "chat"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: the prompt format 'chat' needs the model's chat template")
        assert err.count("\n") == 1
    status, reply = post(url + "/v1/answer", {"question": QUESTION, "prompt_format": "chat"})
    assert status == 400 and reply["error"]["param"] == "prompt_format" and "chat template" in reply["error"]["message"]
    status, reply = post(url + "/v1/answer", {"question": QUESTION, "prompt_format": "rga"})
    assert status == 400 and reply["error"]["param"] == "prompt_format"
    assert "did you mean 'rag'" in reply["error"]["message"]


@pytest.mark.slow
@pytest.mark.parametrize("contexts, fmt, detector", [(*CASES[0], "recall"), (*CASES[1], "recall"),
                                                     (*CASES[3], "recall"), (*CASES[0], "probe+recall"),
                                                     (*CASES[1], "probe+recall")])
def test_every_entry_point_reads_the_same_with_the_recall_detector(default_lm, server, capsys, monkeypatch, contexts,
                                                                    fmt, detector):
    """`--detector recall` (`"detect": "recall"` on the server), and probe+recall with the shipped combination: the
    same closed-book answers, the same decision and the same number from `detect`, the library, `demo`'s reading,
    `steer`, `/v1/answer` and, for a prompt given as three_shot text, `/v1/completions`."""
    monkeypatch.setattr("sparekit.models.load_model", lambda *args, **kwargs: default_lm)
    engine, url = server
    context_options = [arg for c in contexts for arg in ("--context", c)]
    detected = cli_json(capsys, ["detect", "--question", QUESTION, *context_options, "--prompt-format", fmt,
                                 "--detector", detector, "--json"])
    probes = load_probes(resolve_probe_dir(None, default_lm.info), default_lm.info.model_hash)
    readings = {
        "library": sparekit.detect(default_lm, QUESTION, contexts, prompt_format=fmt, detector=detector),
        "demo": read_contexts(default_lm, probes, prompt_builder(default_lm, probes.folder, fmt), QUESTION,
                              {"case": contexts}, detector)["case"]}
    status, answer = post(url + "/v1/answer", {"context": contexts, "question": QUESTION, "prompt_format": fmt,
                                               "detect": detector})
    assert status == 200, answer
    readings["/v1/answer"] = answer["sparekit"]
    if len(contexts) == 1:
        readings["steer"] = cli_json(capsys, ["steer", contexts[0], QUESTION, "--toward", "memory", "--prompt-format",
                                              fmt, "--detector", detector, "--json"])["detection"]
    if fmt == "three_shot":
        status, completed = post(url + "/v1/completions", {"prompt": detected["prompt"], "max_tokens": 2,
                                                           "sparekit": {"detect": detector}})
        assert status == 200, completed
        readings["/v1/completions"] = completed["choices"][0]["sparekit"]
    assert detected["detector"] == detector and (detected["probe_dir"] is None) == (detector == "recall")
    assert detected["conflict"] == ("Porto-Novo" in contexts[-1])  # the README's conflict, and the truth
    for where, reading in readings.items():
        assert reading["detector"] == detector, where
        for key in ("closed_book_answers", "unrecalled", "conflict", "predicted_source"):
            assert reading[key] == detected[key], (where, key)
        tolerance = 1e-6 if detector == "recall" else 1e-5  # the probe's logit: 1e-5, as the probe test's
        assert reading["conflict_probability"] == pytest.approx(detected["conflict_probability"], abs=tolerance), where


@pytest.mark.slow
def test_the_server_says_how_to_ask_for_recall_on_a_prompt_it_cannot_split(server):
    _, url = server
    status, reply = post(url + "/v1/completions", {"prompt": "Passage: a\nQuestion: b?\nAnswer:", "max_tokens": 2,
                                                   "sparekit": {"detect": "recall"}})
    assert status == 400 and reply["error"]["param"] == "sparekit.detect"
    assert "three_shot blocks; ask /v1/answer" in reply["error"]["message"]
    status, reply = post(url + "/v1/answer", {"question": QUESTION, "detect": "recall"})
    assert status == 400 and "none was given" in reply["error"]["message"]
