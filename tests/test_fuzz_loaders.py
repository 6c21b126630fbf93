"""Property: a truncated or byte-flipped copy of a valid file either loads or raises one
:class:`SparekitError`, never another exception (JSONL datasets and every SAE format).

Hypothesis runs derandomised, so CI sees the same cases each time.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from sparekit.data import read_jsonl
from sparekit.errors import SparekitError
from sparekit.sae import load_sae

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "saelens"
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def damaged(draw, data: bytes) -> bytes:
    """``data`` cut at a random point, or with 1-4 bytes replaced by random ones."""
    if draw(st.booleans()):
        return data[:draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    return bytes(out)


def _loads_or_sparekit_error(load) -> None:
    try:
        load()
    except SparekitError as exc:
        assert "\n" not in str(exc)  # the CLI prints it as one line


ROWS = "".join(json.dumps({"id": f"r{i}", "question": f"q{i} ¿é?", "org_context": f"ctx {i} — ✓",
                           "org_answer": [f"a{i}"], "sub_context": f"sub {i}", "sub_answer": [f"b{i}", "c"],
                           "relation": "capital"}, ensure_ascii=i % 2 == 0) + "\n" for i in range(6)).encode()


@FUZZ
@given(data=st.data(), compressed=st.booleans())
def test_jsonl_loader_never_raises_anything_else(tmp_path, data, compressed):
    raw = gzip.compress(ROWS, mtime=0) if compressed else ROWS
    path = tmp_path / ("d.jsonl.gz" if compressed else "d.jsonl")
    path.write_bytes(data.draw(damaged(raw)))
    _loads_or_sparekit_error(lambda: read_jsonl(path))


def _gemmascope(root: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "layer_3" / "width_1k"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", W_enc=rng.normal(size=(8, 12)).astype(np.float32),
             W_dec=rng.normal(size=(12, 8)).astype(np.float32), b_enc=np.zeros(12, np.float32),
             b_dec=np.zeros(8, np.float32), threshold=np.full(12, 0.1, np.float32))
    return folder / "params.npz"


def _sparsify(root: Path) -> Path:
    folder = root / "layers.3"
    folder.mkdir(parents=True)
    save_file({"encoder.weight": torch.randn(12, 8), "encoder.bias": torch.zeros(12), "W_dec": torch.randn(12, 8),
               "b_dec": torch.zeros(8)}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"activation": "topk", "k": 3, "d_in": 8}))
    return folder / "sae.safetensors"


def _saelens(case: str, name: str):
    def make(root: Path) -> Path:
        shutil.copytree(FIXTURES / case, root / case)
        return root / case / name
    return make


TARGETS = {"saelens-topk-weights": _saelens("topk-rescale", "sae_weights.safetensors"),
           "saelens-topk-cfg": _saelens("topk-rescale", "cfg.json"),
           "saelens-gated-weights": _saelens("gated", "sae_weights.safetensors"),
           "saelens-jumprelu-cfg": _saelens("jumprelu", "cfg.json"),
           "gemmascope-npz": _gemmascope, "sparsify-weights": _sparsify}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_sae_loaders_never_raise_anything_else(tmp_path_factory, target):
    root = tmp_path_factory.mktemp(target)
    victim = TARGETS[target](root)
    original = victim.read_bytes()
    sae_path = victim if victim.suffix == ".npz" else victim.parent

    @FUZZ
    @given(data=st.data())
    def check(data):
        victim.write_bytes(data.draw(damaged(original)))
        _loads_or_sparekit_error(lambda: load_sae(sae_path))

    check()
