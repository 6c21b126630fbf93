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
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

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


def test_bom_at_the_start_of_a_jsonl_is_accepted(tmp_path, capsys):
    path = _jsonl(tmp_path, b"\xef\xbb\xbf" + json.dumps(ROW).encode() + b"\n")
    assert main(["data", "show", "--dataset", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 1


def test_empty_and_over_long_prompts_are_refused_before_reading_probes(tiny_llama):
    from sparekit.probes.detect import check_prompt, detect_prompt

    for text in ("", "  \n\t"):
        with pytest.raises(SparekitError, match="the prompt is empty"):
            detect_prompt(tiny_llama, text, probe_dir="/nonexistent")
    long = "word " * 600  # the tiny model's context is 512 positions
    with pytest.raises(SparekitError, match=r"reads at most 512"):
        check_prompt(tiny_llama, long, max_tokens=0)
    with pytest.raises(SparekitError, match="over the limit of 100"):
        check_prompt(tiny_llama, "word " * 30, max_tokens=100)
    assert check_prompt(tiny_llama, "word " * 30, max_tokens=0) > 100


@pytest.mark.slow
def test_detect_cli_refuses_an_empty_prompt(capsys):
    assert main(["detect", ""]) == 2
    assert capsys.readouterr().err.strip() == "error: the prompt is empty (pass the text to read, ending in " \
                                               "'answer:' like the probing prompts)"


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
