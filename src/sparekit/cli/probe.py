"""``sparekit probe`` (fit per-layer conflict/source probes) and ``sparekit detect`` (apply them)."""

from __future__ import annotations

from pathlib import Path

import click

from sparekit.cli.common import device_map_option, device_option, emit, json_option, no_verify_option, \
    prompt_format_option
from sparekit.cli.config import config_options
from sparekit.data.formats import DEFAULT_FORMAT
from sparekit.errors import SparekitError
from sparekit.probes.experiment import ProbeExperiment

#: dev ranks probe+disagreement first, but it costs 3-6x the probe's time, needs a combination fitted for the
#: probe folder in use (the shipped probes carry one) and a context line in the prompt, so the probe stays the
#: default: BENCHMARKS.md, "Training-free detectors"
DEFAULT_DETECTOR = "probe"


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
@click.argument("prompt", required=False)
@click.option("--question", default=None, help="Build the prompt from a question …")
@click.option("--context", "contexts", multiple=True,
              help="… and a context, repeatable for several passages (in --prompt-format; three_shot prepends "
                   "the probe run's demonstrations).")
@prompt_format_option
@click.option("--probe", "probe_dir", type=click.Path(path_type=Path), default=None,
              help="A `sparekit probe` run directory or its probes/ folder "
                   "(default: the probes shipped for the default model).")
@click.option("--model", "-m", default=None, help="Model (default: the one the probes were fitted on).")
@click.option("--max-tokens", default=4096, show_default=True, type=click.IntRange(0),
              help="Refuse longer prompts (0: only the model's context length limits them).")
@click.option("--detector", default=DEFAULT_DETECTOR, show_default=True,
              help="probe, jsd (with/without-context divergence: +2 prompt passes), disagreement (closed-book "
                   "answer differs: +2 generations), probe+jsd or probe+disagreement (needs the probe folder's "
                   "detectors.json; the shipped probes have one). BENCHMARKS.md, training-free detectors, "
                   "compares them.")
@device_option
@device_map_option
@json_option
def detect(prompt, question, contexts, prompt_format, probe_dir, model, max_tokens, detector, device, device_map,
           as_json) -> None:
    """Conflict probability and predicted knowledge source of one prompt, before generating.

    \b
    PROMPT is used as is (few-shot blocks ending in `answer:`, like the probing prompts);
    or pass --question and --context to build it as `steer`, `demo` and the server do.
    """
    from sparekit.models import load_model
    from sparekit.probes.detect import check_prompt_text, detect_prompt, probes_model, resolve_probe_dir
    from sparekit.probes.detect import detect as detect_question
    from sparekit.probes.detect import prompt_builder

    if (prompt is None) == (question is None):
        raise SparekitError("pass either PROMPT or --question (with --context)")
    if question is not None and not question.strip():
        raise SparekitError("the question is empty")
    if prompt is not None:
        if contexts or prompt_format != DEFAULT_FORMAT:
            raise SparekitError("PROMPT is read as is: --context and --prompt-format go with --question")
        check_prompt_text(prompt)  # before loading the model
    folder = resolve_probe_dir(probe_dir)
    _check_detector(detector, prompt, bool(contexts), folder)
    lm = load_model(model or probes_model(folder), device=device,
                    device_map=device_map)
    if detector == "probe":
        result = detect_prompt(lm, prompt, folder, max_tokens) if prompt is not None else \
            detect_question(lm, question, contexts or None, folder, prompt_format, max_tokens)
        emit(result, as_json, _render_reading)
    elif prompt is not None:
        emit(_detect_with(lm, prompt, detector, folder, max_tokens), as_json, _render_detector)
    else:  # the closed-book twin from the same builder: any prompt format
        builder = prompt_builder(lm, folder, prompt_format)
        result = _detect_with(lm, builder(question, contexts), detector, folder, max_tokens,
                              builder.without_passages(question))
        emit({**result, "prompt_format": prompt_format}, as_json, _render_detector)


def _render_reading(r: dict) -> str:
    conflict = f"{r['conflict_probability']:.1%} ({'yes' if r['conflict'] else 'no'}, {r['sites']['conflict']})"
    text = f"probes: {r['probe_dir']}\nconflict: {conflict}"
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


def _check_detector(detector: str, text: str | None, has_context: bool, folder: Path) -> None:
    """An unknown --detector, or one this prompt or probe folder cannot serve, fails before the model loads."""
    from sparekit.probes.training_free import check_detector_inputs

    check_detector_inputs(detector, text, folder, has_context)


def _detect_with(lm, text: str, detector: str, folder: Path, max_tokens: int, closed: str | None = None) -> dict:
    from sparekit.probes.training_free import detect_with

    return detect_with(lm, text, detector, folder, max_tokens, closed)


def _render_detector(r: dict) -> str:
    lines = [f"detector: {r['detector']}",
             f"conflict: {r['conflict_probability']:.1%} ({'yes' if r['conflict'] else 'no'})"]
    if "jsd" in r:
        lines.append(f"with/without-context JSD: {r['jsd']:.3f}")
    if "disagreement" in r:
        lines.append(f"answer with the context: {r['answer']!r}, closed-book: {r['closed_book_answer']!r}")
    if "probe_conflict_probability" in r:
        lines.append(f"probe alone: {r['probe_conflict_probability']:.1%} ({r['sites']['conflict']}, {r['probe_dir']})")
    return "\n".join(lines) + _distribution_warning(r)
