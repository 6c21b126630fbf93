"""``sparekit detect``: the conflict probability and predicted knowledge source of one prompt, before
generating, read by the fitted probes (or a training-free detector)."""

from __future__ import annotations

from dataclasses import dataclass

from sparekit.data.formats import DEFAULT_FORMAT, prompt_format_field
from sparekit.data.prompts import check_prompt_text
from sparekit.errors import SparekitError
from sparekit.probes.detectors import detector_field, resolve_detector
from sparekit.utils.config import device_field, device_map_field, option

@dataclass(frozen=True)
class DetectCommand:
    """PROMPT read as is, or the prompt built from ``question`` and ``contexts`` as every command builds it."""

    prompt: str | None = option(None, argument=True, help="The prompt, read as is.")
    question: str | None = option(None, help="Build the prompt from a question …")
    contexts: tuple[str, ...] = option((), flag="--context", multiple=True, distinct=False,
                                       help="… and a context, repeatable for several passages (in --prompt-format; "
                                            "three_shot prepends the probe run's demonstrations).")
    prompt_format: str = prompt_format_field()
    probe: str | None = option(None, metavar="PATH",
                               help="A `sparekit probe` run directory or its probes/ folder (default: the probes "
                                    "shipped for the default model).")
    model: str | None = option(None, short="-m", help="Model (default: the one the probes were fitted on).")
    max_tokens: int = option(4096, min=0, help="Refuse longer prompts (0: only the model's context length limits "
                                               "them).")
    detector: str = detector_field()
    device: str | None = device_field()
    device_map: str | None = device_map_field()

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.question is None):
            raise SparekitError("pass either PROMPT or --question (with --context)")
        if self.question is not None and not self.question.strip():
            raise SparekitError("the question is empty")
        if self.prompt is not None:
            if self.contexts or self.prompt_format != DEFAULT_FORMAT:
                raise SparekitError("PROMPT is read as is: --context and --prompt-format go with --question")
            check_prompt_text(self.prompt)

    def run(self) -> dict:
        """The reading (``conflict_probability``, ``conflict``, ``predicted_source`` …, the probe folder and the
        sites; with ``--question`` also the ``prompt`` read); bad probes or detectors fail before the model loads."""
        # deliberately lazy: the probes' readers and the model stack import torch and transformers
        from sparekit.models import load_model
        from sparekit.probes.detect import detect, detect_prompt, probes_model, resolve_probe_dir  # lazy, as above
        from sparekit.probes.training_free import check_detector_inputs, detect_with, splits  # lazy, as above

        folder = resolve_probe_dir(self.probe)
        knows_context = bool(self.contexts) if self.prompt is None else splits(self.prompt)
        detector = resolve_detector(self.detector, knows_context)
        check_detector_inputs(detector, self.prompt, folder, bool(self.contexts))
        lm = load_model(self.model or probes_model(folder), device=self.device, device_map=self.device_map)
        if self.prompt is None:
            return detect(lm, self.question, self.contexts or None, folder, self.prompt_format,  # type: ignore[arg-type]
                          self.max_tokens, detector)
        if detector == "probe":
            return detect_prompt(lm, self.prompt, folder, self.max_tokens)
        return detect_with(lm, self.prompt, detector, folder, self.max_tokens)
