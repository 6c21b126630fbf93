"""``sparekit steer``: one question, unsteered and steered, with the conflict probe's reading."""

from __future__ import annotations

from pathlib import Path

import click

from sparekit.cli.common import device_map_option, device_option, emit, json_option, model_option


def steer_question(lm, context: str, question: str, toward: str, method_label: str, fitted: Path | None,
                   strength: float | None, demos: tuple[str, ...] | None = None, k_shot: int = 3,
                   gated: bool = False) -> dict:
    """Unsteered and steered answers for one (context, question); shared by ``steer`` and ``demo``.

    Without ``demos``, the fitted method's stored demonstrations are used, skipping any
    that asks the same question. ``gated``: steer only if the calibrated conflict gate fires.
    """
    from sparekit.data.dataset import ConflictExample
    from sparekit.data.prompts import demos_for
    from sparekit.steering import SteeringPrompt, make_method
    from sparekit.steering.fitted import load_fitted, load_gate, shipped_root

    if fitted is None:
        fitted = shipped_root(method_label, lm.info)
    loaded = load_fitted(fitted, toward, lm.info)  # type: ignore[arg-type]
    strength = loaded.strength if strength is None else strength
    example = ConflictExample(id="cli", question=question, org_context=context, org_answer=(), sub_context=context,
                              sub_answer=())
    if demos is None:
        demos = tuple(demos_for(question, loaded.demos, k_shot))
    prompt = SteeringPrompt(example, "sub", demos)
    with make_method("none").steer(lm, toward=toward) as plain:
        unsteered = plain.generate([prompt])[0]
    gate = load_gate(fitted, lm.info) if gated else None
    with loaded.method.steer(lm, toward=toward, strength=strength, gate=gate) as steered:  # type: ignore[arg-type]
        answer = steered.generate([prompt])[0]
        fired = None if gate is None else bool(steered.last_fired[0])
    return {"method": method_label, "fitted": str(fitted), "toward": toward, "strength": strength,
            "unsteered": unsteered, "steered": answer, "gate_fired": fired, "prompt": prompt.text}


@click.command()
@click.argument("context")
@click.argument("question")
@click.option("--toward", type=click.Choice(["memory", "context"]), required=True,
              help="memory: answer from what the model knows; context: answer from CONTEXT.")
@click.option("--method", "method_label", default="spare", show_default=True,
              help="A fitted method (spare, actadd, icl, …).")
@click.option("--fitted", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder from `sparekit bench steer` (<run>/fitted/<method>); default: the shipped one.")
@click.option("--strength", type=float, default=None, help="Override the dev-tuned strength.")
@click.option("--gate/--no-gate", default=False, show_default=True,
              help="Steer only if the method's calibrated conflict gate detects a conflict in this prompt.")
@click.option("--probe", "probe_dir", type=click.Path(path_type=Path), default=None,
              help="Conflict/source probes (default: the shipped ones for the default model).")
@model_option
@device_option
@device_map_option
@json_option
def steer(context, question, toward, method_label, fitted, strength, gate, probe_dir, model, device, device_map,
          as_json) -> None:
    """Answer QUESTION given CONTEXT, unsteered and steered TOWARD memory or context.

    \b
    Example:
      sparekit steer "The capital of France is Lyon." "What is the capital of France?" --toward memory
    """
    from sparekit.models import load_model
    from sparekit.probes.detect import detect_prompt

    lm = load_model(model, device=device, device_map=device_map)
    result = steer_question(lm, context, question, toward, method_label, fitted, strength, gated=gate)
    result["detection"] = detect_prompt(lm, result["prompt"], probe_dir)

    def render(r: dict) -> str:
        d = r["detection"]
        gate = {None: "", True: "   [gate fired]", False: "   [gate did not fire: left unsteered]"}[r["gate_fired"]]
        return "\n".join([
            f"method: {r['fitted']}   probes: {d['probe_dir']}",
            f"conflict probability: {d['conflict_probability']:.2f}   predicted source: {d['source']}",
            f"unsteered:              {r['unsteered']}",
            f"steered → {r['toward']:<8} ({r['method']}, strength {r['strength']}): {r['steered']}{gate}",
        ])

    emit(result, as_json, render)
