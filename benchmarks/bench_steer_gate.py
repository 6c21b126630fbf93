"""``sparekit steer --gate`` with the probes' reading: the read-then-steer runtime against the old four passes.

The old command ran the unsteered answer, then a gated ``Steered.generate`` (its own
gate-reading forward, then the steered generation), then ``detect_prompt`` (the probes
reloaded and a fourth prefix pass). ``steer_question`` now reads the gate and the
probes from the unsteered generation's own prompt pass and skips the steered
generation when the gate does not fire. Both run here in one process on the same
conflict prompts of the embedded dataset, interleaved per prompt over rounds; the
medians' ratio is printed, with the answers compared.

    python benchmarks/bench_steer_gate.py --n 12 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sparekit.steering.question import steer_question
from sparekit.data import load_dataset
from sparekit.data.dataset import ConflictExample
from sparekit.models import load_model
from sparekit.probes.detect import detect_prompt, probes_for, prompt_builder
from sparekit.steering import SteeringPrompt, make_method
from sparekit.steering.fitted import FittedBundle, shipped_root


def four_passes(lm, context: str, question: str) -> tuple[str, str, float]:
    """What ``sparekit steer --gate`` did before: (unsteered, steered, conflict probability)."""
    bundle = FittedBundle.load(shipped_root("spare", lm.info), lm.info.model_hash)
    loaded = bundle["memory"]
    example = ConflictExample(id="cli", question=question, org_context=context, org_answer=(), sub_context=context,
                              sub_answer=())
    builder = prompt_builder(lm)
    prompt = SteeringPrompt(example, "sub", tuple(builder.demos(question)), builder.format)
    with make_method("none").steer(lm, toward="memory") as plain:
        unsteered = plain.generate([prompt])[0]
    with loaded.method.steer(lm, toward="memory", strength=loaded.strength, gate=bundle.require_gate()) as s:
        steered = s.generate([prompt])[0]
    return unsteered, steered, detect_prompt(lm, prompt.text)["conflict_probability"]


def two_passes(lm, context: str, question: str) -> tuple[str, str, float]:
    result = steer_question(lm, context, question, "memory", "spare", None, None, prompt_builder(lm), gated=True,
                            probes=probes_for(lm))
    return result["unsteered"], result["steered"], result["detection"]["conflict_probability"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="conflict prompts")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("default")
    items = list(load_dataset("default", limit=args.n, seed=1))[: args.n]
    two_passes(lm, items[0].sub_context, items[0].question)  # warm-up: SAEs, edits, probes
    times: dict[str, list[float]] = {"four passes (before)": [], "read then steer": []}
    same = fired = 0
    for r in range(args.rounds):
        for i, ex in enumerate(items):
            runs = [("four passes (before)", four_passes), ("read then steer", two_passes)]
            outputs = {}
            for name, fn in runs if (i + r) % 2 == 0 else reversed(runs):
                start = time.perf_counter()
                outputs[name] = fn(lm, ex.sub_context, ex.question)
                times[name].append(time.perf_counter() - start)
            old, new = outputs.values()
            same += old[:2] == new[:2] and abs(old[2] - new[2]) < 1e-4
            fired += new[0] != new[1]
    base = statistics.median(times["four passes (before)"])
    print(f"{args.n} conflict prompts x {args.rounds} rounds, threads {args.threads}; answers and readings equal in "
          f"{same} of {args.n * args.rounds}; steered answer differs from unsteered in {fired}")
    print("| path | median seconds per question | ÷ four passes |")
    print("|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
