"""``sparekit bench``: steering methods side by side, and their strength frontier."""

from __future__ import annotations

from pathlib import Path

import click

from sparekit.cli.common import device_map_option, device_option, emit, json_option, model_option


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def _json_option(text: str | None, name: str) -> dict:
    import json

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=name) from None
    if not isinstance(value, dict):
        raise click.BadParameter("expected a JSON object keyed by method", param_hint=name)
    return value


def _benchmark(model, dataset, methods, seeds, layers, pool_groups, dev_groups, test_limit, out, device, device_map,
               batch_size, grid=None, strengths=None, sweep=None, split_by="group", protocol="sparekit"):
    """The model, dataset, config and run directory; a group split also gets its :class:`SteeringBenchmark`.

    With ``--protocol paper`` the preset's seeds, pool, dev and test sizes apply unless given on the command line.
    """
    from sparekit.data import load_dataset
    from sparekit.data.dataset import held_out_relations
    from sparekit.models import load_model
    from sparekit.steering.benchmark import BenchConfig, SteeringBenchmark, paper_config

    data = load_dataset(dataset)
    if split_by == "relation":
        held_out_relations(data)  # bad input fails before the model loads
    options = dict(methods=tuple(m.strip() for m in methods.split(",") if m.strip()), seeds=_int_list(seeds),
                   layers=_int_list(layers), pool_groups=pool_groups, dev_groups=dev_groups,
                   test_limit=test_limit, param_grids=_json_option(grid, "--grid"),
                   strength_grids=_json_option(strengths, "--strengths"),
                   sweep_strengths=_json_option(sweep, "--sweep"))
    if protocol == "paper":
        ctx = click.get_current_context()
        given = {k: v for k, v in options.items()
                 if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT
                 or k in ("layers", "param_grids", "strength_grids", "sweep_strengths")}
        config = paper_config(**given)
    else:
        config = BenchConfig(**options)
    from sparekit.steering import REGISTRY

    for label in config.methods:
        if label.partition("+")[0] not in REGISTRY:
            raise click.BadParameter(f"unknown method {label!r}; known: {', '.join(sorted(REGISTRY))}", param_hint="--methods")
    lm = load_model(model, device=device, device_map=device_map)
    suffix = "-by-relation" if split_by == "relation" else ""
    out = Path(out or f"runs/bench-steer-{data.name}-{lm.info.model_hash[:8]}{suffix}")
    runner = SteeringBenchmark(lm, data, config, out, batch_size=batch_size) if split_by == "group" else None
    return lm, data, config, out, runner


def _options(fn):
    from sparekit.steering.benchmark import DEFAULT_METHODS

    for option in reversed([
        click.option("--dataset", "-d", default="default", show_default=True, help="default, default-passages, nqswap, or a JSONL path."),
        model_option,
        click.option("--methods", default=",".join(DEFAULT_METHODS), show_default=True,
                     help="Comma-separated methods; append +gate to steer only where the conflict probe fires."),
        click.option("--seeds", default="42,43,44", show_default=True, help="Seeds for the test demonstrations."),
        click.option("--layers", default="5,6,7,8", show_default=True, help="Candidate layers (SpARE edits all)."),
        click.option("--pool-groups", default=128, show_default=True, help="Feature-learning question groups."),
        click.option("--dev-groups", default=32, show_default=True, help="Question groups for tuning."),
        click.option("--test-limit", default=150, show_default=True, help="Test items (seeded sample)."),
        click.option("--grid", default=None,
                     help='Dev-tuned parameters per method as JSON, e.g. \'{"actadd": {"layer": [6, 8]}}\'.'),
        click.option("--strengths", default=None,
                     help='Strength grids per method as JSON, e.g. \'{"spare": [2, 4, 8]}\'.'),
        click.option("--sweep", default=None,
                     help='Extra strengths for `bench frontier` only (not tuned), e.g. \'{"actadd": [1]}\'.'),
        click.option("--out", type=click.Path(file_okay=False), default=None,
                     help="Run directory (default runs/bench-steer-<dataset>-<model>); rerun to resume."),
        device_option,
        device_map_option,
        click.option("--batch-size", default=8, show_default=True),
        click.option("--protocol", type=click.Choice(["sparekit", "paper"]), default="sparekit", show_default=True,
                     help="sparekit: memorised items, dev-tuned, demonstrations per item. paper: the official "
                          "SpARE code's protocol (all rows, every k for seeds 42-46, fixed test demonstrations, "
                          "the published K and alpha, no tuning); its sizes apply unless given here."),
        json_option,
    ]):
        fn = option(fn)
    return fn


@click.group()
def bench() -> None:
    """Benchmarks: steering methods side by side on a conflict dataset."""


@bench.command("steer")
@_options
@click.option("--split-by", type=click.Choice(["group", "relation"]), default="group", show_default=True,
              help="group: pool/dev/test question groups; relation: leave one relation out in turn (fit and tune "
                   "on the others, test on it), per held-out relation and the mean.")
def bench_steer(dataset, model, methods, seeds, layers, pool_groups, dev_groups, test_limit, grid, strengths, sweep,
                out, device, device_map, batch_size, protocol, as_json, split_by):
    """EM toward memory / context and EM without conflict for every method, mean ± std over seeds.

    \b
    Example:
      sparekit bench steer --dataset default --methods none,actadd,spare,spare+gate --seeds 42,43
      sparekit bench steer --split-by relation --methods none,cad,spare --test-limit 30
      sparekit bench steer --protocol paper --methods none,icl,cad,spare --layers 9,10,11,12
    """
    from sparekit.steering.benchmark import leave_one_relation_out, markdown_table, relation_table
    from sparekit.utils.io import atomic_write_text

    lm, data, config, out_dir, runner = _benchmark(model, dataset, methods, seeds, layers, pool_groups, dev_groups,
                                                   test_limit, out, device, device_map, batch_size, grid, strengths, sweep,
                                                   split_by, protocol)
    if runner is None:
        summary = leave_one_relation_out(lm, data, config, out_dir, batch_size)
        table = relation_table(summary)
    else:
        summary = runner.run()
        table = markdown_table(summary)
    atomic_write_text(out_dir / "results.md", table + "\n")
    summary["run_dir"] = str(out_dir)
    emit(summary, as_json, lambda r: f"{table}\n\nrun directory: {out_dir}")


@bench.command("frontier")
@_options
@click.option("--cached-only", is_flag=True, help="Generate nothing: draw the points earlier runs computed.")
def bench_frontier(dataset, model, methods, seeds, layers, pool_groups, dev_groups, test_limit, grid, strengths,
                   sweep, out, device, device_map, batch_size, protocol, as_json, cached_only):
    """Sweep each method's strength: EM toward the target vs EM without conflict, plotted per direction."""
    from sparekit.reporting.frontier import plot_frontier

    *_, out_dir, runner = _benchmark(model, dataset, methods, seeds, layers, pool_groups, dev_groups, test_limit, out,
                                     device, device_map, batch_size, grid, strengths, sweep, protocol=protocol)
    curves = runner.frontier(cached_only=cached_only)
    plot = plot_frontier(curves, out_dir / "frontier.png", title=f"{runner.lm.info.name} on {runner.dataset.name}")

    def render(r: dict) -> str:
        lines = []
        for label, by_direction in r["curves"].items():
            for toward, points in by_direction.items():
                pts = ", ".join(f"s={p['strength']}: {100 * p['em_target']:.0f}/{100 * p['em_no_conflict']:.0f}"
                                for p in points)
                lines.append(f"{label:>12} → {toward:<7} {pts}")
        return "\n".join(lines + [f"(EM toward target / EM without conflict, %)  plot: {r['plot']}"])

    emit({"curves": curves, "plot": str(plot), "run_dir": str(out_dir)}, as_json, render)
