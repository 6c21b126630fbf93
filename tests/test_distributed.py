"""Data-parallel runs under torchrun (gloo on CPU): a capture store equals a one-process capture,
a rerun after one rank crashed resumes without recomputing or duplicating shards, and an
eval's and a steering benchmark's cells and results equal a one-process run's."""

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
#: on CPU, like the one-process reference, also where a GPU exists: equality is bit for bit
ARGS = ["--layers", "1,3", "--positions", "all", "--shard-rows", "30", "--dtype", "float32", "--device", "cpu",
        "--json"]


def _torchrun(script: list[str], out: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(sparekit.__file__).parents[1]),
           **(extra_env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *script,
               "--out", str(out)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    lm = tiny_model("llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def test_two_rank_capture_equals_one_process_and_resumes_after_a_crash(folder, tmp_path):
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


def test_accelerate_launch_capture_equals_one_process(folder, tmp_path):
    """``accelerate launch --multi_gpu`` starts torchrun's launcher, also on a CPU-only machine (its
    ``--cpu`` flag starts one process unless MPI is set up), so the same code path shards the store."""
    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    reference = capture_activations(load_model(str(folder), device="cpu"), TEXTS, [Site(1), Site(3)],
                                    tmp_path / "one", positions="all", shard_rows=30, dtype="float32", progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(sparekit.__file__).parents[1])}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    # each rank writes its own file: printing from both ranks interleaves on the shared pipe under load
    (tmp_path / "ranks.py").write_text("import os, pathlib\npathlib.Path(os.environ['RANKS_DIR'], os.environ['RANK'])"
                                       ".write_text(os.environ['WORLD_SIZE'])\n")
    (tmp_path / "ranks").mkdir()
    ranks = subprocess.run([*launch, str(tmp_path / "ranks.py")], env={**env, "RANKS_DIR": str(tmp_path / "ranks")},
                           capture_output=True, text=True, timeout=120)
    assert {f.name: f.read_text() for f in (tmp_path / "ranks").iterdir()} == {"0": "2", "1": "2"}, ranks.stderr[-2000:]
    run = subprocess.run([*launch, "-m", "sparekit", "capture", "--texts", str(tmp_path / "t.txt"), "-m", str(folder),
                          *ARGS, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    store = ActivationStore(tmp_path / "two")
    assert store.manifest["shards"] == reference.manifest["shards"]
    assert {s["file"] for path in (tmp_path / "two").glob("progress.rank*.json")
            for s in json.loads(path.read_text())["shards"]} == set()  # merged and cleaned up
    for key in ("resid.1", "resid.3", "token_id"):
        assert torch.equal(store.load(key), reference.load(key)), key


def _small_dataset(path: Path, n: int = 6) -> Path:
    rows = [{"question": f"q{i}", "org_context": f"fact {i}", "org_answer": [f"a{i}"], "sub_context": f"other {i}",
             "sub_answer": [f"b{i}"]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_two_rank_eval_equals_one_process(folder, tmp_path):
    from sparekit.data import load_dataset
    from sparekit.evaluation.harness import evaluate

    data = _small_dataset(tmp_path / "small.jsonl")
    reference = evaluate(load_model(str(folder), device="cpu"), load_dataset(str(data)), [1, 2], k_shot=2,
                         out_dir=tmp_path / "one", progress=False)
    run = _torchrun(["-m", "sparekit", "eval", "--dataset", str(data), "-m", str(folder), "--seeds", "1,2",
                     "--k-shot", "2", "--json"], tmp_path / "two")
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert result["per_seed"] == reference["per_seed"]
    for seed in (1, 2):
        name = f"items-seed{seed}.jsonl"
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
    one, two = tmp_path / "one" / "predictions", tmp_path / "two" / "predictions"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert all((two / p.name).read_text() == p.read_text() for p in one.iterdir())


BENCH = ["--methods", "none,icl,cad,dola", "--seeds", "1,2", "--layers", "1,2", "--pool-groups", "6",
         "--dev-groups", "3", "--test-limit", "4", "--behaviour-seeds", "0", "--batch-size", "2"]


def test_two_rank_steering_benchmark_equals_one_process(folder, tmp_path):
    """Methods that need no labelled behaviour (a random model labels none) split across two ranks."""
    from sparekit.cli.main import main
    from sparekit.data import load_dataset
    from sparekit.utils.io import atomic_write_json

    data = _small_dataset(tmp_path / "small.jsonl", n=14)
    ids = {"ids": [ex.id for ex in load_dataset(str(data))]}  # a random model memorises nothing: say it did
    cli = ["bench", "steer", "--dataset", str(data), "-m", str(folder), *BENCH, "--json"]
    for run in ("one", "two"):
        atomic_write_json(tmp_path / run / "memorised.json", ids)
    assert main([*cli, "--out", str(tmp_path / "one")]) == 0
    run = _torchrun(["-m", "sparekit", *cli], tmp_path / "two")
    assert run.returncode == 0, run.stderr[-2000:]
    one, two = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("one", "two"))
    assert json.loads(run.stdout)["methods"] == two["methods"] == one["methods"]  # rank 0 alone prints
    cells = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one" / "generations").rglob("*.jsonl"))
    assert cells and cells == sorted(p.relative_to(tmp_path / "two")
                                     for p in (tmp_path / "two" / "generations").rglob("*.jsonl"))
    assert all((tmp_path / "two" / c).read_text() == (tmp_path / "one" / c).read_text() for c in cells)


def test_more_ranks_than_methods_is_refused(tiny_llama, tmp_path, monkeypatch):
    from sparekit.data import load_dataset
    from sparekit.steering.bench import BenchConfig, SteeringBenchmark, runner

    monkeypatch.setattr(runner, "rank_and_world", lambda: (0, 3))
    config = BenchConfig(methods=("none", "cad", "cad+gate"), seeds=(1,))
    bench = SteeringBenchmark(tiny_llama, load_dataset(str(_small_dataset(tmp_path / "s.jsonl"))), config,
                              tmp_path / "run", progress=False)
    with pytest.raises(SparekitError, match="3 ranks for 2 methods"):
        bench.run()


def test_more_ranks_than_cells_is_refused(tiny_llama, tmp_path, monkeypatch):
    from sparekit.data import load_dataset
    from sparekit.evaluation import harness

    monkeypatch.setattr(harness, "rank_and_world", lambda: (0, 7))
    with pytest.raises(SparekitError, match="7 ranks for 6 generation cells"):
        harness.evaluate(tiny_llama, load_dataset(str(_small_dataset(tmp_path / "s.jsonl"))), [1, 2], k_shot=2,
                         out_dir=tmp_path / "run", progress=False)


def test_more_ranks_than_texts_is_refused(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "rank_and_world", lambda: (0, 4))
    with pytest.raises(SparekitError, match="4 ranks for 3 texts"):
        capture_activations(tiny_llama, TEXTS[:3], [Site(1)], tmp_path, progress=False)


@pytest.mark.parametrize(("gpus", "backend", "rank1_device"), [(2, "nccl", "cuda:1"), (1, "gloo", "cuda:0")])
def test_ranks_outnumbering_gpus_share_them_over_gloo(monkeypatch, gpus, backend, rank1_device):
    """Two ranks on a one-GPU machine: NCCL refuses two ranks on one device, so they meet over gloo."""
    from sparekit.utils import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(distributed, "rank_and_world", lambda: (1, 2))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    started = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **kw: started.append(backend))
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: None)
    assert distributed.local_device(None) == rank1_device
    assert distributed.local_device("cpu") == "cpu"
    with distributed.distributed_from_env():
        pass
    assert started == [backend]
