"""``sparekit steer``: one question, unsteered and steered, with the conflict probe's reading."""

from __future__ import annotations

from pathlib import Path

import click

from sparekit.cli.common import device_map_option, device_option, emit, finite, json_option, model_option, \
    prompt_format_option


def steer_question(lm, context: str, question: str, toward: str, method_label: str, fitted: Path | None,
                   strength: float | None, builder, gated: bool = False, probes=None) -> dict:
    """Unsteered and steered answers for one (context, question); shared by ``steer`` and ``demo``.

    The prompt comes from ``builder`` (a :class:`~sparekit.data.formats.PromptBuilder`: the
    request-time demonstrations in a prompt format), as every command builds it. ``gated``: steer
    only if the calibrated conflict gate fires.
    The gate and the ``probes`` (a :class:`~sparekit.probes.reading.ProbeSet`; its reading is
    ``detection``) read the unsteered generation's own prompt pass, so the whole costs two
    generations, or one when the gate does not fire.
    """
    from sparekit.data.dataset import ConflictExample
    from sparekit.evaluation.generation import greedy_generate
    from sparekit.hooks import Hooks
    from sparekit.probes.reading import capture_reading_sites, read_captures
    from sparekit.steering import SteeringPrompt
    from sparekit.steering.fitted import FittedBundle, shipped_root

    if fitted is None:
        fitted = shipped_root(method_label, lm.info)
    bundle = FittedBundle.load(fitted, lm.info.model_hash)
    loaded = bundle[toward]  # type: ignore[index]
    strength = loaded.strength if strength is None else strength
    example = ConflictExample(id="cli", question=question, org_context=context, org_answer=(), sub_context=context,
                              sub_answer=())
    prompt = SteeringPrompt(example, "sub", tuple(builder.demos(question)), builder.format)
    gate = bundle.require_gate() if gated else None
    hooks = capture_reading_sites(Hooks(lm), gate, probes)
    with hooks:
        unsteered = greedy_generate(lm, [prompt.text])[0]
    reading = read_captures(hooks, gate, probes)
    fired = None if gate is None else bool(reading.fired[0])
    answer = unsteered
    if fired is not False:  # the gate already read this prompt unsteered: steer without reading it again
        with loaded.method.steer(lm, toward=toward, strength=strength) as steered:  # type: ignore[arg-type]
            answer = steered.generate([prompt])[0]
    return {"method": method_label, "fitted": str(fitted), "toward": toward, "strength": strength,
            "unsteered": unsteered, "steered": answer, "gate_fired": fired,
            "prompt_format": builder.format.name, "prompt": prompt.text,
            "detection": None if reading.probes is None else reading.probes[0]}


@click.command()
@click.argument("context")
@click.argument("question")
@click.option("--toward", type=click.Choice(["memory", "context"]), required=True,
              help="memory: answer from what the model knows; context: answer from CONTEXT.")
@click.option("--method", "method_label", default="spare", show_default=True,
              help="A fitted method (spare, actadd, icl, …).")
@click.option("--fitted", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder from `sparekit bench steer` (<run>/fitted/<method>); default: the shipped one.")
@click.option("--strength", type=float, default=None, callback=finite, help="Override the dev-tuned strength.")
@click.option("--gate/--no-gate", default=False, show_default=True,
              help="Steer only if the method's calibrated conflict gate detects a conflict in this prompt.")
@click.option("--probe", "probe_dir", type=click.Path(path_type=Path), default=None,
              help="Conflict/source probes (default: the shipped ones for the default model).")
@prompt_format_option
@model_option
@device_option
@device_map_option
@json_option
def steer(context, question, toward, method_label, fitted, strength, gate, probe_dir, prompt_format, model, device,
          device_map, as_json) -> None:
    """Answer QUESTION given CONTEXT, unsteered and steered TOWARD memory or context.

    \b
    Example:
      sparekit steer "The capital of France is Lyon." "What is the capital of France?" --toward memory
    """
    from sparekit.models import load_model
    from sparekit.probes.detect import describe, probes_for, prompt_builder

    lm = load_model(model, device=device, device_map=device_map)
    probes = probes_for(lm, probe_dir)
    builder = prompt_builder(lm, None if probes is None else probes.folder, prompt_format)
    result = steer_question(lm, context, question, toward, method_label, fitted, strength, builder, gated=gate,
                            probes=probes)
    result["detection"] = None if probes is None else describe(result["detection"], probes)

    def render(r: dict) -> str:
        d = r["detection"]
        gate = {None: "", True: "   [gate fired]", False: "   [gate did not fire: left unsteered]"}[r["gate_fired"]]
        reading = ("no probes for this model: pass --probe <run>" if d is None else
                   f"conflict probability: {d['conflict_probability']:.2f}   "
                   f"predicted source: {d['predicted_source']}")
        return "\n".join([
            f"method: {r['fitted']}   probes: {d['probe_dir'] if d else 'none'}",
            reading,
            f"unsteered:              {r['unsteered']}",
            f"steered → {r['toward']:<8} ({r['method']}, strength {r['strength']}): {r['steered']}{gate}",
        ])

    emit(result, as_json, render)
