"""Why the recall gate does or does not fire on a steering fold's test prompts: per conflict (or no-conflict)
prompt, the closed-book answer it read and its decision (issue 29; BENCHMARKS.md, "Gating steering on the
recall detector").

    python benchmarks/recall_gate_misses.py runs/broad-kind/held-out-language --dataset broad --context sub
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparekit.data import load_dataset
from sparekit.models import load_model
from sparekit.probes.training_free import recall_answers, unrecalled
from sparekit.steering.bench import BenchConfig, SteeringBenchmark
from sparekit.utils.io import read_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a bench steer run directory (one fold)")
    parser.add_argument("--dataset", default="broad")
    parser.add_argument("--context", choices=("sub", "org"), default="sub")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    recorded = read_json(args.run / "config.json")
    config = BenchConfig.from_record(recorded)
    lm = load_model(recorded["model"])
    bench = SteeringBenchmark(lm, load_dataset(args.dataset), config, args.run, progress=False)
    pool, _, test = bench.splits()
    prompts = bench.test_prompts(test, pool, args.context, args.seed)
    questions = [p.example.question for p in prompts]
    answers, _ = recall_answers(lm, questions)
    fired = unrecalled(answers, questions, [p.text for p in prompts], [p.text_without_context for p in prompts])
    print(f"fired on {int(fired.sum())} of {len(prompts)} {args.context} prompts")
    for p, answer, fires in zip(prompts, answers, fired):
        print(f"{'fires' if fires else 'quiet'} | {p.example.relation} | {p.example.question} | memorised "
              f"{p.example.org_answer[0]!r} | closed-book {answer!r} | {getattr(p.example, f'{args.context}_context')}")


if __name__ == "__main__":
    main()
