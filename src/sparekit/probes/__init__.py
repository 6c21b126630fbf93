"""Linear probes on hidden states: detect a knowledge conflict, predict the knowledge source.

Imported on first use, deliberately (:mod:`sparekit.utils.lazy`): :class:`LinearProbe` alone must not
pull in transformers (the vLLM plugin reads saved probes with it), which the experiments need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparekit.utils.lazy import lazy_attributes

if TYPE_CHECKING:
    from sparekit.probes.experiment import (ProbeExperiment, ProbingData, collect, cross_validate, fit_probe,
                                            layer_table, leave_one_out, leave_one_relation_out, stack_formats,
                                            transfer)
    from sparekit.probes.linear import LinearProbe
    from sparekit.probes.stats import STATISTICS, compare_behaviours, pattern_statistics

_EXPERIMENT, _STATS = "sparekit.probes.experiment", "sparekit.probes.stats"
__getattr__, __dir__ = lazy_attributes(__name__, {
    "LinearProbe": "sparekit.probes.linear", "STATISTICS": _STATS, "compare_behaviours": _STATS,
    "pattern_statistics": _STATS, **{name: _EXPERIMENT for name in (
        "ProbeExperiment", "ProbingData", "collect", "cross_validate", "fit_probe", "layer_table",
        "leave_one_out", "leave_one_relation_out", "stack_formats", "transfer")}})

__all__ = ["STATISTICS", "LinearProbe", "ProbeExperiment", "ProbingData", "collect", "compare_behaviours", "cross_validate",
           "fit_probe", "layer_table", "leave_one_out", "leave_one_relation_out",
           "pattern_statistics", "stack_formats", "transfer"]
