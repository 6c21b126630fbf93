"""Linear probes on hidden states: detect a knowledge conflict, predict the knowledge source."""

from sparekit.probes.experiment import (ProbeExperiment, ProbingData, collect, cross_validate, fit_probe, layer_table,
                                        leave_one_out, leave_one_relation_out, transfer)
from sparekit.probes.linear import LinearProbe
from sparekit.probes.stats import STATISTICS, compare_behaviours, pattern_statistics

__all__ = ["STATISTICS", "LinearProbe", "ProbeExperiment", "ProbingData", "collect", "compare_behaviours", "cross_validate",
           "fit_probe", "layer_table", "leave_one_out", "leave_one_relation_out",
           "pattern_statistics", "transfer"]
