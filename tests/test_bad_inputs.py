"""Every command that reads a file, fed a bad one, prints one ``error:`` line and exits 2.

Each case names the command line and a fragment of the line it must print; the table
"Bad input: what each case prints" in BENCHMARKS.md lists the same cases. A tiny random
model stands in for the default one, so nothing here loads Gemma.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import socket
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import sparekit
import sparekit.models
from sparekit.cli.main import main
from sparekit.errors import SparekitError
from sparekit.utils.io import run_lock

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "saelens"
ROW = {"question": "q", "org_context": "c", "org_answer": ["a"], "sub_context": "s", "sub_answer": ["b"]}


def _sae(folder: Path, case: str = "topk") -> Path:
    shutil.copytree(FIXTURES / case, folder)
    (folder / "expected.safetensors").unlink()
    return folder


def _truncated_weights(tmp: Path) -> Path:
    folder = _sae(tmp / "truncated")
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    return folder


def _garbage_header(tmp: Path) -> Path:
    folder = _sae(tmp / "garbage")
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
    return folder


def _cfg(tmp: Path, **changes) -> Path:
    folder = _sae(tmp / "cfg")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, **changes}))
    return folder


def _object_npz(tmp: Path) -> Path:
    folder = tmp / "layer_2" / "width_16k"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", W_enc=np.array([{"a": 1}, None], dtype=object))
    return folder / "params.npz"


def _file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("x")
    return path


def _jsonl(tmp: Path, text: bytes, name: str = "data.jsonl") -> Path:
    path = tmp / name
    path.write_bytes(text)
    return path


SHIPPED_SPARE = Path(sparekit.models.__file__).parents[1] / "assets" / "steering" / "gemma-3-270m" / "spare"
STEER = ["steer", "The capital of France is Porto-Novo.", "What is the capital of France?", "--toward", "memory"]


def _text(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _fitted(tmp: Path, damage: str) -> Path:
    """A copy of the shipped SpARE bundle with one damage: params a list, tensors garbage, tuned settings bad."""
    root = tmp / damage / "spare"
    shutil.copytree(SHIPPED_SPARE, root)
    if damage.startswith("tuned"):
        config = json.loads((root / "config.json").read_text())
        tuned = config["params"]["tuned"]
        config["params"]["tuned"] = [1, 2] if damage == "tuned_list" else {**tuned, "memory": {**tuned["memory"],
                                                                                                "strength": "abc"}}
        (root / "config.json").write_text(json.dumps(config))
        return root
    for folder in (root / "memory", root / "context"):
        config = json.loads((folder / "config.json").read_text())
        if damage == "params_list":
            (folder / "config.json").write_text(json.dumps({**config, "params": list(config["params"].items())}))
        elif damage == "tensors_garbage":
            tensors = folder / "tensors.safetensors"
            tensors.write_bytes(b"\xff" * 64 + tensors.read_bytes()[64:])
    return root


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


# (case id, builder of the command line from tmp_path, fragment of the one error line)
CASES = [
    ("convert-truncated-weights", lambda t: ["sae", "convert", str(_truncated_weights(t)), str(t / "o")],
     "sae_weights.safetensors: "),
    ("convert-garbage-header", lambda t: ["sae", "convert", str(_garbage_header(t)), str(t / "o")],
     "cannot read"),
    ("features-truncated-weights", lambda t: ["sae", "features", "--sae", str(_truncated_weights(t))],
     "cannot read"),
    ("eval-truncated-weights", lambda t: ["sae", "eval", "--sae", str(_truncated_weights(t))], "cannot read"),
    ("cfg-k-not-an-integer", lambda t: ["sae", "convert", str(_cfg(t, k="abc")), str(t / "o")],
     "'k' must be an integer >= 1, got 'abc'"),
    ("cfg-k-too-large", lambda t: ["sae", "convert", str(_cfg(t, k=99)), str(t / "o")], "k=99 is outside 1..d_sae=32"),
    ("cfg-bool-as-string", lambda t: ["sae", "convert", str(_cfg(t, apply_b_dec_to_input="no")), str(t / "o")],
     "'apply_b_dec_to_input' must be true or false"),
    ("cfg-not-an-object", lambda t: ["sae", "convert", str(_cfg(t, metadata=[1])), str(t / "o")],
     "'metadata' must be a JSON object"),
    ("cfg-rescale-on-jumprelu", lambda t: ["sae", "convert", str(_cfg(t, architecture="jumprelu",
                                                                        rescale_acts_by_decoder_norm=True)),
                                           str(t / "o")], "rescale_acts_by_decoder_norm is only supported"),
    ("npz-object-array", lambda t: ["sae", "convert", str(_object_npz(t)), str(t / "o")],
     "Object arrays cannot be loaded"),
    ("convert-out-under-a-file", lambda t: ["sae", "convert", str(_sae(t / "ok")), str(_file(t) / "x")],
     "a-file is a file"),
    ("eval-out-under-a-file", lambda t: ["eval", "--out", str(_file(t) / "x")], "a-file is a file"),
    ("capture-out-under-a-file", lambda t: ["capture", "--dataset", "default", "--limit", "4",
                                            "--out", str(_file(t) / "x")], "a-file is a file"),
    ("build-default-out-under-a-file", lambda t: ["data", "build-default", "--out", str(_file(t) / "x.jsonl")],
     "a-file is a file"),
    ("capture-layers-reversed", lambda t: ["capture", "--dataset", "default", "--limit", "4", "--layers", "1-0",
                                           "--out", str(t / "acts")], "layer range '1-0' is reversed"),
    ("capture-texts-not-utf8", lambda t: ["capture", "--texts", str(_jsonl(t, b"caf\xe9\n", "t.txt")),
                                          "--out", str(t / "acts")], "not valid UTF-8"),
    ("capture-texts-missing", lambda t: ["capture", "--texts", str(t / "none.txt"), "--out", str(t / "acts")],
     "missing texts file"),
    ("dataset-truncated-gzip", lambda t: ["data", "show", "--dataset",
                                          str(_jsonl(t, gzip.compress(json.dumps(ROW).encode() * 50)[:60],
                                                     "d.jsonl.gz"))], "Compressed file ended"),
    ("dataset-malformed-json", lambda t: ["eval", "--dataset", str(_jsonl(t, b'{"question": \n'))], "malformed JSON"),
    ("probe-missing-dataset", lambda t: ["probe", "--dataset", str(t / "none.jsonl")], "dataset file not found"),
    ("detect-probe-dir-without-probes", lambda t: ["detect", "x", "--probe", str(t)], "holds no fitted probes"),
    # issue 30: configs whose values have the wrong JSON/TOML type are refused, not coerced
    ("config-float-limit", lambda t: ["eval", "--config", str(_text(t, "c.toml", "limit = 3.7\n")), "--dry-run"],
     "'limit' must be an integer, got 3.7"),
    ("config-bool-k-shot", lambda t: ["eval", "--config", str(_text(t, "c.toml", "k_shot = true\n")), "--dry-run"],
     "'k_shot' must be an integer, got true"),
    ("config-int-out", lambda t: ["eval", "--config", str(_text(t, "c.toml", "out = 5\n"))],
     "'out' must be a string, got 5"),
    ("config-int-model", lambda t: ["eval", "--config", str(_text(t, "c.json", '{"model": 5}'))],
     "'model' must be a string, got 5"),
    ("seeds-repeated", lambda t: ["eval", "--seeds", "42,42", "--dry-run"], "--seeds repeats 42"),
    # numeric options out of range: named, refused before any model loads or anything is written
    ("features-top-negative", lambda t: ["sae", "features", "--layer", "6", "--top", "-1"], "'--top'"),
    ("sae-eval-holdout-0", lambda t: ["sae", "eval", "--holdout", "0"], "'--holdout'"),
    ("sae-eval-holdout-1.5", lambda t: ["sae", "eval", "--holdout", "1.5"], "'--holdout'"),
    ("sae-train-batch-size-0", lambda t: ["sae", "train", "--batch-size", "0", "--out", str(t / "w")],
     "'--batch-size'"),
    ("sae-train-width-0", lambda t: ["sae", "train", "--width", "0", "--out", str(t / "w")], "'--width'"),
    ("kv-conflict-limit-0", lambda t: ["kv", "conflict", "--limit", "0"], "'--limit'"),
    ("kv-bench-lengths-0", lambda t: ["kv", "bench", "--lengths", "0", "--tasks", "passkey"], "--lengths 0"),
    ("kv-bench-lengths-negative", lambda t: ["kv", "bench", "--lengths=-5", "--tasks", "passkey"], "--lengths -5"),
    ("serve-port-99999", lambda t: ["serve", "--port", "99999"], "'--port'"),
    ("bench-gate-rate-2", lambda t: ["bench", "steer", "--gate-max-false-positive-rate", "2"],
     "'--gate-max-false-positive-rate'"),
    ("bench-pool-groups-0", lambda t: ["bench", "steer", "--pool-groups", "0"], "'--pool-groups'"),
    ("bench-test-limit-0", lambda t: ["bench", "steer", "--test-limit", "0"], "'--test-limit'"),
    ("steer-strength-nan", lambda t: [*STEER, "--strength", "nan"], "--strength must be a finite number"),
    ("export-strength-inf", lambda t: ["export", "control-vector", str(SHIPPED_SPARE / "memory"), "--strength", "inf",
                                       "--out", str(t / "v.gguf")], "--strength must be a finite number"),
    # damaged saved folders
    ("export-params-list", lambda t: ["export", "control-vector", str(_fitted(t, "params_list") / "memory"),
                                      "--out", str(t / "v.gguf")], "'params' must be a JSON object, got list"),
    ("export-tensors-garbage", lambda t: ["export", "control-vector", str(_fitted(t, "tensors_garbage") / "memory"),
                                          "--out", str(t / "v.gguf")],
     "tensors.safetensors: Error while deserializing"),
    ("steer-tuned-list", lambda t: [*STEER, "--fitted", str(_fitted(t, "tuned_list"))],
     "'tuned' must map memory and/or context to their settings"),
    ("steer-tuned-strength-text", lambda t: [*STEER, "--fitted", str(_fitted(t, "tuned_strength"))],
     "'strength' must be a finite number, got 'abc'"),
    ("detect-probe-empty-detect-json", lambda t: ["detect", "x", "--probe",
                                                  str(_text(t, "p/detect.json", "{}").parent)],
     "must hold the probes' 'demos'"),
    ("detect-probe-detect-json-list", lambda t: ["detect", "x", "--probe",
                                                 str(_text(t, "p/detect.json", "[1]").parent)],
     "must hold a JSON object, got list"),
    ("serve-probe-detect-json-list", lambda t: ["serve", "--port", _free_port(), "--probe",
                                                str(_text(t, "p/detect.json", "[1]").parent)],
     "must hold a JSON object, got list"),
    ("convert-component-list", lambda t: ["sae", "convert", str(_cfg(t, sparekit={"hook_component": ["resid"]})),
                                          str(t / "o")], "unknown hook_component ['resid']"),
    ("features-sae-of-another-width", lambda t: ["sae", "features", "--sae", str(_sae(t / "w16"))],
     "w16 reads width 16 but tiny-llama has d_model"),
    # datasets and texts
    ("dataset-is-a-folder", lambda t: ["data", "show", "--dataset", str(t)], "is a folder, not a file"),
    ("dataset-lone-surrogate", lambda t: ["data", "show", "--dataset", str(_jsonl(
        t, (json.dumps(ROW) + "\n" + json.dumps({**ROW, "question": "q"}).replace('"q"', '"q\\ud800"') + "\n")
        .encode()))], "data.jsonl:2: holds a lone surrogate"),
    ("dataset-id-object", lambda t: ["data", "show", "--dataset", str(_jsonl(t, json.dumps({**ROW, "id": {"a": 1}})
                                                                              .encode()))],
     "field 'id' must be a string or an integer"),
    ("dataset-id-null", lambda t: ["data", "show", "--dataset", str(_jsonl(t, json.dumps({**ROW, "id": None})
                                                                            .encode()))],
     "field 'id' must be a string or an integer, got null"),
    ("capture-text-null", lambda t: ["capture", "--texts", str(_jsonl(t, b'{"text": "a"}\n{"text": null}\n')),
                                     "--out", str(t / "acts")], "data.jsonl:2: expected a JSON object with a 'text'"),
    ("build-default-out-trailing-slash", lambda t: ["data", "build-default", "--out", str(t / "d") + "/"],
     "the trailing '/' names a folder"),
    ("generate-longer-than-the-context", lambda t: ["generate", "word " * 600], "reads at most 2048"),
]


@pytest.mark.parametrize("build,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_with_status_2(build, fragment, tmp_path, tiny_llama, monkeypatch, capsys):
    monkeypatch.setattr(sparekit.models, "load_model", lambda *a, **k: tiny_llama)
    monkeypatch.chdir(tmp_path)
    argv = build(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_a_port_in_use_is_refused_before_the_model_loads(monkeypatch, capsys):
    monkeypatch.setattr(sparekit.models, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        assert main(["serve", "--port", str(held.getsockname()[1])]) == 2
    assert "address already in use" in capsys.readouterr().err.lower()


def test_devices_are_checked_before_anything_loads():
    from sparekit.models import load_model

    with pytest.raises(SparekitError, match=r"unknown device 'tpu' \(use cpu, cuda"):
        load_model("/no/such/model", device="tpu")  # the device is named, not the missing path
    if not torch.cuda.is_available():
        with pytest.raises(SparekitError, match="device 'cuda' is not available"):
            load_model("/no/such/model", device="cuda")


def test_damaged_model_files_are_one_error_naming_them(tmp_path, tiny_llama):
    from sparekit.models import load_model

    folder = tmp_path / "model"
    tiny_llama.model.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    with pytest.raises(SparekitError, match=r"cannot read model .*model.*damaged or incomplete"):
        load_model(str(folder), device="cpu")
    for name, data in (("cut.gguf", b"GGUF\x03\x00\x00\x00" + b"\x05" * 20), ("text.gguf", b"not a gguf at all")):
        with pytest.raises(SparekitError, match=rf"cannot read .*{name}: .*is the file complete"):
            load_model(str(_jsonl(tmp_path, data, name)), device="cpu")


def test_load_refuses_a_config_that_is_not_an_object(tmp_path):
    _text(tmp_path, "saved/config.json", "5")
    with pytest.raises(SparekitError, match="config.json must hold a JSON object, got int"):
        sparekit.load(tmp_path / "saved")


def test_an_unreadable_file_is_reported_as_unreadable(tmp_path, monkeypatch):
    from sparekit.sae import load_sae

    folder = _sae(tmp_path / "sae")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: not str(p).endswith(".safetensors") and real_access(p, mode))
    with pytest.raises(SparekitError, match="sae_weights.safetensors: permission denied"):
        load_sae(folder)


def test_a_prompt_over_the_memory_budget_is_refused_before_the_forward(tiny_llama, monkeypatch):
    from sparekit.evaluation.generation import greedy_generate
    from sparekit.models import limits

    monkeypatch.setattr(limits, "memory_budget", lambda device: 2**20)
    monkeypatch.setattr(type(tiny_llama.model), "forward", lambda *a, **k: pytest.fail("the forward ran"))
    with pytest.raises(SparekitError, match=r"2 prompt\(s\) of 401 tokens needs about .* GiB but cpu has 0.0 GiB"):
        greedy_generate(tiny_llama, ["w" * 400, "v"], max_new_tokens=1)


def test_bom_at_the_start_of_a_jsonl_is_accepted(tmp_path, capsys):
    path = _jsonl(tmp_path, b"\xef\xbb\xbf" + json.dumps(ROW).encode() + b"\n")
    assert main(["data", "show", "--dataset", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 1


def test_empty_and_over_long_prompts_are_refused_before_reading_probes(tiny_llama):
    from sparekit.probes.detect import check_prompt, detect_prompt

    for text in ("", "  \n\t"):
        with pytest.raises(SparekitError, match="the prompt is empty"):
            detect_prompt(tiny_llama, text, probe_dir="/nonexistent")
    long = "word " * 600  # the tiny model's context is 2048 positions
    with pytest.raises(SparekitError, match=r"reads at most 2048"):
        check_prompt(tiny_llama, long, max_tokens=0)
    with pytest.raises(SparekitError, match="over the limit of 100"):
        check_prompt(tiny_llama, "word " * 30, max_tokens=100)
    assert check_prompt(tiny_llama, "word " * 30, max_tokens=0) > 100


@pytest.mark.slow
def test_detect_cli_refuses_an_empty_prompt(capsys):
    assert main(["detect", ""]) == 2
    assert capsys.readouterr().err.strip() == "error: the prompt is empty (pass the text to read, ending in " \
                                               "'answer:' like the probing prompts)"


@pytest.mark.slow
def test_generate_refuses_a_prompt_longer_than_the_default_models_context(capsys):
    assert main(["generate", "word " * 33_000, "-n", "1"]) == 2  # Gemma 3 270M reads 32,768 positions
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.fullmatch(r"error: a prompt has 330\d\d tokens but default reads at most 32768 "
                                          r"\(shorten it\)", err[0]), err


def _small(tmp_path: Path) -> Path:
    rows = [{**ROW, "question": f"q{i}", "org_answer": [f"a{i}"], "sub_answer": [f"b{i}"]} for i in range(4)]
    return _jsonl(tmp_path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def test_eval_recomputes_a_truncated_chunk_and_says_so(tmp_path, tiny_llama, caplog):
    from sparekit.data import load_dataset
    from sparekit.evaluation.harness import evaluate

    data = load_dataset(str(_small(tmp_path)))
    first = evaluate(tiny_llama, data, [0], k_shot=1, out_dir=tmp_path / "run", progress=False)
    chunk = sorted((tmp_path / "run" / "predictions").iterdir())[1]
    chunk.write_bytes(chunk.read_bytes()[:-7])
    with caplog.at_level(logging.WARNING):
        again = evaluate(tiny_llama, data, [0], k_shot=1, out_dir=tmp_path / "run", progress=False)
    assert f"{chunk} is damaged" in caplog.text and "recomputing it" in caplog.text
    assert again["per_seed"] == first["per_seed"]
    assert json.loads(chunk.read_text().splitlines()[-1])["key"]
    lines = chunk.read_text().splitlines(keepends=True)
    chunk.write_text("".join(lines[:-1]))  # cut at a line end: valid JSON lines, one row short
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert evaluate(tiny_llama, data, [0], k_shot=1, out_dir=tmp_path / "run", progress=False)["per_seed"] \
            == first["per_seed"]
    assert "recomputing it" in caplog.text and chunk.read_text().splitlines(keepends=True) == lines
    chunk.write_text(lines[-1])  # another item's row: not damage, another run
    with pytest.raises(SparekitError, match="does not match this run's items"):
        evaluate(tiny_llama, data, [0], k_shot=1, out_dir=tmp_path / "run", progress=False)


def test_a_second_eval_on_a_locked_run_directory_is_told(tmp_path, tiny_llama):
    from sparekit.data import load_dataset
    from sparekit.evaluation.harness import evaluate

    data = load_dataset(str(_small(tmp_path)))
    with run_lock(tmp_path / "run", "eval"):  # what a first process holds while it works
        with pytest.raises(SparekitError, match=rf"run is in use by process {os.getpid()}"):
            evaluate(tiny_llama, data, [0], k_shot=1, out_dir=tmp_path / "run", progress=False)
    evaluate(tiny_llama, data, [0], k_shot=1, out_dir=tmp_path / "run", progress=False)  # released: runs


def test_safetensors_artefacts_get_the_permissions_of_json_ones(tmp_path):
    from sparekit.sae import load_sae, save_sae

    save_sae(load_sae(FIXTURES / "topk"), tmp_path / "out")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert modes["sae_weights.safetensors"] == modes["cfg.json"] == 0o666 & ~_umask()
    assert load_file(str(tmp_path / "out" / "sae_weights.safetensors"))["W_enc"].shape == (16, 32)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_gated_sae_without_its_magnitude_keys_names_them(tmp_path):
    from sparekit.sae import load_sae

    folder = _sae(tmp_path / "gated", "gated")
    weights = load_file(str(folder / "sae_weights.safetensors"))
    del weights["r_mag"]
    save_file(weights, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SparekitError, match="missing key 'r_mag'"):
        load_sae(folder)


def test_nan_weights_are_refused(tmp_path):
    from sparekit.sae import load_sae

    folder = _sae(tmp_path / "nan")
    weights = load_file(str(folder / "sae_weights.safetensors"))
    weights["b_dec"][0] = torch.nan
    save_file(weights, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SparekitError, match="b_dec in .* holds NaN"):
        load_sae(folder)
