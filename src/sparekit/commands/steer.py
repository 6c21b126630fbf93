"""``sparekit steer``: one question, unsteered and steered, with the conflict probe's reading."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sparekit.data.formats import prompt_format_field
from sparekit.errors import SparekitError
from sparekit.probes.detectors import GATE_BY, detector_field, needs_probes, resolve_detector
from sparekit.utils.config import device_field, device_map_field, finite_number, model_field, option

#: the two directions a fitted bundle holds (``steering.base.DIRECTIONS``, which imports torch)
TOWARD = ("memory", "context")


@dataclass(frozen=True)
class SteerCommand:
    """Answer QUESTION given CONTEXT, unsteered and steered TOWARD memory or context."""

    context: str = option(argument=True, help="The passage the question is asked with.")
    question: str = option(argument=True, help="The question.")
    toward: str = option(choices=TOWARD, help="memory: answer from what the model knows; context: answer from "
                                              "CONTEXT.")
    method: str = option("spare", help="A fitted method (spare, actadd, icl, …).")
    fitted: str | None = option(None, metavar="DIRECTORY", help="Folder from `sparekit bench steer` (<run>/fitted/<method>); default: "
                                           "the shipped one.")
    strength: float | None = option(None, help="Override the dev-tuned strength.")
    gate: bool = option(False, flag="--gate/--no-gate",
                        help="Steer only if the method's calibrated conflict gate detects a conflict in this prompt.")
    gate_by: str | None = option(None, choices=GATE_BY,
                                 help="Steer only if this gate, which fits nothing, fires instead (implies --gate): "
                                      "recall fires where CONTEXT does not name the model's closed-book answer "
                                      "(one extra closed-book generation).")
    probe: str | None = option(None, metavar="PATH", help="Conflict/source probes (default: the shipped ones for the default model).")
    detector: str = detector_field()
    prompt_format: str = prompt_format_field()
    model: str = model_field()
    device: str | None = device_field()
    device_map: str | None = device_map_field()

    def __post_init__(self) -> None:
        if self.toward not in TOWARD:
            raise SparekitError(f"--toward must be one of {', '.join(TOWARD)}, got {self.toward!r}")
        if self.strength is not None:
            finite_number(self.strength, "--strength")
        if not self.question.strip():
            raise SparekitError("the question is empty")

    def run(self) -> dict:
        """Both answers, the gate's decision and ``--detector``'s reading (``detection``; ``None`` for the probe
        without probes)."""
        # deliberately lazy: the model stack (torch, transformers) loads when the work starts, not for --help
        from sparekit.models import load_model
        from sparekit.probes.detect import probes_for, prompt_builder, resolve_probe_dir  # lazy, as above
        from sparekit.probes.training_free import check_detector_inputs, describe_detection  # lazy, as above
        from sparekit.steering.question import steer_question  # lazy, as above

        detector = resolve_detector(self.detector, True)  # CONTEXT and QUESTION are given apart
        if self.probe is not None:  # a bad folder or a missing combination fails before the model loads
            check_detector_inputs(detector, None, resolve_probe_dir(self.probe))
        lm = load_model(self.model, device=self.device, device_map=self.device_map)
        probes = probes_for(lm, self.probe)
        if needs_probes(detector) and detector != "probe":
            if probes is None:
                raise SparekitError(f"the {detector} detector needs probes, and none are shipped for "
                                    f"{lm.info.name}", "pass --probe <run>, or use --detector recall, jsd or "
                                    "disagreement")
            if self.probe is None:  # the shipped probes' combination (a --probe folder's was checked above)
                check_detector_inputs(detector, None, probes.folder)
        builder = prompt_builder(lm, None if probes is None else probes.folder, self.prompt_format)
        result = steer_question(lm, self.context, self.question, self.toward, self.method,  # type: ignore[arg-type]
                                None if self.fitted is None else Path(self.fitted), self.strength, builder,
                                gated=self.gate, probes=probes, gate_by=self.gate_by, detector=detector)
        if result["detection"] is not None:
            result["detection"] = describe_detection(result["detection"], probes)
        return result
