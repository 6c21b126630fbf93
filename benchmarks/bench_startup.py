"""Start-up of the command line: time to the first line printed, and to the end, before vs after.

Runs each command in a fresh interpreter with ``PYTHONPATH`` set to one source tree, then the
other, interleaved round by round so that load from other processes hits both alike; medians
over rounds. A command still silent after ``--cap`` seconds is stopped and reported as "> cap".

    python benchmarks/bench_startup.py --before /path/to/old/src [--after src] [--rounds 5] [--cap 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

#: (label, argv after the interpreter, stop at the first line?)
COMMANDS = (
    ("sparekit --help", ["-m", "sparekit", "--help"], False),
    ("import sparekit", ["-c", "import sparekit"], False),
    ("sparekit info --no-verify: first line", ["-m", "sparekit", "info", "--no-verify"], True),
    ("sparekit info --no-verify: all", ["-m", "sparekit", "info", "--no-verify"], False),
    ("sparekit demo: first line", ["-m", "sparekit", "demo"], True),
)


def timed(argv: list[str], src: Path, first_line: bool, cap: float) -> float:
    """Seconds until the command's first output line (``first_line``) or its end; ``inf`` past ``cap``."""
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen: list[float] = []
    reader = threading.Thread(target=lambda: seen.append(time.perf_counter()) if proc.stdout.readline() else None,  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    try:
        if first_line:
            reader.join(timeout=cap)
            return seen[0] - start if seen else float("inf")
        proc.wait(timeout=cap)
        return time.perf_counter() - start
    except subprocess.TimeoutExpired:
        return float("inf")
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True, help="The old tree's src/ folder.")
    parser.add_argument("--after", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cap", type=float, default=60.0, help="Give up on one command after this many seconds.")
    parser.add_argument("--only", default=None, help="Run only the commands whose label contains this.")
    args = parser.parse_args()
    print(f"{'command':<40} {'before':>9} {'after':>9} {'before/after':>12}   (median of {args.rounds}, seconds)")
    for label, argv, first_line in COMMANDS:
        if args.only and args.only not in label:
            continue
        runs: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            for side, times in runs.items():
                times.append(timed(argv, getattr(args, side), first_line, args.cap))
        before, after = (statistics.median(runs[s]) for s in ("before", "after"))
        shown = [f"> {args.cap:.0f}" if t == float("inf") else f"{t:.2f}" for t in (before, after)]
        ratio = f"{before / after:.1f}x" if after not in (0, float("inf")) and before != float("inf") else \
            f"> {args.cap / after:.0f}x" if after != float("inf") else "n/a"
        print(f"{label:<40} {shown[0]:>9} {shown[1]:>9} {ratio:>12}", flush=True)


if __name__ == "__main__":
    main()
