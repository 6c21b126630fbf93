"""Data-parallel capture: ``sparekit capture`` in 1 process against ``torchrun`` with 2.

Each variant is the real command line (a fresh process per run, model loading included),
on the same NQ-Swap prompts (last token, one layer, float16 store, ``--shard-rows`` small
enough that every rank gets shards). The fixed cost of a run (start-up, model loading,
rank set-up, manifest merge) is measured by rerunning the command on its finished store,
which captures nothing; capture time = wall time - that overhead. Variants interleave
round by round; medians are reported.

    python benchmarks/bench_capture_dp.py [--texts 128] [--layer 6] [--shard-rows 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_capture import corpus


def command(variant: str, texts: Path, out: Path, args) -> tuple[list[str], dict[str, str]]:
    capture = ["capture", "--texts", str(texts), "--layers", str(args.layer), "--shard-rows", str(args.shard_rows),
               "--batch-size", str(args.batch), "--device", "cpu", "--out", str(out), "--json"]
    if variant == "2 processes x 1 thread":
        return ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                 "-m", "sparekit", *capture], {"OMP_NUM_THREADS": "1"})
    threads = "2" if variant == "1 process x 2 threads" else "1"
    return [sys.executable, "-m", "sparekit", *capture], {"OMP_NUM_THREADS": threads}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env={**os.environ, **env}, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--shard-rows", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    variants = ("1 process x 2 threads", "2 processes x 1 thread", "1 process x 1 thread")
    wall: dict[str, list[float]] = {v: [] for v in variants}
    overhead: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        texts = Path(tmp) / "texts.txt"
        texts.write_text("\n".join(t.replace("\n", " ") for t in corpus(args.texts)))
        for _ in range(args.rounds):
            for variant in variants:
                out = Path(tmp) / "store"
                cmd, env = command(variant, texts, out, args)
                wall[variant].append(timed(cmd, env))
                overhead[variant].append(timed(cmd, env))  # finished store: start-up + loading only
                shutil.rmtree(out)
    print(f"{args.texts} texts, layer {args.layer}, shard rows {args.shard_rows}, batch {args.batch}, "
          f"{args.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    capture = {}
    for variant in variants:
        w, o = statistics.median(wall[variant]), statistics.median(overhead[variant])
        capture[variant] = w - o
        print(f"  {variant:24s} wall {w:6.1f} s  overhead {o:5.1f} s  capture {w - o:6.1f} s "
              f"({args.texts / (w - o):.1f} texts/s)")
    base = "1 process x 2 threads"
    print(f"speed-up, 2 processes vs 1 process x 2 threads: capture {capture[base] / capture[variants[1]]:.2f}x, "
          f"wall {statistics.median(wall[base]) / statistics.median(wall[variants[1]]):.2f}x")


if __name__ == "__main__":
    main()
