"""``sparekit bench``: steering methods side by side, and their strength frontier."""

from __future__ import annotations

import click

from sparekit.cli.common import emit, json_option, no_verify_option
from sparekit.cli.config import config_options
from sparekit.steering.experiment import BenchFrontierExperiment, BenchSteerExperiment


@click.group()
def bench() -> None:
    """Benchmarks: steering methods side by side on a conflict dataset."""


@bench.command("steer")
@config_options(BenchSteerExperiment)
@no_verify_option
@json_option
def bench_steer(config: BenchSteerExperiment, as_json: bool) -> None:
    """EM toward memory / context and EM without conflict for every method, mean ± std over seeds.

    \b
    Example:
      sparekit bench steer --dataset default --methods none,actadd,spare,spare+gate --seeds 42,43
      sparekit bench steer --split-by relation --methods none,cad,spare --test-limit 30
      sparekit bench steer --protocol paper --methods none,icl,cad,spare --layers 9,10,11,12
    Data-parallel (rank 0 builds the shared behaviour data, then ranks take disjoint methods):
      torchrun --nproc-per-node 2 -m sparekit bench steer --methods none,cad,actadd,spare --out runs/b
    """
    from sparekit.utils.distributed import distributed_from_env

    with distributed_from_env() as (rank, _):
        summary = config.run()
    if rank == 0:
        table = summary.pop("table")
        emit(summary, as_json, lambda r: f"{table}\n\nrun directory: {r['run_dir']}")


@bench.command("frontier")
@config_options(BenchFrontierExperiment)
@no_verify_option
@json_option
def bench_frontier(config: BenchFrontierExperiment, as_json: bool) -> None:
    """Sweep each method's strength: EM toward the target vs EM without conflict, plotted per direction."""

    def render(r: dict) -> str:
        lines = []
        for label, by_direction in r["curves"].items():
            for toward, points in by_direction.items():
                pts = ", ".join(f"s={p['strength']}: {100 * p['em_target']:.0f}/{100 * p['em_no_conflict']:.0f}"
                                for p in points)
                lines.append(f"{label:>12} → {toward:<7} {pts}")
        return "\n".join(lines + [f"(EM toward target / EM without conflict, %)  plot: {r['plot']}"])

    emit(config.run(), as_json, render)
