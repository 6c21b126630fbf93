"""The built-in serve engine's answers on the default model, as JSON: run it under two versions of the code and
compare (``--compare``): every variant's text, finish reason, token count, conflict probability and steering.

16 three-shot conflict prompts (``/v1/answer``'s format, ``max_tokens`` 12, stop at newline) in one batch per
variant (plain, detect, SpARE toward memory with detect, toward context, gated with detect, seeded sampling),
with the shared-prefix cache on and off. ``--join`` starts 8 of them and hands the others over 2 per decoding
step (continuous batching; an engine without it runs them in one batch)::

    PYTHONPATH=<old checkout>/src python benchmarks/serve_engine_check.py runs/old.json
    python benchmarks/serve_engine_check.py runs/new.json [--join]
    python benchmarks/serve_engine_check.py --compare runs/old.json runs/new.json
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

from sparekit.data import load_dataset
from sparekit.models import load_model
from sparekit.serve import build_engine
from sparekit.serve.engine import Job, Sampling
from sparekit.serve.options import RowSteer

VARIANTS = {"plain": {}, "detect": {"detect": True}, "memory": {"steer": ("memory", False), "detect": True},
            "context": {"steer": ("context", False)}, "gate": {"steer": ("memory", True), "detect": True},
            "sample": {"sampling": Sampling(temperature=0.8, seed=3)}}


def answers(engine, prompts: list[str], options: dict, join: bool) -> list[list]:
    done: dict[int, dict] = {}
    jobs = [Job(p, 12, (lambda kind, v, i=i: done.__setitem__(i, v) if kind == "done" else None), stop=("\n",),
                **options) for i, p in enumerate(prompts)]
    if join and "join" in inspect.signature(engine.run).parameters:
        later = jobs[len(jobs) // 2:]
        engine.run(jobs[:len(jobs) // 2], lambda running: [later.pop(0) for _ in range(min(2, len(later)))])
    else:
        engine.run(jobs)
    return [[d["text"], d["finish_reason"], d["completion_tokens"], d["sparekit"].get("conflict_probability"),
             d["sparekit"].get("steered")] for d in (done[i] for i in range(len(prompts)))]


def dump(out: Path, join: bool) -> None:
    lm = load_model("default", device="cpu")
    data = list(load_dataset("default"))[:16]
    found = {}
    for cache in (True, False):
        engine = build_engine(lm, prefix_cache=cache)
        prompts = [engine.answer_prompt(ex.sub_context, ex.question) for ex in data]
        for name, variant in VARIANTS.items():
            options = dict(variant)
            if "steer" in options:
                toward, gate = options["steer"]
                options["steer"] = RowSteer("spare", toward, engine.default_strength("spare", toward), gate)
            found[f"prefix cache {cache}/{name}"] = answers(engine, prompts, options, join)
            print(name, cache, flush=True)
    out.write_text(json.dumps(found, indent=0))


def compare(a: Path, b: Path) -> None:
    left, right = json.loads(a.read_text()), json.loads(b.read_text())
    for key in left:
        same = sum(x[:3] == y[:3] and x[4] == y[4] for x, y in zip(left[key], right[key]))
        gap = max(abs((x[3] or 0) - (y[3] or 0)) for x, y in zip(left[key], right[key]))
        print(f"{key}: {same}/{len(left[key])} identical, largest conflict-probability gap {gap:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="+")
    parser.add_argument("--join", action="store_true")
    parser.add_argument("--compare", action="store_true", help="compare two dumps instead")
    args = parser.parse_args()
    compare(*args.out) if args.compare else dump(args.out[0], args.join)


if __name__ == "__main__":
    main()
