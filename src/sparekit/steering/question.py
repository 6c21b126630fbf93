"""One question answered unsteered and steered by a fitted bundle: the work of ``sparekit steer`` and of
the demo's steering step (:mod:`sparekit.commands`)."""

from __future__ import annotations

from pathlib import Path

from sparekit.data.dataset import ConflictExample
from sparekit.data.formats import PromptBuilder
from sparekit.evaluation.generation import greedy_generate
from sparekit.hooks import Hooks
from sparekit.models.loading import LoadedModel
from sparekit.probes.reading import ProbeSet, capture_reading_sites, read_captures
from sparekit.probes.detectors import DEFAULT_DETECTOR, needs_probes, resolve_detector
from sparekit.probes.training_free import detect_conflict
from sparekit.steering.base import Direction, SteeringPrompt
from sparekit.steering.fitted import FittedBundle, shipped_root
from sparekit.steering.gate import ProbeGate, training_free_gate


def steer_question(lm: LoadedModel, context: str, question: str, toward: Direction, method_label: str,
                   fitted: Path | None, strength: float | None, builder: PromptBuilder, gated: bool = False,
                   probes: ProbeSet | None = None, gate_by: str | None = None,
                   detector: str = DEFAULT_DETECTOR) -> dict:
    """Unsteered and steered answers for one (context, question); shared by ``steer`` and ``demo``.

    The prompt comes from ``builder`` (the request-time demonstrations in a prompt format), as every
    command builds it. ``gated``: steer only if the bundle's gate (its calibrated conflict gate) fires;
    ``gate_by``: steer only if the gate that fits nothing of that name fires (``"recall"``).
    A conflict gate and the ``probes`` read the unsteered generation's own prompt pass, so the whole costs two
    generations, or one when the gate does not fire; the recall gate adds one closed-book generation.
    ``detection`` is ``detector``'s reading of the prompt (``auto``: recall;
    :func:`~sparekit.probes.training_free.detect_conflict`, what ``sparekit detect`` reports for it; ``None`` for the
    probe without probes); recall's closed-book answers are asked once for the gate and the reading.
    """
    detector = resolve_detector(detector, True)
    if fitted is None:
        fitted = shipped_root(method_label, lm.info)
    bundle = FittedBundle.load(fitted, lm.info.model_hash)
    loaded = bundle[toward]
    strength = loaded.strength if strength is None else strength
    example = ConflictExample(id="cli", question=question, org_context=context, org_answer=(), sub_context=context,
                              sub_answer=())
    prompt = SteeringPrompt(example, "sub", tuple(builder.demos(question)), builder.format)
    gate = training_free_gate(gate_by) if gate_by else bundle.require_gate() if gated else None
    site_gate = gate if isinstance(gate, ProbeGate) else None  # read off the unsteered answer's prompt pass
    probes = probes if needs_probes(detector) else None
    hooks = capture_reading_sites(Hooks(lm), site_gate, probes)
    with hooks:
        unsteered = greedy_generate(lm, [prompt.text])[0]
    reading = read_captures(hooks, site_gate, probes)
    fired = None if gate is None else bool((gate.decide(lm, [prompt]) if site_gate is None else reading.fired)[0])
    answer = unsteered
    if fired is not False:  # the gate already read this prompt unsteered: steer without reading it again
        with loaded.method.steer(lm, toward=toward, strength=strength) as steered:  # type: ignore[arg-type]
            answer = steered.generate([prompt])[0]
    detection = None if reading.probes is None else reading.probes[0]
    if detector != "probe":
        detection = detect_conflict(lm, prompt.text, detector, probes, prompt.text_without_context, question, detection)
    return {"method": method_label, "fitted": str(fitted), "toward": toward, "strength": strength,
            "unsteered": unsteered, "steered": answer, "gate_fired": fired,
            "gate": None if gate is None else gate.name or "probe",
            "prompt_format": builder.format.name, "prompt": prompt.text,
            "detection": detection}
