"""``sparekit eval``: the unsteered model on a conflict dataset, mean ± std over seeds."""

from __future__ import annotations

import click

from sparekit.cli.common import device_map_option, device_option, dtype_option, emit, json_option, model_option
from sparekit.cli.data import dataset_option

ROWS = (("closed-book EM", "closed_book_em"), ("EM with original context", "org_context_em"),
        ("conflict: uses context", "conflict_uses_context"), ("conflict: uses memory", "conflict_uses_memory"),
        ("conflict: other", "conflict_other"),
        ("memorised: EM with original context", "memorised_org_context_em"),
        ("memorised: conflict uses context", "memorised_conflict_uses_context"),
        ("memorised: conflict uses memory", "memorised_conflict_uses_memory"))


def _seeds(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        seeds = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter("give comma-separated integers, e.g. 42,43,44") from None
    if not seeds:
        raise click.BadParameter("give at least one seed")
    return seeds


def _pct(stat: dict) -> str:
    return "n/a" if stat["mean"] is None else f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def render(r: dict) -> str:
    mem = r["memorised_n"]
    lines = [f"{r['model']} on {r['dataset']}: {r['n']} rows, {r['k_shot']}-shot, seeds {r['seeds']}",
             f"memorised (closed-book correct): {mem['mean']:.1f} ± {mem['std']:.1f} rows"]
    lines += [f"  {label:<38} {_pct(r[key])}" for label, key in ROWS]
    if r["by_relation"]:
        lines.append(f"  {'relation':<14} {'closed-book':>14} {'org ctx':>14} {'uses ctx':>14} {'uses mem':>14}")
        for rel, m in r["by_relation"].items():
            cells = (m[k] for k in ("closed_book_em", "org_context_em", "conflict_uses_context", "conflict_uses_memory"))
            lines.append(f"  {rel:<14} " + " ".join(f"{_pct(c):>14}" for c in cells))
    if "run_dir" in r:
        lines.append(f"run directory: {r['run_dir']}")
    return "\n".join(lines)


@click.command("eval")
@dataset_option
@model_option
@click.option("--limit", type=click.IntRange(1), default=None, help="Seeded sample of N rows (whole question groups).")
@click.option("--limit-seed", default=0, show_default=True, help="Seed of the --limit sample.")
@click.option("--seeds", default="42,43,44,45,46", show_default=True, callback=_seeds,
              help="Comma-separated seeds; each draws different demonstrations.")
@click.option("--k-shot", default=3, show_default=True, type=click.IntRange(0), help="Demonstrations per prompt.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--out", "out", default=None, type=click.Path(file_okay=False),
              help="Run directory (default runs/eval-<dataset>-<config hash>); rerun to resume.")
@device_option
@device_map_option
@dtype_option
@json_option
def eval_command(dataset: str, model: str, limit: int | None, limit_seed: int, seeds: list[int], k_shot: int,
                 batch_size: int, out: str | None, device: str | None, device_map: str | None, dtype: str,
                 as_json: bool) -> None:
    """Evaluate the unsteered model: closed-book accuracy, accuracy with the original context,
    and under conflict the share that uses the context or memory (all items and memorised ones).

    \b
    Example: sparekit eval --dataset nqswap --limit 300 --seeds 42,43 --json
    Data-parallel (ranks generate disjoint cells of the run directory):
      torchrun --nproc-per-node 2 -m sparekit eval --dataset nqswap --limit 300 --out runs/eval-nq
    """
    from sparekit.data import load_dataset
    from sparekit.evaluation.harness import default_run_dir, evaluate, run_config
    from sparekit.models import load_model
    from sparekit.utils.distributed import distributed_from_env, local_device
    from sparekit.utils.io import ensure_dir

    ds = load_dataset(dataset, limit=limit, seed=limit_seed)
    if out is not None:
        ensure_dir(out)  # a bad --out fails now, not after loading the model
    with distributed_from_env() as (rank, _):
        lm = load_model(model, dtype=dtype, device=local_device(device), device_map=device_map)
        run_dir = out or default_run_dir(run_config(lm, ds, seeds, k_shot))
        result = evaluate(lm, ds, seeds, k_shot=k_shot, out_dir=run_dir, batch_size=batch_size, progress=True)
    if rank == 0:
        emit(result, as_json, render)
