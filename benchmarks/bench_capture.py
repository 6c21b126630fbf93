"""Activation capture on the default model: throughput and bounded memory.

1. Throughput: ``capture_activations`` (last token, layer L, writing shards) against a
   bare forward through blocks 0..L (the model with its upper blocks removed, no hooks)
   on the same length-sorted batches; interleaved rounds, medians.
2. Memory: the resident set sampled every 10 ms *during* a capture of N texts and of
   10·N texts (every token, nine sites, float32), each in a fresh subprocess. The peak
   is taken over the capture only (``ru_maxrss`` would report the model-loading peak),
   split into the anonymous heap and file-backed pages of the memory-mapped weights.

    python benchmarks/bench_capture.py [--texts 64] [--rounds 3] [--rss-texts 40] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from sparekit.activations import capture_activations
from sparekit.data import load_dataset
from sparekit.hooks import Site
from sparekit.models import load_model

def corpus(n: int) -> list[str]:
    """The first ``n`` NQ-Swap rows (shipped in the package) as context + question prompts."""
    return [f"context: {ex.org_context}\nquestion: {ex.question}\nanswer:" for ex in load_dataset("nqswap")[:n]]


def throughput(args) -> None:
    lm = load_model("default", device=args.device)
    texts = corpus(args.texts)
    layer = args.layer
    enc = lm.tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
    batches = []
    for start in range(0, len(order), args.batch):
        padded = lm.tokenizer.pad({"input_ids": [enc[i] for i in order[start:start + args.batch]]}, return_tensors="pt")
        padded["position_ids"] = (padded["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        batches.append(padded.to(args.device))
    n_tokens = sum(len(x) for x in enc)
    base = lm.model.model
    all_layers = base.layers

    def bare():
        base.layers = all_layers[: layer + 1]
        try:
            for b in batches:
                base(**b, use_cache=False)
        finally:
            base.layers = all_layers

    def capture():
        with tempfile.TemporaryDirectory() as tmp:
            capture_activations(lm, texts, [Site(layer)], tmp, batch_size=args.batch, max_length=args.max_length,
                                progress=False)

    times = {"bare": [], "capture": []}
    with torch.inference_mode():
        bare()
    for _ in range(args.rounds):
        for name, fn in (("bare", bare), ("capture", capture)):
            start = time.perf_counter()
            with torch.inference_mode():
                fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()  # kernels run asynchronously
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{len(texts)} texts, {n_tokens} tokens, layer {layer}, batch {args.batch}, {args.rounds} rounds, "
          f"{args.device}")
    for name, t in med.items():
        print(f"  {name:8s} median {t:.2f} s  ({n_tokens / t:.0f} tok/s)")
    print(f"capture / bare-forward-to-layer throughput: {med['bare'] / med['capture']:.3f}  (goal >= 0.95)")


def current_rss_mb(kind: str = "VmRSS") -> float:
    """Resident memory now (Linux ``/proc``), in MiB: ``VmRSS`` (all), ``RssAnon`` or ``RssFile``.

    ``RssFile`` counts pages of memory-mapped files: the safetensors weights are mapped,
    so looking up new token embeddings (a 262k x 640 table) faults in file pages that
    belong to the model, not to the capture. ``RssAnon`` is the process's own heap.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(kind + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {kind} in /proc/self/status")


class RssSampler(threading.Thread):
    """Samples resident memory every ``interval`` seconds until stopped; keeps the peaks."""

    KINDS = ("VmRSS", "RssAnon", "RssFile")

    def __init__(self, interval: float = 0.01):
        super().__init__(daemon=True)
        self.interval, self.samples = interval, 0
        self.peak = dict.fromkeys(self.KINDS, 0.0)
        self._stop_event = threading.Event()

    def _sample(self) -> None:
        for kind in self.KINDS:
            self.peak[kind] = max(self.peak[kind], current_rss_mb(kind))

    def run(self) -> None:
        while not self._stop_event.is_set():
            self._sample()
            self.samples += 1
            time.sleep(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop_event.set()
        self.join()
        self._sample()
        return self.peak


def rss_child(n: int, out: str) -> None:
    lm = load_model("default", device="cpu")
    texts = corpus(n)
    after_load = {kind: current_rss_mb(kind) for kind in RssSampler.KINDS}
    sampler = RssSampler()
    sampler.start()
    store = capture_activations(lm, texts, [Site(layer) for layer in range(9)], out, positions="all",
                                dtype=torch.float32, max_length=128, shard_rows=512, progress=False)
    peak = sampler.stop()
    stored = sum((Path(out) / s["file"]).stat().st_size for s in store.manifest["shards"])
    print(json.dumps({"texts": n, "rows": len(store), "samples": sampler.samples, "stored_mb": round(stored / 2**20, 1),
                      **{f"after_load_{k}_mb": round(v, 1) for k, v in after_load.items()},
                      **{f"peak_{k}_mb": round(v, 1) for k, v in peak.items()}}))


def memory(args) -> None:
    results = []
    for n in (args.rss_texts, 10 * args.rss_texts):
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([sys.executable, __file__, "--rss-child", str(n), "--out", tmp],
                                  check=True, capture_output=True, text=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  {results[-1]}")
    small, large = results
    print(f"{large['texts']} vs {small['texts']} texts, storing {large['stored_mb']:.0f} vs {small['stored_mb']:.0f} MB:")
    for kind, what in (("VmRSS", "peak RSS during capture"), ("RssAnon", "peak anonymous RSS (the process heap)"),
                       ("RssFile", "peak file-backed RSS (mapped weights)")):
        a, b = large[f"peak_{kind}_mb"], small[f"peak_{kind}_mb"]
        print(f"  {what}: {a:.0f} / {b:.0f} MB = {a / b:.3f}" + ("  (goal < 1.10)" if kind != "RssFile" else ""))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rss-texts", type=int, default=40)
    parser.add_argument("--rss-child", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--skip", choices=["throughput", "memory"], default=None)
    parser.add_argument("--device", default="cpu", help="where the throughput part runs (memory: CPU)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.rss_child is not None:
        rss_child(args.rss_child, args.out)
        return
    if args.skip != "throughput":
        throughput(args)
    if args.skip != "memory":
        memory(args)


if __name__ == "__main__":
    main()
