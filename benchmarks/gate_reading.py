"""What the conflict gate reads: its decisions on unsteered activations vs read under the method's edits.

Before the fix, ``Steered`` read the gate while the method's edits were active (a batch without a
mask edited every row), so the decision depended on the steering it was meant to gate. This script
reads the shipped gate (block 10) on held-out conflicts and their no-conflict twins three ways:
unsteered; through the fixed ``Steered`` path (``last_fired`` after a one-token generate); and under
the shipped SpARE's edits (blocks 9-12) on every row, as the old path did.

    python benchmarks/gate_reading.py --n 24 --memorised runs/memorised-default.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import sparekit
from sparekit.activations.last_token import last_token_states
from sparekit.data import load_dataset, split_by_group
from sparekit.evaluation.harness import memorised_subset
from sparekit.steering.bench import eval_prompts
from sparekit.steering.fitted import FittedBundle, shipped_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--memorised", type=Path, default=None, help="cache of the closed-book memorised ids")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = sparekit.load_model("default")
    data = load_dataset("default")
    if args.memorised is not None and args.memorised.is_file():
        keep = set(json.loads(args.memorised.read_text())["ids"])
        memorised = data.subset([i for i, ex in enumerate(data) if ex.id in keep])
    else:
        memorised = memorised_subset(lm, data, seed=42, k_shot=3)
        if args.memorised is not None:
            args.memorised.write_text(json.dumps({"ids": [ex.id for ex in memorised]}))
    n = len(memorised.groups())  # the split of the run that tuned the shipped SpARE and fitted the gate
    pool, _, test = split_by_group(memorised, [128 / n, 64 / n, 1 - 192 / n], seed=0)
    items = test.sample(100, seed=0).sample(args.n, seed=1)
    bundle = FittedBundle.load(shipped_root("spare"), lm.info.model_hash)
    gate = bundle.require_gate()
    report: dict = {"gate_layer": gate.site.layer, "threshold": gate.threshold, "n": args.n}
    for context in ("sub", "org"):
        prompts = eval_prompts(items, pool, context, 42, 3)
        texts = [p.text for p in prompts]
        p_unsteered = gate.probe.predict_proba(last_token_states(lm, texts, [gate.site])[gate.site].numpy())[:, 1]
        for toward in ("memory", "context"):
            fitted = bundle[toward]
            with fitted.method.steer(lm, toward=toward, strength=fitted.strength, batch_size=args.n):
                under_edits = last_token_states(lm, texts, [gate.site])[gate.site]
            p_edited = gate.probe.predict_proba(under_edits.numpy())[:, 1]
            with fitted.method.steer(lm, toward=toward, strength=fitted.strength, gate=gate,
                                     batch_size=args.n) as steered:
                steered.generate(prompts, max_new_tokens=1)
                fixed = steered.last_fired.numpy()
            report[f"{context} -> {toward}"] = {
                "fired_unsteered": int((p_unsteered > gate.threshold).sum()), "fired_fixed_path": int(fixed.sum()),
                "fixed_equals_unsteered": bool(((p_unsteered > gate.threshold) == fixed).all()),
                "fired_read_under_edits": int((p_edited > gate.threshold).sum()),
                "max_abs_change_in_p": round(float(abs(p_edited - p_unsteered).max()), 3)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
