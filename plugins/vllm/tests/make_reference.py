"""Reference answers and readings from sparekit's built-in engine, for the vLLM-side tests to compare with.

Runs in sparekit's own environment (transformers and all), before ``test_vllm_engine.py`` runs in vLLM's:

    python plugins/vllm/tests/make_reference.py OUT.json [--limit 50] [--fitted DIR ...]

For the first ``limit`` conflict prompts of the default dataset (substituted context, the request-time
demonstrations: the prompt ``/v1/answer`` builds), greedy answers unsteered and per fitted method and
direction at its tuned strength, and the probes' reading (what ``sparekit detect`` reports). ``--fitted``:
the fitted bundles to steer with (default: the shipped ones); their folders are recorded, so the vLLM side
loads the same ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparekit.data.loaders import load_dataset
from sparekit.models import load_model
from sparekit.serve import build_engine
from sparekit.serve.engine import Job
from sparekit.serve.options import RowSteer
from sparekit.utils.io import atomic_write_json

MAX_TOKENS = 8
BATCH = 16


def run(engine, prompts: list[str], steer: RowSteer | None, detect: bool = False) -> list[dict]:
    results: list[dict] = [{} for _ in prompts]
    for start in range(0, len(prompts), BATCH):
        jobs = []
        for i in range(start, min(start + BATCH, len(prompts))):
            def emit(kind, data, i=i):
                if kind == "done":
                    results[i] = data
            jobs.append(Job(prompts[i], MAX_TOKENS, emit, detect=detect, steer=steer))
        engine.run(jobs)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--fitted", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    engine = build_engine(load_model("default"), fitted=args.fitted)
    examples = list(load_dataset("default"))[:args.limit]
    prompts = [engine.answer_prompt(ex.sub_context, ex.question) for ex in examples]
    plain = run(engine, prompts, None, detect=True)
    answers, detect = {"none": [r["text"] for r in plain]}, [r["sparekit"] for r in plain]
    for label in engine.method_names()[1:]:
        for toward in sorted(engine.steering.methods[label]):
            steer = RowSteer(label, toward, engine.default_strength(label, toward))
            answers[f"{label}/{toward}"] = [r["text"] for r in run(engine, prompts, steer)]
    atomic_write_json(args.out, {"max_tokens": MAX_TOKENS, "prompts": prompts, "answers": answers, "detect": detect,
                                 "fitted": [str(p.resolve()) for p in args.fitted],
                                 "strengths": {f"{label}/{t}": engine.default_strength(label, t)
                                               for label in engine.method_names()[1:]
                                               for t in engine.steering.methods[label]}})


if __name__ == "__main__":
    main()
