"""``device_map``: a model whose blocks accelerate spreads over the CPU and disk captures and
steers exactly like the same model on one device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparekit.activations import ActivationStore, capture_activations
from sparekit.cli.main import main
from sparekit.errors import SparekitError
from sparekit.hooks import Hooks, Site
from sparekit.models import load_model
from sparekit.models.tiny import tiny_model
from sparekit.steering import BehaviourData, DIRECTIONS, make_method

TEXTS = ["The capital of France is", "hello there", "x", "a somewhat longer text to capture here"]
# blocks 1 and 3 offloaded: their weights stay on disk (parameters on `meta`) until accelerate's hook loads them
SPLIT = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu",
         "model.layers.3": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    lm = tiny_model("llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(folder, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPAREKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        split = load_model(str(folder), device_map=SPLIT)
    single = load_model(str(folder), device="cpu")
    assert split.model.get_submodule("model.layers.1.mlp.down_proj").weight.device.type == "meta"
    assert split.info.model_hash == single.info.model_hash
    return single, split


def test_capture_with_early_stop_equals_single_device(models, tmp_path):
    single, split = models
    sites = [Site(1), Site(2, "mlp"), Site(3, "attn")]
    stores = [capture_activations(lm, TEXTS, sites, tmp_path / name, positions="all", dtype="float32",
                                  batch_size=3, progress=False) for name, lm in (("single", single), ("split", split))]
    for key in [*map(str, sites), "prompt_index", "token_id", "position"]:
        assert torch.equal(stores[0].load(key), stores[1].load(key)), key
    hooks = Hooks(split).capture(Site(1)).stop_after(Site(1))  # stops inside an offloaded block
    from sparekit.evaluation.generation import tokenize

    with torch.inference_mode(), hooks:
        assert split.model(**tokenize(split, TEXTS, position_ids=True), use_cache=False) is None
    assert hooks[Site(1)].shape == (len(TEXTS), single.info.d_model)


def test_edits_on_offloaded_blocks_equal_single_device(models):
    single, split = models
    gen = torch.Generator().manual_seed(0)
    labels = (np.arange(8) % 2).astype(np.int64)
    hidden = {layer: torch.randn(8, 64, generator=gen) * 4 for layer in (1, 2)}
    behaviour = BehaviourData([], labels, hidden)
    prompts = [f"Q{i}: who?" for i in range(3)]
    from sparekit.evaluation.generation import greedy_generate

    plain = greedy_generate(single, prompts, max_new_tokens=4)
    for kind, params in (("cvec", {"layers": (1, 2)}), ("knob", {"layer": 1})):
        method = make_method(kind, **params).fit(behaviour)
        for toward in DIRECTIONS:
            answers = []
            for lm in (single, split):
                with method.steer(lm, toward, strength=4.0):  # hook-based: steers a plain generate too
                    answers.append(greedy_generate(lm, prompts, max_new_tokens=4))
            assert answers[0] == answers[1]
        assert answers[0] != plain


def test_cli_device_map_auto_capture(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SPAREKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    common = ["capture", "--texts", str(tmp_path / "t.txt"), "-m", str(folder), "--layers", "1,3", "--json"]
    assert main([*common, "--device-map", "auto", "--out", str(tmp_path / "auto")]) == 0
    assert main([*common, "--device", "cpu", "--out", str(tmp_path / "cpu")]) == 0
    auto, cpu = ActivationStore(tmp_path / "auto"), ActivationStore(tmp_path / "cpu")
    assert torch.equal(auto.load("resid.3"), cpu.load("resid.3"))


def test_device_map_refuses_gguf_and_unknown_maps(folder, tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(SparekitError, match="device-map needs a safetensors model"):
        load_model(str(tmp_path / "m.gguf"), device_map="auto")
    with pytest.raises(SparekitError, match="unknown device map"):
        load_model(str(folder), device_map="everywhere")
