"""Data-parallel capture under torchrun (gloo on CPU): the store equals a one-process capture,
and a rerun after one rank crashed resumes without recomputing or duplicating shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparekit
from sparekit.activations import ActivationStore, capture_activations
from sparekit.activations import store as store_module
from sparekit.errors import SparekitError
from sparekit.hooks import Site
from sparekit.models import load_model
from sparekit.models.tiny import tiny_model

TEXTS = [f"text number {i} " + "ab" * i for i in range(12)]
ARGS = ["--layers", "1,3", "--positions", "all", "--shard-rows", "30", "--dtype", "float32", "--json"]


def _torchrun(script: list[str], out: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(sparekit.__file__).parents[1]),
           **(extra_env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *script,
               "--out", str(out)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_two_rank_capture_equals_one_process_and_resumes_after_a_crash(tmp_path):
    folder = tmp_path / "tiny"
    lm = tiny_model("llama")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    reference = capture_activations(load_model(str(folder), device="cpu"), TEXTS, [Site(1), Site(3)],
                                    tmp_path / "one", positions="all", shard_rows=30, dtype="float32", progress=False)
    assert len(reference.manifest["shards"]) >= 4
    cli = ["--texts", str(tmp_path / "t.txt"), "-m", str(folder), *ARGS]
    out = tmp_path / "two"

    crashed = _torchrun([str(Path(__file__).with_name("distributed_capture.py")), "capture", *cli], out,
                        {"CRASH_RANK": "1"})
    assert crashed.returncode != 0
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    recorded = {s["file"] for path in out.glob("progress.rank*.json") for s in json.loads(path.read_text())["shards"]}
    assert "shard-00001.safetensors" in recorded  # rank 1 finished its first shard before dying
    stamps = {name: (out / name).stat().st_mtime_ns for name in recorded}

    resumed = _torchrun(["-m", "sparekit", "capture", *cli], out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["rows"] == len(reference)  # rank 0 alone prints the summary
    store = ActivationStore(out)
    assert store.manifest["complete"] and not list(out.glob("progress.rank*.json"))
    assert store.manifest["shards"] == reference.manifest["shards"]  # each shard once, in order
    assert {name: (out / name).stat().st_mtime_ns for name in recorded} == stamps  # not recomputed
    for key in ("resid.1", "resid.3", "prompt_index", "token_id", "position"):
        assert torch.equal(store.load(key), reference.load(key)), key


def test_more_ranks_than_texts_is_refused(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "rank_and_world", lambda: (0, 4))
    with pytest.raises(SparekitError, match="4 ranks for 3 texts"):
        capture_activations(tiny_llama, TEXTS[:3], [Site(1)], tmp_path, progress=False)
