"""SAE training throughput (tokens/s): sparekit's TopK trainer vs EleutherAI sparsify, same activations, same run.

    python benchmarks/bench_sae_train.py --store runs/sae/default/acts --layer 6 --width 4096 --k 32 --steps 20

Both train a TopK SAE on identical standardised float32 batches with Adam, unit-norm
decoder and AuxK; timing covers forward, backward and the optimiser step only.
sparsify (``pip install --no-deps eai-sparsify`` + simple_parsing, einops, natsort) is
imported without its trainer module, which would pull the ``datasets`` package.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import types

import torch

from sparekit.activations import ActivationStore
from sparekit.sae.train import TensorSource, TopKTrainer


def load_sparsify():
    spec = importlib.util.find_spec("sparsify")
    if spec is None:
        return None
    package = types.ModuleType("sparsify")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["sparsify"] = package
    try:
        from sparsify.config import SparseCoderConfig
        from sparsify.sparse_coder import SparseCoder
    except ImportError as exc:
        print(f"sparsify present but not importable: {exc}")
        return None
    return SparseCoder, SparseCoderConfig


def time_sparekit(x: torch.Tensor, width: int, k: int, batch: int, steps: int) -> float:
    trainer = TopKTrainer(d_sae=width, k=k, epochs=1, progress=False, stats_tokens=batch)
    trainer.fit(TensorSource(x[:batch * 2], batch))  # warm-up and initialisation
    sae = trainer.sae_.train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=5e-4, fused=True)
    last_fired = torch.zeros(width, dtype=torch.long)
    start = time.perf_counter()
    for i, xb in enumerate(x[:batch * steps].split(batch)):
        trainer._step(sae, optimizer, xb, i * batch, last_fired)
    return batch * steps / (time.perf_counter() - start)


def time_sparsify(classes, x: torch.Tensor, width: int, k: int, batch: int, steps: int) -> float:
    SparseCoder, SparseCoderConfig = classes
    sae = SparseCoder(x.shape[1], SparseCoderConfig(num_latents=width, k=k))
    optimizer = torch.optim.Adam(sae.parameters(), lr=5e-4, fused=True)
    standardised = (x - x.mean(0)) / x.std(0)
    dead = torch.zeros(width, dtype=torch.bool)

    def step(xb):
        out = sae(xb, dead_mask=dead)
        loss = out.fvu + out.auxk_loss / 32
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        sae.set_decoder_norm_to_unit_norm()

    step(standardised[:batch])
    start = time.perf_counter()
    for xb in standardised[:batch * steps].split(batch):
        step(xb)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = ActivationStore(args.store)
    rows = []
    for xb in store.iter_batches(f"resid.{args.layer}", args.batch * args.steps, shuffle=True, seed=0):
        rows = xb[torch.isfinite(xb).all(1)]
        break
    print(f"{rows.shape[0]} tokens of resid.{args.layer}, width {args.width}, k {args.k}, batch {args.batch}, "
          f"{args.threads} threads, torch {torch.__version__}")
    ours = time_sparekit(rows, args.width, args.k, args.batch, args.steps)
    print(f"sparekit TopKTrainer: {ours:8.0f} tokens/s")
    classes = load_sparsify()
    if classes is None:
        print("sparsify: not installed, skipped")
        return
    theirs = time_sparsify(classes, rows, args.width, args.k, args.batch, args.steps)
    print(f"sparsify SparseCoder: {theirs:8.0f} tokens/s")
    print(f"ratio sparekit / sparsify: {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
