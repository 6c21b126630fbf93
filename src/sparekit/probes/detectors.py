"""The conflict detectors by name, the default every surface reads a prompt with, and the ``--detector`` option.

Free of torch on purpose: commands check the name before a model loads, and the server's option parser
(:mod:`sparekit.serve.options`) runs where torch may not be sparekit's. What each detector runs is in
:mod:`sparekit.probes.training_free`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparekit.errors import SparekitError
from sparekit.utils.config import option
from sparekit.utils.io import read_json_object
from sparekit.utils.registry import unknown_name

DETECTORS = ("auto", "probe", "jsd", "disagreement", "recall", "probe+jsd", "probe+disagreement", "probe+recall")
#: the detector of ``detect``, ``steer``, ``demo``, :func:`sparekit.detect` and the server's ``"detect": true``,
#: one name for all so that one prompt gets one reading everywhere (issue 29): ``auto``, which is ``recall`` where
#: the prompt's question and context are known (every prompt sparekit builds with a context; a prompt given as text
#: in ``three_shot`` blocks) and the probe elsewhere (:func:`resolve_detector`). Why recall first: dev ranks it first,
#: and it transfers where the probe does not (held-out relations 0.96 accuracy / 0.98 AUROC against the probe's
#: 0.60 / 0.72; BENCHMARKS.md, "The recall detector"), for one short closed-book generation more.
DEFAULT_DETECTOR = "auto"
#: the detectors that also gate steering, fitting nothing (``sparekit steer --gate-by``, the server's ``"gate":
#: "recall"``; :data:`sparekit.steering.gate.TRAINING_FREE_GATES`, which imports torch, runs them)
GATE_BY = ("recall",)
#: the probe+signal combinations fitted beside a probe folder (``benchmarks/bench_detectors.py --save-combinations``)
COMBINATIONS_FILE = "detectors.json"
DETECTOR_HELP = ("auto (recall where the question and context are known, else probe), probe, jsd (with/without-"
                 "context divergence: +2 prompt passes), disagreement (closed-book answer differs: +2 generations), "
                 "recall (does the context name the model's closed-book answer: +1 short generation), probe+jsd, "
                 "probe+disagreement or probe+recall (need the probe folder's detectors.json). BENCHMARKS.md, "
                 "\"The recall detector\", compares them.")


def check_detector(name: str) -> str:
    """``name`` if it is a detector, else a one-line error listing them (checked before any model loads)."""
    if name not in DETECTORS:
        raise unknown_name("detector", name, DETECTORS)
    return name


def resolve_detector(name: str, knows_context: bool) -> str:
    """The detector that reads a prompt: ``name``, or for ``auto`` recall where the prompt's question and context
    are known (``knows_context``) and the probe elsewhere."""
    if name != "auto":
        return name
    return "recall" if knows_context else "probe"


def needs_probes(name: str) -> bool:
    """Whether the detector reads the fitted probes (``probe`` and its combinations)."""
    return name == "probe" or name.startswith("probe+")


def detector_field() -> Any:
    """``--detector``: how a command reads a prompt's conflict (the same default on every command)."""
    return option(DEFAULT_DETECTOR, choices=DETECTORS, help=DETECTOR_HELP)


def saved_combinations(folder: Path) -> dict:
    """The ``probe+signal`` combinations saved beside the probes in ``folder``, by signal (none: ``{}``)."""
    path = folder / COMBINATIONS_FILE
    found = read_json_object(path).get("combinations", {}) if path.is_file() else {}
    return found if isinstance(found, dict) else {}


def combination_entry(folder: Path, signal: str) -> dict:
    """The ``probe+signal`` combination's saved ``coef`` and ``intercept`` in ``folder``; one line naming the fix
    where there is none (read before any model loads)."""
    found = saved_combinations(folder)
    entry = found.get(signal)
    if not isinstance(entry, dict) or len(entry.get("coef", ())) != 2:
        fitted = [f"probe+{name}" for name in sorted(found)]
        raise SparekitError(f"{folder} has no fitted probe+{signal} combination ({COMBINATIONS_FILE})",
                            f"use --detector {', '.join(['probe', *fitted, 'jsd', 'disagreement'])} or recall, or "
                            "fit one with benchmarks/bench_detectors.py --save-combinations")
    return entry
