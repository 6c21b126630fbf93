"""The demo's steps on the default model (``sparekit demo``, :mod:`sparekit.commands.demo`): the shipped
probes and fitted SpARE, one question's answers, and a small table measured live on held-out conflicts,
so one lucky example is never the whole story."""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from sparekit.data import load_dataset
from sparekit.data.dataset import ConflictExample
from sparekit.data.formats import PromptBuilder
from sparekit.evaluation.generation import greedy_generate
from sparekit.evaluation.metrics import behaviour_label, exact_match, uses_context
from sparekit.models import load_model
from sparekit.models.loading import LoadedModel
from sparekit.probes.detect import load_probes, prompt_builder, resolve_probe_dir
from sparekit.probes.reading import ProbeSet
from sparekit.steering.base import Gate, SteeringPrompt, make_method
from sparekit.steering.fitted import FittedBundle
from sparekit.steering.gate import ProbeGate, RecallGate

#: 3 items per relation from the test split of the run that tuned the shipped SpARE and fitted its gate
#: (BENCHMARKS.md, steering: 761 memorised items, pool 128 / dev 64 groups, split seed 0; the shipped
#: demonstrations are exactly that pool's draw): neither the method, its tuning nor the gate saw them.
HELD_OUT_ITEMS = ("capital-CF", "capital-CU", "capital-EG", "continent-GM", "continent-GQ", "continent-GR",
                  "currency-AF", "currency-BE", "currency-BH", "city_country-115019", "city_country-160263",
                  "city_country-170654")


def load_default(prompt_format: str, device: str | None, device_map: str | None
                 ) -> tuple[LoadedModel, ProbeSet, PromptBuilder]:
    """The default model, its shipped probes and the request-time prompt builder in ``prompt_format``."""
    lm = load_model("default", device=device, device_map=device_map)
    probes = load_probes(resolve_probe_dir(None, lm.info), lm.info.model_hash)
    return lm, probes, prompt_builder(lm, probes.folder, prompt_format)


def answers(lm: LoadedModel, builder: PromptBuilder, ex: ConflictExample) -> dict:
    """``ex`` answered closed-book, with its true context and with the conflicting one, in one batch."""
    closed, original, conflict = greedy_generate(lm, [builder(ex.question, c)
                                                      for c in (None, ex.org_context, ex.sub_context)])
    return {"closed_book": closed, "with_org_context": original, "with_sub_context": conflict,
            "conflict_behaviour": behaviour_label(conflict, ex)}


def held_out_items() -> list[ConflictExample]:
    """The rows of :data:`HELD_OUT_ITEMS` in the default dataset."""
    by_id = {ex.id: ex for ex in load_dataset("default")}
    return [by_id[i] for i in HELD_OUT_ITEMS]


def measured_table(lm: LoadedModel, bundle: FittedBundle, builder: PromptBuilder,
                   items: Sequence[ConflictExample] | None = None, progress: bool = False) -> dict:
    """EM toward each side on ``items`` (default :func:`held_out_items`), unsteered, steered with ``bundle``,
    and gated by its gate (``+gate``) and, where that is a probe, by the recall gate (``+recall``, which fits
    nothing), with where each gate fires; prompts from ``builder``, as every command builds them.

    Counts, not percentages: a dozen items show the direction of an effect, not its size
    (BENCHMARKS.md has the full tables; ``benchmarks/bundle_table.py`` runs this table on more items and
    bundles). ``progress``: a bar over its generations on stderr.
    """
    items = held_out_items() if items is None else list(items)
    fitted = {toward: bundle[toward] for toward in ("memory", "context")}
    gates: dict[str, Gate | None] = {"": None, "+gate": bundle.require_gate()}
    if not isinstance(gates["+gate"], RecallGate):
        gates["+recall"] = RecallGate()

    def prompts(context: str) -> list[SteeringPrompt]:
        return [SteeringPrompt(ex, context, tuple(builder.demos(ex.question)), builder.format) for ex in items]

    conflicts = prompts("sub")
    hits = {"memory": lambda a, ex: exact_match(a, ex.org_answer), "context": lambda a, ex: uses_context(a, ex)}
    n = len(items)
    bar = tqdm(total=1 + len(gates) * len(fitted), desc="measuring", unit="run", disable=not progress)
    with make_method("none").steer(lm, toward="memory", batch_size=n) as plain:
        unsteered = plain.generate(conflicts)
    bar.update()
    rows = {"unsteered": {t: sum(map(hits[t], unsteered, items)) for t in hits}}
    for suffix, gate in gates.items():
        rows[bundle.label + suffix] = {}
        for toward, f in fitted.items():
            with f.method.steer(lm, toward=toward, strength=f.strength, gate=gate, batch_size=n) as steered:
                rows[bundle.label + suffix][toward] = sum(map(hits[toward], steered.generate(conflicts), items))
            bar.update()
    bar.close()
    fired = {suffix: {"gate": describe_gate(gate),
                      "fired": {context: int(gate.decide(lm, prompts(context)).sum()) for context in ("sub", "org")}}
             for suffix, gate in gates.items() if gate is not None}
    return {"n": n, "items": [ex.id for ex in items], "em": rows, "gates": fired}


def describe_gate(gate: Gate) -> str:
    """What decides where ``gate`` fires, in a few words."""
    if isinstance(gate, ProbeGate):
        return f"the conflict probe at block {gate.site.layer}, fitted without these items"
    return f"the {gate.name} gate, fits nothing"
