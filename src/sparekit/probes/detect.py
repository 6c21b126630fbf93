"""Read a prompt with fitted probes before generating: conflict probability and knowledge source.

Probe folders come from ``sparekit probe`` (``<run>/probes/{conflict,source}/`` plus
``detect.json`` with the demonstrations used to build prompts). A command reads the folder
the user names, else the probes shipped for the model (:mod:`sparekit.models.assets`), and
says which (``probe_dir`` in every result).
"""

from __future__ import annotations

from pathlib import Path

from sparekit.data.formats import (DEFAULT_FORMAT, Passages, PromptBuilder, PromptFormat, Shot, parse_shot, passages,
                                   prompt_format)
from sparekit.data.prompts import check_prompt_text
from sparekit.errors import SparekitError
from sparekit.models.architecture import ModelInfo
from sparekit.models.assets import assets_for, default_assets
from sparekit.models.limits import check_prompt_length
from sparekit.models.loading import LoadedModel
from sparekit.models.placement import input_device
from sparekit.probes.linear import LinearProbe
from sparekit.probes.detectors import DEFAULT_DETECTOR, resolve_detector
from sparekit.probes.reading import ProbeSet, read_prompts
from sparekit.utils.io import read_json_object

TARGETS = ("conflict", "source")
MAX_PROMPT_TOKENS = 4096  # far beyond the probing prompts (~300 tokens); longer ones take minutes on a CPU


def resolve_probe_dir(probe_dir: str | Path | None, model: ModelInfo | None = None) -> Path:
    """The folder holding ``detect.json`` and the per-target probe folders: ``probe_dir``, else the probes
    shipped for ``model`` (``None``: for the default model)."""
    if probe_dir is None:
        assets = default_assets() if model is None else assets_for(model)
        if assets is None or not (assets.probes / "detect.json").is_file():
            raise SparekitError(f"no probes shipped for {'the default model' if model is None else model.name}",
                                "run `sparekit probe` first and pass --probe <run>")
        return assets.probes
    probe_dir = Path(probe_dir)
    folder = probe_dir / "probes" if (probe_dir / "probes").is_dir() else probe_dir
    if not (folder / "detect.json").is_file():
        raise SparekitError(f"{probe_dir} holds no fitted probes", "run `sparekit probe` first")
    request_shots(folder)  # a damaged detect.json fails here, before any model loads
    return folder


def read_detect(folder: Path) -> dict:
    """``folder/detect.json`` (the probes' demonstrations and the model they were fitted on), checked."""
    path = folder / "detect.json"
    detect = read_json_object(path)
    demos = detect.get("demos")
    if not isinstance(detect.get("model", ""), str) or not isinstance(demos, list) \
            or not all(isinstance(d, str) for d in demos):
        raise SparekitError(f"{path} must hold the probes' 'demos' (a list of strings) and may name their 'model'",
                            "the folder is damaged; rerun `sparekit probe`")
    return detect


def probes_model(folder: Path) -> str:
    """The model the probes in ``folder`` were fitted on, as ``sparekit probe`` recorded it."""
    model = read_detect(folder).get("model")
    if model is None:
        raise SparekitError(f"{folder / 'detect.json'} does not name the probes' model", "pass --model")
    return model


def load_probes(folder: Path, model_hash: str) -> ProbeSet:
    """The conflict (required) and source (optional) probes in ``folder``, checked against the model."""
    probes = {t: LinearProbe.load(folder / t, model_hash=model_hash) for t in TARGETS if (folder / t).is_dir()}
    if "conflict" not in probes:
        raise SparekitError(f"{folder} has no conflict probe", "rerun `sparekit probe` with a larger --limit")
    return ProbeSet(probes, folder)


def probes_for(lm: LoadedModel, probe_dir: str | Path | None = None) -> ProbeSet | None:
    """The probes in ``probe_dir`` (its errors stand), else those shipped for the model, else ``None``."""
    try:
        return load_probes(resolve_probe_dir(probe_dir, lm.info), lm.info.model_hash)
    except SparekitError:
        if probe_dir is not None:
            raise
        return None


def check_prompt(lm: LoadedModel, text: str, max_tokens: int | None = MAX_PROMPT_TOKENS) -> int:
    """The prompt's token count; an empty prompt or one longer than the model's context or
    ``max_tokens`` (``None`` or 0: only the model's context) is a clear error."""
    check_prompt_text(text)
    n_tokens = len(lm.tokenizer(text)["input_ids"])
    check_prompt_length(lm.model, lm.info.name, input_device(lm), n_tokens)
    if max_tokens and n_tokens > max_tokens:
        raise SparekitError(f"the prompt has {n_tokens} tokens, over the limit of {max_tokens}",
                            "shorten it, or raise --max-tokens")
    return n_tokens


def detect_prompt(lm: LoadedModel, text: str, probe_dir: str | Path | None = None,
                  max_tokens: int | None = MAX_PROMPT_TOKENS) -> dict:
    """Conflict probability and predicted source for one prompt; one forward to the deepest probe layer."""
    check_prompt(lm, text, max_tokens)
    probes = load_probes(resolve_probe_dir(probe_dir, lm.info), lm.info.model_hash)
    return describe(read_prompts(lm, [text], probes=probes).probes[0], probes)


def describe(reading: dict, probes: ProbeSet) -> dict:
    """A reading with the sites it was read at and the probe folder (what ``sparekit detect`` reports)."""
    return {**reading, "sites": {t: str(s) for t, s in probes.sites.items()}, "probe_dir": str(probes.folder)}


def request_shots(folder: Path | None = None) -> tuple[Shot, ...]:
    """The demonstrations of every prompt built at request time (``detect --question``, ``steer``,
    ``demo``, ``/v1/answer``, :func:`detect`): those recorded with the probes in ``folder``, else those
    of the probes shipped for the default model.

    Why the probes' own: a conflict probability only means something on prompts like those its
    probe was fitted on, and ``detect.json`` records exactly those demonstrations (the shipped ones
    keep their published readings byte for byte). The steering methods were tuned on prompts whose
    demonstrations are drawn per item from the same kind of pool, so they need no set of their own,
    and the probes' demonstrations are text: they serve a model without probes too.
    """
    return tuple(parse_shot(d) for d in read_detect(default_assets().probes if folder is None else folder)["demos"])


def prompt_builder(lm: LoadedModel, folder: Path | None = None,
                   fmt: str | PromptFormat = DEFAULT_FORMAT) -> PromptBuilder:
    """The request-time :class:`~sparekit.data.formats.PromptBuilder` of ``lm`` in ``fmt``, with
    :func:`request_shots` from the probes in ``folder``."""
    return PromptBuilder(prompt_format(fmt, lm.tokenizer), request_shots(folder))


def detect(lm: LoadedModel, question: str, context: Passages = None, probe_dir: str | Path | None = None,
           prompt_format: str = DEFAULT_FORMAT, max_tokens: int | None = MAX_PROMPT_TOKENS,
           detector: str = DEFAULT_DETECTOR) -> dict:
    """The reading of ``question`` asked with ``context`` (one passage, several or none) in ``prompt_format``,
    the prompt built as every command builds it; the result also holds the ``prompt`` read. ``detector``: ``auto``
    (recall with a context, else the probe), the probe, or a training-free one
    (:mod:`sparekit.probes.training_free`; they need a context)."""
    if not question.strip():
        raise SparekitError("the question is empty")
    folder = resolve_probe_dir(probe_dir, lm.info)
    builder = prompt_builder(lm, folder, prompt_format)
    text = builder(question, context)
    detector = resolve_detector(detector, bool(passages(context)))
    if detector == "probe":
        reading = detect_prompt(lm, text, folder, max_tokens)
    else:
        # lazy: training_free imports this module
        from sparekit.probes.training_free import check_detector_inputs, detect_with

        check_detector_inputs(detector, None, folder, bool(passages(context)))
        reading = detect_with(lm, text, detector, folder, max_tokens, builder.without_passages(question), question)
    return {**reading, "prompt_format": prompt_format, "prompt": text}


def read_contexts(lm: LoadedModel, probes: ProbeSet, builder: PromptBuilder, question: str,
                  contexts: dict[str, Passages], detector: str = DEFAULT_DETECTOR) -> dict[str, dict]:
    """``detector``'s reading of ``question`` with each of ``contexts`` (label -> context), on the prompts ``builder``
    makes, as every command makes them (the demo's detection step): the probe's in one batched read, another
    detector's as ``sparekit detect --detector`` reads each prompt."""
    from sparekit.probes.training_free import describe_detection, detect_conflict  # lazy: it imports this module

    texts = {label: builder(question, context) for label, context in contexts.items()}
    chosen = {label: resolve_detector(detector, bool(passages(context))) for label, context in contexts.items()}
    by_probe = [label for label in contexts if chosen[label] == "probe"]
    readings = dict(zip(by_probe, read_prompts(lm, [texts[label] for label in by_probe], probes=probes).probes
                        if by_probe else []))
    closed = builder.without_passages(question)
    return {label: {**describe_detection(readings[label] if label in readings else
                                         detect_conflict(lm, texts[label], chosen[label], probes, closed, question),
                                         probes), "prompt": texts[label]} for label in contexts}
