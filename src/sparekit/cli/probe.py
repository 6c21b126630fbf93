"""``sparekit probe`` (fit per-layer conflict/source probes) and ``sparekit detect`` (apply them)."""

from __future__ import annotations

import click

from sparekit.cli.common import emit, json_option, no_verify_option
from sparekit.cli.config import config_options
from sparekit.commands.detect import DetectCommand
from sparekit.probes.experiment import ProbeExperiment


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
    for fold, by_target in result.get(f"held_out_{result['split_by']}s", {}).items():
        cells = [f"{t} " + ("n/a" if "error" in table else f"{max(table['accuracy']['mean']):.3f}")
                 for t, table in by_target.items()]
        lines.append(f"held out {fold}: best-layer accuracy " + ", ".join(cells))
    lines.append(f"run dir: {result['run_dir']}")
    return "\n".join(lines)


@click.command()
@config_options(ProbeExperiment)
@no_verify_option
@json_option
def probe(config: ProbeExperiment, as_json: bool) -> None:
    """Fit linear probes per layer: conflict vs no conflict, and context vs memory under conflict.

    \b
    Reports held-out-group accuracy, AUROC and AUPRC (mean ± std over seeds) per layer,
    saves plots and the best-layer probes (used by `sparekit detect`) in the run directory.
    With --split-by relation (or kind) the tables are the mean over held-out relations (kinds),
    with the std across them and the worst fold, and `held_out_relations` (`held_out_kinds`)
    holds each fold's table.
    Example:
      sparekit probe --dataset nqswap --limit 600 --seeds 0,1,2 --json
    """
    result = config.run(progress=not as_json)
    emit(result, as_json, _render_table)


@click.command()
@config_options(DetectCommand)
@json_option
def detect(config: DetectCommand, as_json: bool) -> None:
    """Conflict probability and predicted knowledge source of one prompt, before generating.

    \b
    PROMPT is used as is (few-shot blocks ending in `answer:`, like the probing prompts);
    or pass --question and --context to build it as `steer`, `demo` and the server do.
    """
    emit(config.run(), as_json, _render_detection)


def _render_detection(r: dict) -> str:
    """The probe's reading, or another detector's (``auto`` says which one read the prompt)."""
    return (_render_reading if r["detector"] == "probe" else _render_detector)(r)


def _render_reading(r: dict) -> str:
    conflict = f"{r['conflict_probability']:.1%} ({'yes' if r['conflict'] else 'no'}, {r['sites']['conflict']})"
    text = f"detector: probe\nprobes: {r['probe_dir']}\nconflict: {conflict}"
    if r["predicted_source"] is None:
        text += "\npredicted source: no source probe in this run"
    else:
        text += (f"\npredicted source: {r['predicted_source']} (p(context) = {r['context_probability']:.1%}, "
                 f"{r['sites']['source']})")
    return text + _distribution_warning(r)


def _distribution_warning(r: dict) -> str:
    """One warning line when the prompt is far from everything the probe was fitted on (else nothing)."""
    if r.get("in_distribution") is not False:
        return ""
    return (f"\nwarning: this prompt is far from the prompts the probe was fitted on (distance {r['distance']:.2f}, "
            "above its training rows' 99th percentile): the reading may mean nothing")


def _render_detector(r: dict) -> str:
    lines = [f"detector: {r['detector']}",
             f"conflict: {r['conflict_probability']:.1%} ({'yes' if r['conflict'] else 'no'})"]
    if "jsd" in r:
        lines.append(f"with/without-context JSD: {r['jsd']:.3f}")
    if "disagreement" in r:
        lines.append(f"answer with the context: {r['answer']!r}, closed-book: {r['closed_book_answer']!r}")
    if "unrecalled" in r:
        named = "names neither" if r["unrecalled"] else "names one (or one repeats the question)"
        answers = " / ".join(map(repr, r["closed_book_answers"]))
        lines.append(f"closed-book answers: {answers} "
                     f"(first token {r['closed_book_confidence']:.0%}); the context {named}")
        lines.append(f"predicted source (training-free): {r['recall_source']} (the prompt's likeliest next token "
                     f"{'starts' if r['recall_source'] == 'memory' else 'does not start'} the closed-book answer)")
    if "probe_conflict_probability" in r:
        lines.append(f"probe alone: {r['probe_conflict_probability']:.1%} ({r['sites']['conflict']}, {r['probe_dir']})")
    return "\n".join(lines) + _distribution_warning(r)
