"""``sparekit serve`` on the default model: batching throughput, latency, and the cost of detect and steer.

A real server (uvicorn on 127.0.0.1, in this process) and the official ``openai`` client.
Requests are three-shot conflict prompts from the embedded dataset (substituted context,
``max_tokens`` 12, stop at newline), as ``/v1/answer`` builds them.

1. Throughput: N requests sent one at a time (1 client), then by 4 and 16 concurrent
   clients; requests/s, ratio to one-at-a-time, p50/p95 latency, mean rows per decoding step;
   for every setting of the shared-prefix KV cache (``--prefix-cache on,off``) and of the
   batching (``--batching static,retire,continuous``), side by side in one process, the settings
   interleaved over ``--runs``, and whether all give the same answers.
2. Cost of ``detect`` and of ``steer`` (shipped SpARE toward memory, with and without
   its gate): the same prompts one at a time, variants interleaved per prompt over
   rounds; median latency ÷ the plain request's, and the completion tokens generated.

    python benchmarks/bench_serve.py [--n 48] [--rounds 2] [--threads 2] [--max-batch 16] [--batch-wait-ms 10]
                                     [--prefix-cache on,off] [--batching retire] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import torch

from sparekit.data import load_dataset
from sparekit.models import load_model
from sparekit.serve import Limits, build_engine, serve_in_thread

VARIANTS = {
    "plain": {},
    "detect": {"detect": True},
    "steer": {"steer": {"method": "spare", "toward": "memory"}},
    "steer+gate": {"steer": {"method": "spare", "toward": "memory", "gate": True}},
}


def step_totals(url: str) -> tuple[float, float]:
    """(rows, decoding steps) run so far, from the server's Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics") as response:
        text = response.read().decode()
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    return values["sparekit_step_rows_sum"], values["sparekit_step_rows_count"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="requests per throughput run")
    parser.add_argument("--cost-n", type=int, default=16, help="prompts in the detect/steer cost runs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--parts", default="throughput,cost", help="which parts to run")
    parser.add_argument("--prefix-cache", default="on,off", help="shared-prefix KV cache settings to compare")
    parser.add_argument("--batching", default="retire", help="batching modes to compare (static,retire,continuous)")
    parser.add_argument("--runs", type=int, default=1, help="runs of every setting, interleaved")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("default", device="cpu")
    data = list(load_dataset("default"))
    answers: dict[str, dict[tuple[str, str], str]] = {}  # setting -> (prompt, options) -> answer
    settings = [(cache, mode) for cache in args.prefix_cache.split(",") for mode in args.batching.split(",")]
    for run in range(args.runs):
        for cache, mode in settings:
            setting = f"prefix cache {cache}, {mode} batching"
            print(f"\n## {setting}, run {run + 1} ({time.strftime('%H:%M:%S', time.gmtime())} UTC, "
                  f"load average {os.getloadavg()[0]:.1f})")
            serve_setting(args, lm, data, build_engine(lm, prefix_cache=cache == "on", batching=mode),
                          answers.setdefault(setting, {}))
    if len(answers) > 1:
        first, *others = answers.values()
        same = [sum(first[key] == other.get(key) for key in first) for other in others]
        print(f"\nsame answers as {next(iter(answers))!r} in {', '.join(list(answers)[1:])}: {same} of {len(first)} "
              "(prompt, options) pairs")


def serve_setting(args, lm, data, engine, answers: dict[tuple[str, str], str]) -> None:
    """One engine behind a live server: the throughput and cost parts, each answer kept in ``answers``."""
    prompts = [engine.answer_prompt(ex.sub_context, ex.question) for ex in data[: max(args.n, args.cost_n)]]
    limits = Limits(max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, max_queue=4096)
    with serve_in_thread(engine, limits) as (_, url):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)

        def ask(prompt: str, options: dict) -> tuple[float, int]:
            start = time.perf_counter()
            reply = client.completions.create(model="default", prompt=prompt, max_tokens=12, stop=["\n"],
                                              extra_body={"sparekit": options} if options else None)
            text = reply.choices[0].text
            if answers.setdefault((prompt, repr(options)), text) != text:
                print(f"changed between runs: {prompt[-40:]!r} {options}")
            return time.perf_counter() - start, reply.usage.completion_tokens

        ask(prompts[0], VARIANTS["steer+gate"])  # warm-up: loads the SAEs, builds the edits
        if "throughput" in args.parts:
            throughput(args, url, prompts, ask)
        if "cost" in args.parts:
            cost(args, prompts, ask)


def throughput(args, url: str, prompts: list[str], ask) -> None:
    print(f"throughput: {args.n} requests, threads {args.threads}, max batch {args.max_batch}, "
          f"batch wait {args.batch_wait_ms:g} ms")
    print("| clients | requests/s | ÷ one at a time | p50 latency | p95 latency | rows per decoding step |")
    print("|---|---|---|---|---|---|")
    baseline = None
    for clients in (int(c) for c in args.clients.split(",")):
        rows_before, steps_before = step_totals(url)
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = [t for t, _ in pool.map(lambda p: ask(p, {}), prompts[: args.n])]
        rate = args.n / (time.perf_counter() - start)
        rows_after, steps_after = step_totals(url)
        rows = (rows_after - rows_before) / max(1.0, steps_after - steps_before)
        baseline = baseline or rate
        print(f"| {clients} | {rate:.2f} | {rate / baseline:.2f} | {statistics.median(latencies):.2f} s | "
              f"{percentile(latencies, 0.95):.2f} s | {rows:.1f} |")


def cost(args, prompts: list[str], ask) -> None:
    print(f"\ncost: {args.cost_n} prompts one at a time, {args.rounds} rounds, variants interleaved per prompt")
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    tokens: dict[str, int] = {v: 0 for v in VARIANTS}
    for r in range(args.rounds):
        for i, prompt in enumerate(prompts[: args.cost_n]):
            order = list(VARIANTS) if (i + r) % 2 == 0 else list(reversed(VARIANTS))
            for variant in order:
                seconds, n_tokens = ask(prompt, VARIANTS[variant])
                times[variant].append(seconds)
                tokens[variant] += n_tokens
    base = statistics.median(times["plain"])
    print("| variant | median latency | ÷ plain | completion tokens |")
    print("|---|---|---|---|")
    for variant in VARIANTS:
        median = statistics.median(times[variant])
        print(f"| {variant} | {median * 1000:.0f} ms | {median / base:.3f} | {tokens[variant]} "
              f"({tokens[variant] / tokens['plain']:.2f}×) |")


if __name__ == "__main__":
    main()
