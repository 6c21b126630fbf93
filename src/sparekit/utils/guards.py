"""Warnings for fits and benchmarks that run on too little data to mean anything.

A fit on a handful of rows still returns numbers; these guards say how many rows there were
and what to pass instead, once per process for each kind of fit (a probe run fits hundreds
of probes on similar splits). The thresholds are documented in the README ("Too little data").
"""

from __future__ import annotations

import warnings

#: behaviour prompts per side (uses context / uses memory) below which a steering fit is noise:
#: mean differences and the mutual information of thousands of SAE features need more rows than features selected
MIN_BEHAVIOUR_PER_SIDE = 32
#: rows per class below which a probe's accuracy, AUROC and AUPRC swing by tens of points between seeds
MIN_PROBE_ROWS_PER_CLASS = 20


class SmallDataWarning(UserWarning):
    """A fit or a benchmark ran on fewer rows than its result can rest on."""


_warned: set[str] = set()


def warn_small_data(what: str, counts: dict[str, int], need: int, fix: str) -> bool:
    """Warn (once per ``what``) when any of ``counts`` is below ``need``; returns whether it is.

    ``what`` names the fit ("spare fit"), ``counts`` what it had ({"uses memory": 3, …}),
    ``fix`` what to pass instead.
    """
    short = {name: n for name, n in counts.items() if n < need}
    if not short:
        return False
    if what not in _warned:
        _warned.add(what)
        had = ", ".join(f"{n} {name}" for name, n in counts.items())
        warnings.warn(f"{what} on too little data: {had} (fewer than {need}); {fix}", SmallDataWarning, stacklevel=3)
    return True
