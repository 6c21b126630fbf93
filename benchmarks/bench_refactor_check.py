"""The same tiny steering benchmark under two checkouts, compared file by file: does a refactor of the
benchmark (issue 26: ``steering/benchmark.py`` split into ``steering/bench/``) change anything it writes?

    PYTHONPATH=<old checkout>/src python benchmarks/bench_refactor_check.py run /tmp/cmp/old /tmp/cmp/memorised.json
    PYTHONPATH=src python benchmarks/bench_refactor_check.py run /tmp/cmp/new /tmp/cmp/memorised.json
    PYTHONPATH=src python benchmarks/bench_refactor_check.py compare /tmp/cmp/old /tmp/cmp/new

Both runs share one closed-book pass (the memorised file); every 4th row of the default dataset, 16 pool and
8 dev groups, 16 test items, one seed: ``none``, ``actadd`` (block 10), ``spare`` (K = 0.1, α ∈ {1, 2}) and
``spare+gate``, then the frontier of ``actadd`` and ``spare+gate``. The fitted folders are not compared (their
layout changed on purpose); configs are compared by their parameters (the header names the version).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sparekit.data import load_dataset
from sparekit.models import load_model

try:
    from sparekit.steering.bench import BenchConfig, SteeringBenchmark
except ImportError:  # a checkout from before the split
    from sparekit.steering.benchmark import BenchConfig, SteeringBenchmark  # type: ignore[no-redef]

CONFIG = BenchConfig(methods=("none", "actadd", "spare", "spare+gate"), seeds=(42,), layers=(9, 10, 11, 12),
                     pool_groups=16, dev_groups=8, test_limit=16, behaviour_seeds=(0,),
                     param_grids={"spare": {"mi_mass": [0.1]}, "actadd": {"layer": [10]}},
                     strength_grids={"spare": [1.0, 2.0], "actadd": [4.0]})


def run(out: Path, memorised: Path) -> None:
    data = load_dataset("default")
    data = data.subset(list(range(0, len(data), 4)))
    bench = SteeringBenchmark(load_model("default"), data, CONFIG, out, batch_size=8, progress=False,
                              memorised_file=memorised)
    summary = bench.run()
    bench.frontier(["actadd", "spare+gate"])
    print({label: [round(100 * r[m]["mean"], 1) for m in ("em_memory", "em_context", "em_no_conflict")]
           for label, r in summary["methods"].items()})


def same(a: Path, b: Path) -> bool:
    if not b.is_file():
        return False
    if a.name == "config.json":
        return json.loads(a.read_text())["params"] == json.loads(b.read_text())["params"]
    return a.read_bytes() == b.read_bytes()


def compare(a: Path, b: Path) -> None:
    skipped = ("environment.json", ".lock", "done")  # the run's machine and times
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name not in skipped
                   and p.relative_to(a).parts[0] not in ("fitted", "config.json"))
    differ = [str(f) for f in files if not same(a / f, b / f)]
    print(f"{len(files) - len(differ)} of {len(files)} files identical" + (f"; differ: {differ}" if differ else ""))


if __name__ == "__main__":
    {"run": run, "compare": compare}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
