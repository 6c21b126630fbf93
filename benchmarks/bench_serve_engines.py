"""Servers side by side with the official ``openai`` client (issue 28 item 6): the built-in engine, vLLM with
the sparekit-vllm plugin (idle, detection on every request, steering on half), and plain vLLM.

The servers are already running (``sparekit serve``, ``sparekit serve --engine vllm``, and vLLM's own
``python -m vllm.entrypoints.openai.api_server`` without the plugin); each is named on the command line.
Every cell sends the same ``--n`` prompts (the reference ``make_reference.py`` writes), greedy,
``--max-tokens`` each, from 1 / 4 / 16 concurrent clients; cells are interleaved (round → clients →
configuration), so slow drifts of a shared machine's load fall on every configuration alike, and each
cell's requests/s, p50 and p95 latency are appended to ``--out`` (jsonl) as they finish: a run cut short
keeps what it measured. ``--summary`` prints the table (median over rounds, and the spread).

    python benchmarks/bench_serve_engines.py --reference runs/test_vllm/reference.json --out runs/engines.jsonl \
        --server builtin=http://127.0.0.1:8000 --server vllm=http://127.0.0.1:8001 \
        --server plain-vllm=http://127.0.0.1:8002 --plugin vllm [--clients 1,4,16] [--rounds 2] [--n 32]
    python benchmarks/bench_serve_engines.py --summary runs/engines.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

STEER = {"steer": {"method": "spare", "toward": "memory"}}
#: what a configuration asks of request ``i`` (``None``: no sparekit options)
CONDITIONS = {"plain": lambda i: None, "detect all": lambda i: {"detect": True},
              "steer half": lambda i: STEER if i % 2 else None}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cell(url: str, prompts: list[str], options, clients: int, max_tokens: int) -> dict:
    """One configuration at one client count: requests/s over the whole cell, p50/p95 latency (s)."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    model = client.models.list().data[0].id

    def one(i: int) -> tuple[float, str]:
        extra = options(i)
        start = time.perf_counter()
        out = client.completions.create(model=model, prompt=prompts[i], max_tokens=max_tokens, temperature=0,
                                        extra_body={"sparekit": extra} if extra else None)
        return time.perf_counter() - start, out.choices[0].text

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(len(prompts))))
    wall = time.perf_counter() - start
    latencies = [r[0] for r in results]
    return {"req_per_s": len(prompts) / wall, "p50_s": percentile(latencies, 0.5), "p95_s": percentile(latencies, 0.95),
            "answers": [r[1] for r in results]}


def configurations(servers: dict[str, str], plugin: set[str]) -> list[tuple[str, str, str]]:
    """(label, url, condition): every server plain; a plugin server also with detection and steering."""
    return [(name if cond == "plain" else f"{name} {cond}", url, cond) for name, url in servers.items()
            for cond in (CONDITIONS if name in plugin else ["plain"])]


def run(args: argparse.Namespace) -> None:
    prompts = json.loads(args.reference.read_text())["prompts"][:args.n]
    servers = dict(s.split("=", 1) for s in args.server)
    configs = configurations(servers, set(args.plugin))
    for url in servers.values():  # warm-up: first requests load lazily (the plugin's folders, caches)
        cell(url, prompts[:2], lambda i: None, 1, args.max_tokens)
    for round_ in range(args.rounds):
        for clients in (int(c) for c in args.clients.split(",")):
            for label, url, cond in configs:
                result = cell(url, prompts, CONDITIONS[cond], clients, args.max_tokens)
                row = {"round": round_, "clients": clients, "config": label, "n": len(prompts), **result}
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"round {round_} clients {clients:>2} {label:<22} {result['req_per_s']:6.2f} req/s "
                      f"p50 {result['p50_s']:.2f} s p95 {result['p95_s']:.2f} s", flush=True)


def summary(path: Path) -> None:
    """Median over rounds per (clients, configuration), the rounds' range, and each ÷ the first server's."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cells: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for row in rows:
        cells[row["clients"], row["config"]].append(row)
    print("| clients | configuration | requests/s (median; rounds) | p50 s | p95 s |\n| --- | --- | --- | --- | --- |")
    for (clients, config), got in sorted(cells.items()):
        rates = [r["req_per_s"] for r in got]
        print(f"| {clients} | {config} | {statistics.median(rates):.2f} ({', '.join(f'{r:.2f}' for r in rates)}) | "
              f"{statistics.median(r['p50_s'] for r in got):.2f} | {statistics.median(r['p95_s'] for r in got):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--server", action="append", default=[], help="name=url; repeatable")
    parser.add_argument("--plugin", action="append", default=[], help="a server name that has the plugin")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_serve_engines.jsonl"))
    parser.add_argument("--summary", type=Path, help="print the table of a finished (or cut) run and stop")
    args = parser.parse_args()
    if args.summary:
        return summary(args.summary)
    if args.reference is None or not args.server:
        parser.error("--reference and at least one --server are needed")
    run(args)


if __name__ == "__main__":
    main()
