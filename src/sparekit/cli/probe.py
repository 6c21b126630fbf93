"""``sparekit probe`` (fit per-layer conflict/source probes) and ``sparekit detect`` (apply them)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click

from sparekit.cli.common import device_map_option, device_option, emit, json_option, model_option
from sparekit.errors import SparekitError

PROMPT_SEED = 42


def _render_table(result: dict) -> str:
    lines = [f"{result['model']} on {result['dataset']}: {result['n_items']} memorised items, "
             f"source labels {result['counts']}"]
    blocks = [("", result)] + ([("eval ", result["eval"])] if "eval" in result else [])
    for prefix, block in blocks:
        for target in ("conflict", "source"):
            table = block[target]
            if "error" in table:
                lines.append(f"{prefix}{target}: not fitted: {table['error']}")
                continue
            majority = table["majority_accuracy"]["mean"][0]
            lines.append(f"{prefix}{target}: best layer {table['best_layer']} "
                         f"(always answering the majority class scores {majority:.3f})")
            lines.append("  layer  accuracy        AUROC           AUPRC")
            for i, layer in enumerate(result["layers"]):
                cells = [f"{table[m]['mean'][i]:.3f}±{table[m]['std'][i]:.3f}" for m in ("accuracy", "auroc", "auprc")]
                lines.append(f"  {layer:5d}  " + "   ".join(cells))
    for relation, by_target in result.get("held_out_relations", {}).items():
        cells = [f"{t} " + ("n/a" if "error" in table else f"{max(table['accuracy']['mean']):.3f}")
                 for t, table in by_target.items()]
        lines.append(f"held out {relation}: best-layer accuracy " + ", ".join(cells))
    lines.append(f"run dir: {result['run_dir']}")
    return "\n".join(lines)


@click.command()
@click.option("--dataset", default="default", show_default=True, help="default, default-passages, nqswap or a .jsonl(.gz) path.")
@click.option("--eval-dataset", default=None, help="Also score probes fitted on --dataset on this dataset.")
@model_option
@click.option("--layers", default="all", show_default=True, help="all, 6, 4,8,12 or 4-8.")
@click.option("--components", default="resid", show_default=True, help="resid, attn, mlp (comma-separated).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Seeded sample of N rows (whole question groups).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated split/probe seeds.")
@click.option("--split-by", type=click.Choice(["group", "relation"]), default="group", show_default=True,
              help="group: held-out question groups; relation: leave one relation out (fit on the others), "
                   "per held-out relation and their mean.")
@click.option("--k-shot", default=3, show_default=True, type=click.IntRange(0, 16))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run directory (default: under the cache, keyed by the configuration; reruns resume).")
@device_option
@device_map_option
@json_option
def probe(dataset, eval_dataset, model, layers, components, limit, seeds, split_by, k_shot, batch_size, out, device,
          device_map, as_json) -> None:
    """Fit linear probes per layer: conflict vs no conflict, and context vs memory under conflict.

    \b
    Reports held-out-group accuracy, AUROC and AUPRC (mean ± std over seeds) per layer,
    saves plots and the best-layer probes (used by `sparekit detect`) in the run directory.
    With --split-by relation the tables are the mean over held-out relations (std across
    relations) and `held_out_relations` holds each relation's table.
    Example:
      sparekit probe --dataset nqswap --limit 600 --seeds 0,1,2 --json
    """
    import random

    from sparekit import __version__
    from sparekit.cli.capture import parse_components, parse_layers
    from sparekit.data import load_dataset
    from sparekit.data.dataset import held_out_relations
    from sparekit.data.prompts import sample_demos
    from sparekit.evaluation.harness import dataset_fingerprint
    from sparekit.hooks import Site
    from sparekit.models import load_model
    from sparekit.models.loading import CACHE_DIR
    from sparekit.probes import (collect, compare_behaviours, cross_validate, fit_probe, layer_table,
                                 leave_one_relation_out, transfer)
    from sparekit.probes.plots import plot_components, plot_layer_metrics
    from sparekit.utils.env import environment_info, seed_everything
    from sparekit.utils.io import atomic_write_json, read_json

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise SparekitError(f"cannot parse --seeds {seeds!r}", "write e.g. 0,1,2") from None
    if not seed_list:
        raise SparekitError("--seeds is empty")
    comps = parse_components(components)
    data_a = load_dataset(dataset, limit=limit, seed=PROMPT_SEED)
    if split_by == "relation":
        held_out_relations(data_a)  # bad input fails before the model loads
    data_b = load_dataset(eval_dataset, limit=limit, seed=PROMPT_SEED) if eval_dataset else None
    lm = load_model(model, device=device, device_map=device_map)
    layer_list = parse_layers(layers, lm.info.n_layers)
    sites = {c: [Site(layer, c) for layer in layer_list] for c in comps}
    all_sites = [s for group in sites.values() for s in group]
    config = {"kind": "probe_run", "sparekit_version": __version__, "model": model, "model_hash": lm.info.model_hash,
              "dataset": dataset, "dataset_sha256": dataset_fingerprint(data_a), "limit": limit,
              "eval_dataset": eval_dataset, "eval_dataset_sha256": data_b and dataset_fingerprint(data_b),
              "layers": layer_list, "components": comps, "seeds": seed_list, "k_shot": k_shot,
              "prompt_seed": PROMPT_SEED, "split_by": split_by, "test_fraction": 0.3, "probe": {"l1": 6e-4, "lr": 2e-3, "epochs": 20,
                                                                          "batch_size": 64, "standardize": True}}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    run_dir = out or CACHE_DIR / "probes" / f"{Path(model).name}-{Path(dataset).name}-{digest}"
    if (run_dir / "config.json").is_file() and read_json(run_dir / "config.json") != config:
        raise SparekitError(f"{run_dir} holds a probe run with a different configuration",
                            "choose another --out or delete it")
    atomic_write_json(run_dir / "config.json", config)
    atomic_write_json(run_dir / "environment.json", environment_info())
    seed_everything(seed_list[0])

    progress = not as_json
    train = collect(lm, data_a, all_sites, run_dir / "data-train", k_shot=k_shot, prompt_seed=PROMPT_SEED,
                    batch_size=batch_size, progress=progress)
    test = data_b and collect(lm, data_b, all_sites, run_dir / "data-eval", k_shot=k_shot, prompt_seed=PROMPT_SEED,
                              batch_size=batch_size, progress=progress)

    def tables(score) -> dict:
        """Per component and target, the layer table; a target without enough data gets an ``error``."""
        out: dict = {}
        for c in comps:
            for t in ("conflict", "source"):
                try:
                    out.setdefault(c, {})[t] = layer_table({s: score(t, s) for s in sites[c]}, sites[c])
                except SparekitError as exc:
                    out.setdefault(c, {})[t] = {"error": str(exc)}
        return out

    main = comps[0]
    if split_by == "relation":
        cache: dict = {}

        def held_out(t: str, s: Site) -> dict:
            if (t, s) not in cache:
                cache[t, s] = leave_one_relation_out(train, t, s, seed_list, config["probe"])
            return cache[t, s]

        by_component = tables(lambda t, s: held_out(t, s)["mean"])
        per_relation = {r: tables(lambda t, s: held_out(t, s)[r])[main] for r in held_out_relations(train.items)}
    else:
        by_component = tables(lambda t, s: cross_validate(train, t, s, seed_list, config["test_fraction"]))
    result = {"model": lm.info.name, "model_hash": lm.info.model_hash, "dataset": data_a.name,
              "n_items": len(train.items), "counts": train.counts(), "layers": layer_list, "component": main,
              "split_by": split_by, **by_component[main]}
    if split_by == "relation":
        result["held_out_relations"] = per_relation
    if len(comps) > 1:
        result["components"] = by_component
    if test:
        result["eval"] = {"dataset": data_b.name, "n_items": len(test.items), "counts": test.counts(),
                          **tables(lambda t, s: transfer(train, test, t, s, seed_list))[main]}
    if "resid" in sites and "error" not in result["source"]:
        labels = [int(b == "context") for b in train.behaviour if b in ("context", "memory")]
        per_layer = [compare_behaviours(train.target("source", s)[0], labels) for s in sites["resid"]]
        result["stats"] = {name: {k: [row[name][k] for row in per_layer] for k in per_layer[0][name]}
                           for name in per_layer[0]}
    probes_dir = run_dir / "probes"
    for target in (t for t in ("conflict", "source") if "error" not in result[t]):
        site = Site(result[target]["best_layer"], main)
        fit_probe(train, target, site, seed_list[0], lm.info.model_hash, config["probe"]).save(probes_dir / target)
    demos = sample_demos(data_a, "", k_shot, "org_org", random.Random(f"{PROMPT_SEED}:detect"))
    atomic_write_json(probes_dir / "detect.json", {"model": model, "model_hash": lm.info.model_hash, "demos": demos})
    plot = plot_layer_metrics(result, run_dir / "probe_metrics.png",
                              f"{lm.info.name}: linear probes on the {main} stream, {data_a.name} "
                              f"({len(train.items)} memorised items, {len(seed_list)} seeds)")
    result.update(run_dir=str(run_dir), plot=str(plot), probes=str(probes_dir))
    if len(comps) > 1:
        result["components_plot"] = str(plot_components(
            result, run_dir / "probe_components.png",
            f"{lm.info.name}: probe accuracy by component, {data_a.name} ({len(train.items)} memorised items)"))
    atomic_write_json(run_dir / "results.json", result)
    emit(result, as_json, _render_table)


@click.command()
@click.argument("prompt", required=False)
@click.option("--question", default=None, help="Build the prompt from a question …")
@click.option("--context", default=None, help="… and a context (the probe run's demonstrations are prepended).")
@click.option("--probe", "probe_dir", type=click.Path(path_type=Path), default=None,
              help="A `sparekit probe` run directory or its probes/ folder "
                   "(default: the probes shipped for the default model).")
@click.option("--model", "-m", default=None, help="Model (default: the one the probes were fitted on).")
@click.option("--max-tokens", default=4096, show_default=True, type=click.IntRange(0),
              help="Refuse longer prompts (0: only the model's context length limits them).")
@device_option
@device_map_option
@json_option
def detect(prompt, question, context, probe_dir, model, max_tokens, device, device_map, as_json) -> None:
    """Conflict probability and predicted knowledge source of one prompt, before generating.

    \b
    PROMPT is used as is (few-shot blocks ending in `answer:`, like the probing prompts);
    or pass --question and --context to format it with the probe run's demonstrations.
    """
    from sparekit.data.prompts import format_block
    from sparekit.models import load_model
    from sparekit.probes.detect import check_prompt_text, detect_prompt, detection_demos, resolve_probe_dir
    from sparekit.utils.io import read_json

    if (prompt is None) == (question is None):
        raise SparekitError("pass either PROMPT or --question (with --context)")
    if question is not None and not question.strip():
        raise SparekitError("the question is empty")
    if prompt is not None:
        check_prompt_text(prompt)  # before loading the model
    folder = resolve_probe_dir(probe_dir)
    lm = load_model(model or read_json(folder / "detect.json")["model"], device=device,
                    device_map=device_map)
    text = prompt if prompt is not None else "".join(detection_demos(folder)) + format_block(question, context)
    result = detect_prompt(lm, text, folder, max_tokens=max_tokens)

    def render(r: dict) -> str:
        conflict = f"{r['conflict_probability']:.1%} ({'yes' if r['conflict'] else 'no'}, {r['sites']['conflict']})"
        text = f"probes: {r['probe_dir']}\nconflict: {conflict}"
        if r["source"] is None:
            return text + "\npredicted source: no source probe in this run"
        return text + (f"\npredicted source: {r['source']} (p(context) = {r['context_probability']:.1%}, "
                       f"{r['sites']['source']})")

    emit(result, as_json, render)
