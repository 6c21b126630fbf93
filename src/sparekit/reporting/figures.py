"""The one way sparekit draws a figure: matplotlib's pyplot on the Agg backend (no display needed), saved
atomically as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparekit.utils.io import atomic_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib  # deliberately lazy: matplotlib takes seconds to import, and only a plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"), as above

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` as a PNG (a reader never sees half a file) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
    return path


def finish_figure(fig: Any, axes: Any, title: str, path: str | Path) -> Path:
    """Legend (in the first panel), title, tight layout, then :func:`save_figure`."""
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
