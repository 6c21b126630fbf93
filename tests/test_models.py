"""Model loading from every kind of source, and clear errors for bad ones."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, OPTConfig

from sparekit.cli.main import main
from sparekit.errors import SparekitError
from sparekit.models import load_model
from sparekit.models.tiny import VOCAB_SIZE, char_tokenizer, tiny_model


def test_local_folder_round_trip(tmp_path):
    lm = tiny_model("qwen2")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.info.model_type == "qwen2" and loaded.info.n_layers == 4 and loaded.info.d_model == 64
    assert loaded.tokenizer.padding_side == "left"
    ids = lm.tokenizer(["abc"], return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, lm.model(ids).logits)
    assert loaded.info.model_hash == load_model(str(tmp_path), device="cpu").info.model_hash


def test_module_paths_follow_the_layout():
    info = tiny_model("gpt2").info
    assert info.module_path(2, "resid") == "transformer.h.2"
    assert info.module_path(2, "attn") == "transformer.h.2.attn"
    info = tiny_model("gemma3_text").info
    assert info.module_path(0, "mlp") == "model.layers.0.mlp"


@pytest.mark.parametrize(
    "name, message",
    [
        ("no-such-model", "unknown model"),
        ("./missing/folder", "missing model path"),
        ("/tmp/definitely/missing.gguf", "missing GGUF file"),
    ],
)
def test_bad_model_names(name, message):
    with pytest.raises(SparekitError, match=message):
        load_model(name)


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(SparekitError, match="cannot read GGUF"):
        load_model(str(bad))


def test_unsupported_architecture(tmp_path):
    config = OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                       word_embed_proj_dim=32, vocab_size=VOCAB_SIZE)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    char_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(SparekitError, match="unsupported architecture 'opt'"):
        load_model(str(tmp_path))


def test_bad_dtype():
    with pytest.raises(SparekitError, match="unknown dtype"):
        load_model("default", dtype="float8")


@pytest.mark.parametrize("argv", [["generate", "hi", "--model", "no-such-model"],
                                  ["generate", "hi", "--model", "./nope"]])
def test_cli_errors_are_one_line_without_traceback(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_default_model_loads_and_knows_a_fact(default_lm):
    from sparekit.evaluation.generation import greedy_generate

    assert default_lm.info.model_type == "gemma3_text" and default_lm.info.n_layers == 18
    assert default_lm.info.d_model == 640 and len(default_lm.info.model_hash) == 64
    prompt = "context: The capital of France is Lyon.\nquestion: what is the capital of France\nanswer:"
    assert greedy_generate(default_lm, [prompt]) == ["Lyon"]


def test_gguf_conversion_is_built_once_when_processes_start_together(tmp_path, monkeypatch):
    """Two benchmark streams (or torchrun ranks) loading the default model on a fresh cache: one builds the
    safetensors folder, the other waits and reads it; before, both wrote one temporary folder and could leave
    a folder with the marker but no config.json, which no later run could load."""
    import threading
    import time

    from sparekit.models import loading

    monkeypatch.setenv("SPAREKIT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"not read: the conversion is replaced below")
    builds = []

    def slow_tiny_conversion(path):
        builds.append(path)
        time.sleep(0.5)  # long enough for the other thread to arrive while this one builds
        lm = tiny_model("gemma3_text")
        return lm.model, lm.tokenizer

    monkeypatch.setattr(loading, "_load_gguf", slow_tiny_conversion)
    folders, errors = [], []

    def convert():
        try:
            folders.append(loading._cached_from_gguf(gguf, "tiny")[0])
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=convert) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(builds) == 1 and len(set(folders)) == 1
    folder = folders[0]
    assert (folder / "config.json").is_file() and load_model(str(folder), device="cpu").info.n_layers == 4
    assert [p.name for p in folder.parent.iterdir() if p.name.endswith(".tmp")] == []

    (folder / "config.json").unlink()  # what the old in-place race left behind: the marker without a model
    assert loading._cached_from_gguf(gguf, "tiny")[0] == folder and len(builds) == 2
    assert (folder / "config.json").is_file()
