"""sparekit's L2 KV compression against NVIDIA kvpress's ``KnormPress``: kept positions and answers.

Same model folder, same token ids (passkey prompts of ``sparekit.kv.bench``; the context is
compressed, then the question is read through the compressed cache), same ratio. kvpress
runs in its own environment (it pins transformers < 5.3), through ``kvpress_worker.py``::

    bash scripts/kvpress_env.sh                      # once: .venv-kvpress
    python benchmarks/bench_kvpress.py [--models default,smollm2-135m] [--length 1024] [--items 3]
        [--ratios 0.25,0.5,0.9] [--steps 8] [--out runs/kvpress.json]

sparekit runs twice: with kvpress's settings where options allow (``keep_last=0``, no
skipped layers, ``min_length=0``: "matched") and with its defaults. Every (layer, KV head)
is put in one class: ``equal``; or a difference each side's own rule explains, checked
against the float32 key norms: ``sliding`` and ``whole`` (sparekit leaves sliding-window
layers, ``skip_layers`` and short prompts whole), ``count`` (kvpress keeps
``int(n * (1 - ratio))``, sparekit ``n - floor(ratio * n)``), ``keep_last`` (sparekit
always keeps the last ``keep_last`` positions), ``tie`` (norms equal to 1e-6 at the
boundary); anything else is ``other``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from kvpress_worker import kept_positions  # this folder's worker: it needs nothing but torch

from sparekit.errors import SparekitError
from sparekit.evaluation.generation import tokenize
from sparekit.hooks import cache_keyword
from sparekit.kv import Press, keep_counts, make_press
from sparekit.kv.bench import PASSKEY_QUESTION, Prefill, decode, passkey_items, prefill
from sparekit.models import load_model
from sparekit.models.loading import resolve_source
from sparekit.utils.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
MATCHED = {"skip_layers": (), "min_length": 0, "keep_last": 0}
TIE = 1e-6


def lowest(norms: torch.Tensor, count: int, among: set[int] | None = None) -> set[int]:
    """The ``count`` positions of lowest norm (``among`` a subset, if given); the order is stable."""
    order = [p for p in norms.argsort(stable=True).tolist() if among is None or p in among]
    return set(order[:count])


def follows_rule(kept: set[int], norms: torch.Tensor, forced: set[int]) -> str:
    """``exact``: ``kept`` is ``forced`` plus the lowest norms; ``tie``: only up to norms equal to 1e-6; else ``no``."""
    rest = set(range(len(norms))) - forced
    expected = forced | lowest(norms, len(kept) - len(forced), rest)
    if kept == expected:
        return "exact"
    swapped = torch.tensor(sorted(kept ^ expected))
    spread = norms[swapped].max() - norms[swapped].min()
    return "tie" if bool(spread <= TIE * norms[swapped].max()) else "no"


def classify(sparekit: list[int] | None, kvpress: list[int], norms: torch.Tensor, ratio: float,
             keep_last: int) -> str:
    """One (layer, head): why sparekit's kept positions differ from kvpress's, or ``equal``.

    ``sparekit`` None: a sliding-window layer sparekit leaves whole; ``norms`` ``[n]`` in float32.
    """
    n = len(norms)
    if sparekit is None:
        return "sliding"
    ours, theirs = set(sparekit), set(kvpress)
    if ours == theirs:
        return "equal"
    if len(ours) == n:
        return "whole"
    forced = set(range(n - keep_last, n)) if keep_last else set()
    rules = {follows_rule(ours, norms, forced), follows_rule(theirs, norms, set())}
    if "no" in rules:
        return "other"
    sparekit_count = int(keep_counts(torch.tensor([n]), ratio, 0, keep_last)[0])
    if len(theirs) != max(1, int(n * (1 - ratio))) or len(ours) != sparekit_count:  # kvpress's compute_n_kept
        return "other"  # a count neither rule gives
    labels = ["keep_last"] * bool(forced - theirs) + ["count"] * (len(ours) != len(theirs)) + ["tie"] * ("tie" in rules)
    return "+".join(labels) or "other"


@torch.inference_mode()
def sparekit_side(lm, enc: dict, prompt: Prefill, question: torch.Tensor, press: Press, steps: int) -> dict:
    """Kept positions per layer (None: sliding, left whole) and the answer, after the prompt pass ``prompt``."""
    cache = prompt.cache
    tokens, _ = decode(lm, enc, prompt, steps, press, question=question)
    pruned = copy.deepcopy(cache)  # decode prunes a copy of its own: prune one more to read what it keeps
    n, q = enc["input_ids"].shape[1], question.shape[1]
    with press(lm):
        lm.model(input_ids=question, attention_mask=torch.ones(1, n + q, dtype=torch.long),
                 position_ids=torch.arange(n, n + q)[None], use_cache=True, **{cache_keyword(lm.model): pruned})
    kept = {layer: None if before.is_sliding else kept_positions(before.keys, after.keys[:, :, :-q])
            for layer, (before, after) in enumerate(zip(cache.layers, pruned.layers))}
    return {"kept": kept, "answer": _answer(lm, tokens[0])}


def _answer(lm, tokens: torch.Tensor) -> str:
    """Greedy tokens up to and with the first end-of-sequence token, decoded as kvpress decodes."""
    stop = lm.model.generation_config.eos_token_id
    stop = set(stop if isinstance(stop, list) else [stop])
    ends = [i for i, t in enumerate(tokens.tolist()) if t in stop]
    return lm.tokenizer.decode(tokens[: ends[0] + 1] if ends else tokens, skip_special_tokens=True)


def venv_python(venv: Path) -> Path:
    """The kvpress environment's interpreter, checked before any model loads."""
    python = venv / "bin" / "python"
    if not python.is_file():
        raise SparekitError(f"no kvpress environment at {venv}", "run: bash scripts/kvpress_env.sh")
    return python


def kvpress_side(folder: Path, items: list[dict], ratios: list[float], steps: int, python: Path) -> dict:
    """The worker's answer for every item and ratio (see ``kvpress_worker.py``), run by ``python``."""
    with tempfile.TemporaryDirectory() as tmp:
        request, answer = Path(tmp) / "request.json", Path(tmp) / "answer.json"
        request.write_text(json.dumps({"model": str(folder), "ratios": ratios, "steps": steps, "items": items}))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": ""}
        proc = subprocess.run([str(python), str(Path(__file__).with_name("kvpress_worker.py")), str(request),
                               str(answer)], check=False, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise SparekitError(f"the kvpress worker failed: {last}")
        return json.loads(answer.read_text())


def compare(kept: dict, theirs: dict, norms: list[torch.Tensor], ratio: float, keep_last: int) -> dict[int, Counter]:
    """Per layer, class counts over its KV heads for one prompt (see :func:`classify`); ``norms[layer]`` ``[h, n]``."""
    out = {}
    for layer, heads in ((int(layer), heads) for layer, heads in theirs["kept"].items()):
        ours = kept[layer]
        out[layer] = Counter(classify(None if ours is None else ours[head], kvpress, norms[layer][head], ratio,
                                      keep_last) for head, kvpress in enumerate(heads))
    return out


def run_model(name: str, args: argparse.Namespace) -> list[dict]:
    """Rows of the table for one model: per setting and ratio, class counts and equal answers."""
    lm = load_model(name, device="cpu")
    question = lm.tokenizer(PASSKEY_QUESTION, add_special_tokens=False)["input_ids"]
    contexts = [(tokenize(lm, [context])["input_ids"][0].tolist(), key)
                for context, key in passkey_items(lm, args.length, args.items, seed=0)]
    # n a multiple of 4: n * (1 - r) is whole at r = 0.25 and 0.5, where the two count rules then agree
    items = [{"id": i, "context": ids[: len(ids) - len(ids) % 4], "question": question, "key": key}
             for i, (ids, key) in enumerate(contexts)]
    theirs = kvpress_side(resolve_source(name)[0], items, args.ratios, args.steps, venv_python(args.venv))
    by_key = {(r["item"], r["ratio"]): r for r in theirs["results"]}
    grid = [(setting, ratio) for setting in ("matched", "default") for ratio in args.ratios]
    rows = {cell: {"model": name, "setting": cell[0], "ratio": cell[1], "classes": Counter(), "layers": {},
                   "answers": []} for cell in grid}
    for item in items:
        ids = torch.tensor([item["context"]])
        enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        prompt = prefill(lm, enc, [])
        norms = [layer.keys[0].float().norm(dim=-1) for layer in prompt.cache.layers]
        for setting, ratio in grid:
            press = make_press("l2", ratio=ratio, **(MATCHED if setting == "matched" else {}))
            ours = sparekit_side(lm, enc, prompt, torch.tensor([question]), press, args.steps)
            other, row = by_key[(item["id"], ratio)], rows[(setting, ratio)]
            by_layer = compare(ours["kept"], other, norms, ratio, press.keep_last)
            for layer, counts in by_layer.items():
                row["classes"] += counts
                row["layers"].setdefault(layer, Counter()).update(c for c in counts.elements() if c != "equal")
            row["answers"].append({"key": item["key"], "tokens": len(item["context"]), "sparekit": ours["answer"],
                                   "kvpress": other["answer"], "kvpress_compress_s": other["compress_s"]})
    for row in rows.values():
        print(table_row(row), flush=True)
    return [{**row, "versions": theirs["versions"]} for row in rows.values()]


def table_row(row: dict) -> str:
    """``| model | settings | ratio | pairs | equal | explained differences | other | answers equal |``."""
    classes = row["classes"]
    explained = ", ".join(f"{c} {k}" for c, k in sorted(classes.items()) if c not in ("equal", "other")) or "none"
    same = sum(a["sparekit"] == a["kvpress"] for a in row["answers"])
    return (f"| {row['model']} | {row['setting']} | {row['ratio']:g} | {sum(classes.values())} | "
            f"{classes.get('equal', 0)} | {explained} | {classes.get('other', 0)} | {same}/{len(row['answers'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,smollm2-135m")
    parser.add_argument("--length", type=int, default=1024, help="prompt length in tokens (about)")
    parser.add_argument("--items", type=int, default=3)
    parser.add_argument("--ratios", default="0.25,0.5,0.9")
    parser.add_argument("--steps", type=int, default=8, help="greedy answer tokens")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-kvpress")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "kvpress.json")
    args = parser.parse_args()
    args.ratios = [float(r) for r in args.ratios.split(",")]
    torch.set_num_threads(1)
    try:
        venv_python(args.venv)
        print("| model | sparekit settings | ratio | (layer, KV head) × prompts | equal | explained differences "
              "| other | answers equal |")
        print("|---|---|---|---|---|---|---|---|")
        rows = [row for name in args.models.split(",") for row in run_model(name, args)]
    except SparekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    atomic_write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})


if __name__ == "__main__":
    main()
