"""The commands' ``--json`` under two checkouts, compared: does turning the commands into config dataclasses
(issue 26: ``sparekit.commands``) change what any of them prints?

    python benchmarks/bench_commands_check.py run /tmp/cmp/old --src <old checkout>/src
    python benchmarks/bench_commands_check.py run /tmp/cmp/new --src src
    python benchmarks/bench_commands_check.py compare /tmp/cmp/old /tmp/cmp/new

Each command runs in a fresh ``python -m sparekit`` with that checkout first on ``PYTHONPATH``; one JSON file per
command (written whole once it finished, so a rerun skips it; the checkout's own path reads ``<src>``).
``compare`` reports each command as identical or names the keys that differ (the .gguf written by file name).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CONTEXT, QUESTION = "The capital of France is Porto-Novo.", "What is the capital of France?"
SHIPPED_SPARE = "src/sparekit/assets/steering/gemma-3-270m/spare"
COMMANDS = {
    "demo": ["demo"],
    "steer-gate": ["steer", CONTEXT, QUESTION, "--toward", "memory", "--gate"],
    "steer-context-rag": ["steer", CONTEXT, QUESTION, "--toward", "context", "--prompt-format", "rag"],
    "detect-question": ["detect", "--question", QUESTION, "--context", CONTEXT, "--context", "Paris is in Europe."],
    "detect-disagreement": ["detect", "--question", QUESTION, "--context", CONTEXT, "--detector", "probe+disagreement"],
    "generate": ["generate", f"context: {CONTEXT}\nquestion: {QUESTION}\nanswer:", "-n", "6"],
    "data-show": ["data", "show", "--limit", "40", "--rows", "2"],
    "export": ["export", "control-vector", SHIPPED_SPARE, "--toward", "memory", "--out", "{out}/spare.gguf"],
}


def run(out: Path, src: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for name, argv in COMMANDS.items():
        target = out / f"{name}.json"
        if target.is_file():
            continue
        argv = [a.replace("{out}", str(out)) for a in argv]
        proc = subprocess.run([sys.executable, "-m", "sparekit", *argv, "--json"], env=env, capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"{name} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        json.loads(proc.stdout)  # whole JSON, or no file
        target.write_text(proc.stdout.replace(str(src.resolve()), "<src>"))  # the two checkouts' paths differ
        print(f"{name}: done", flush=True)


def _differences(a: object, b: object, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    if isinstance(a, str) and isinstance(b, str) and a.endswith(".gguf") and b.endswith(".gguf"):
        return [] if Path(a).name == Path(b).name else [where or "."]
    return [] if a == b else [where or "."]


def compare(old: Path, new: Path) -> None:
    for name in COMMANDS:
        a, b = (json.loads((folder / f"{name}.json").read_text()) for folder in (old, new))
        found = _differences(a, b)
        print(f"{name}: " + ("identical" if not found else "differs at " + ", ".join(found)))
    same = (old / "spare.gguf").read_bytes() == (new / "spare.gguf").read_bytes()
    print(f"export's .gguf: {'byte-identical' if same else 'differs'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    one = sub.add_parser("run")
    one.add_argument("out", type=Path)
    one.add_argument("--src", type=Path, required=True, help="The checkout's src folder.")
    both = sub.add_parser("compare")
    both.add_argument("old", type=Path)
    both.add_argument("new", type=Path)
    args = parser.parse_args()
    run(args.out, args.src) if args.step == "run" else compare(args.old, args.new)


if __name__ == "__main__":
    main()
