"""Which three demonstrations every request-time prompt takes: the candidates the entry points used before
issue 26 made them one, read by the shipped probes and answered by the default model.

Candidates: the shipped probes' ``detect.json`` (what ``sparekit detect --question`` used), the shipped
SpARE's ``tuned.json`` (``steer`` and ``/v1/answer``: the first three not asking the question) and the
draw ``sparekit demo`` made (``Random(0)``, other groups than the demo item's). On a seeded sample of
default items that ask none of a candidate's questions: the conflict probe's accuracy (true context vs
conflicting one, threshold 0.5), the mean conflict probability of each side, what the model answers with
the conflicting context, and EM with the true one.

    python benchmarks/request_demos.py --n 48
"""

from __future__ import annotations

import argparse
import json
import random

from sparekit.data import load_dataset
from sparekit.data.formats import PromptBuilder, Shot, parse_shot
from sparekit.data.prompts import THREE_SHOT, demo_examples
from sparekit.evaluation.generation import greedy_generate
from sparekit.evaluation.metrics import behaviour_label, exact_match
from sparekit.models import load_model
from sparekit.probes.detect import load_probes, request_shots, resolve_probe_dir
from sparekit.probes.reading import read_prompts
from sparekit.steering.fitted import FittedBundle, shipped_root


def candidates(data) -> dict[str, tuple[Shot, ...]]:
    """The three sets of demonstrations the entry points took before they shared one."""
    tuned = FittedBundle.load(shipped_root("spare"))["memory"].demos
    france = next(ex for ex in data if ex.id == "capital-FR")
    drawn = demo_examples(data, france.group, 3, random.Random(0))
    return {"probes' detect.json": request_shots(), "SpARE's tuned.json": tuple(parse_shot(d) for d in tuned),
            "demo's draw": tuple(Shot(ex.question, ex.org_context, ex.org_answer[0]) for ex in drawn)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    lm = load_model("default")
    probes = load_probes(resolve_probe_dir(None, lm.info), lm.info.model_hash)
    data = load_dataset("default")
    sample = random.Random(args.seed).sample(list(data), args.n + 12)
    for name, shots in candidates(data).items():
        asked = {s.question for s in shots}
        items = [ex for ex in sample if ex.question not in asked][:args.n]
        build = PromptBuilder(THREE_SHOT, shots)
        org = [build(ex.question, ex.org_context) for ex in items]
        sub = [build(ex.question, ex.sub_context) for ex in items]
        p = [r["conflict_probability"] for r in read_prompts(lm, org + sub, probes=probes).probes]
        p_org, p_sub, n = p[:len(items)], p[len(items):], len(items)
        behaviour = [behaviour_label(a, ex) for a, ex in zip(greedy_generate(lm, sub, batch_size=16), items)]
        em = sum(exact_match(a, ex.org_answer) for a, ex in zip(greedy_generate(lm, org, batch_size=16), items))
        accuracy = (sum(x < 0.5 for x in p_org) + sum(x > 0.5 for x in p_sub)) / (2 * n)
        print(json.dumps({"demonstrations": name, "n": n, "probe_accuracy": round(accuracy, 3),
                          "mean_p_conflict": {"true": round(sum(p_org) / n, 3), "conflict": round(sum(p_sub) / n, 3)},
                          "conflict_answers": {b: behaviour.count(b) for b in ("context", "memory", "other")},
                          "em_true_context": round(em / n, 3)}), flush=True)


if __name__ == "__main__":
    main()
