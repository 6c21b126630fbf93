"""``sparekit eval``: the unsteered model on a conflict dataset, mean ± std over seeds."""

from __future__ import annotations

import click

from sparekit.cli.common import emit, json_option, no_verify_option
from sparekit.cli.config import config_options
from sparekit.evaluation.harness import EvalExperiment

ROWS = (("closed-book EM", "closed_book_em"), ("EM with original context", "org_context_em"),
        ("conflict: uses context", "conflict_uses_context"), ("conflict: uses memory", "conflict_uses_memory"),
        ("conflict: other", "conflict_other"),
        ("memorised: EM with original context", "memorised_org_context_em"),
        ("memorised: conflict uses context", "memorised_conflict_uses_context"),
        ("memorised: conflict uses memory", "memorised_conflict_uses_memory"))


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
@config_options(EvalExperiment)
@no_verify_option
@json_option
def eval_command(config: EvalExperiment, as_json: bool) -> None:
    """Evaluate the unsteered model: closed-book accuracy, accuracy with the original context,
    and under conflict the share that uses the context or memory (all items and memorised ones).

    \b
    Example: sparekit eval --dataset nqswap --limit 300 --seeds 42,43 --json
    Data-parallel (ranks generate disjoint cells of the run directory):
      torchrun --nproc-per-node 2 -m sparekit eval --dataset nqswap --limit 300 --out runs/eval-nq
    """
    from sparekit.utils.distributed import distributed_from_env

    with distributed_from_env() as (rank, _):
        result = config.run()
    if rank == 0:
        emit(result, as_json, render)
