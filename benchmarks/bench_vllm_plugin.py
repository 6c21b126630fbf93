"""The sparekit-vllm plugin's cost inside vLLM: throughput with it idle, detecting on every request, and
steering half of them, each ÷ plain vLLM's (issue 28 item 6's ratios; goals 0.97 / 0.90 / 0.85).

Runs in vLLM's environment (``.venv-vllm``, built by ``scripts/test_vllm.sh``), on vLLM's offline engine
with the worker extension: the same conflict prompts (the reference ``make_reference.py`` writes), all
submitted at once (vLLM batches them continuously, up to ``--max-num-seqs``), greedy, ``--max-tokens`` each.
Plain vLLM is the same engine before the plugin's hooks are installed; conditions alternate over
``--rounds`` and the median is kept. The API middleware's share (a JSON rewrite per request, and the extra
one-token pass of gated or detect+steer requests) is not in these figures.

    .venv-vllm/bin/python benchmarks/bench_vllm_plugin.py --reference runs/test_vllm/reference.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from sparekit.serve.options import RowSteer
from sparekit_vllm.options import Plan
from vllm import LLM, SamplingParams

MODEL = Path.home() / ".cache/sparekit/models/gemma-3-270m"


def timed(llm: LLM, prompts: list[str], plans: list[Plan | None], max_tokens: int) -> float:
    params = [SamplingParams(temperature=0, max_tokens=max_tokens, extra_args=p.extra_args() if p else None)
              for p in plans]
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    return len(prompts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    reference = json.loads(args.reference.read_text())
    prompts = reference["prompts"]
    os.environ["SPAREKIT_VLLM_MODEL"] = str(MODEL)
    os.environ["SPAREKIT_VLLM_FITTED"] = os.pathsep.join(reference.get("fitted", []))  # what the reference steered with
    llm = LLM(model=str(MODEL), dtype="float32", enforce_eager=True, max_model_len=1024, seed=0,
              max_num_seqs=args.max_num_seqs, worker_extension_cls="sparekit_vllm.worker.SparekitWorkerExtension")
    n = len(prompts)
    method, toward = next(k for k in reference["answers"] if k != "none").split("/")
    steer = RowSteer(method, toward, reference["strengths"][f"{method}/{toward}"])
    conditions = {"idle": [None] * n, "detect all": [Plan(f"d{i}", detect=True) for i in range(n)],
                  "steer half": [Plan(f"s{i}", steer=steer) if i % 2 else None for i in range(n)]}
    timed(llm, prompts, [None] * n, args.max_tokens)  # warm-up (and the prefix cache, for every condition)
    plain = [timed(llm, prompts, [None] * n, args.max_tokens) for _ in range(args.rounds)]
    llm.collective_rpc("sparekit_install")
    rates = {name: [] for name in conditions}
    for _ in range(args.rounds):
        for name, plans in conditions.items():
            rates[name].append(timed(llm, prompts, plans, args.max_tokens))
            for plan in plans:  # collect the readings, as the API server would
                if plan is not None and plan.detect:
                    llm.collective_rpc("sparekit_take", args=(plan.key,))
    base = statistics.median(plain)
    result = {"requests": n, "max_tokens": args.max_tokens, "plain_req_per_s": round(base, 2),
              **{f"{name} / plain": round(statistics.median(r) / base, 3) for name, r in rates.items()}}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
