"""The steering frontier: EM toward the target against EM on prompts without conflict."""

from __future__ import annotations

from pathlib import Path

from sparekit.utils.io import atomic_path


def plot_frontier(curves: dict, path: str | Path, title: str = "Steering frontier") -> Path:
    """One panel per direction; each method is a line through its strength sweep (labels = strength)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    for ax, toward in zip(axes, ("memory", "context")):
        for label, by_direction in curves.items():
            points = by_direction.get(toward, [])
            if not points:
                continue
            xs = [100 * p["em_target"] for p in points]
            ys = [100 * p["em_no_conflict"] for p in points]
            style = "o-" if len(points) > 1 else "s"
            (line,) = ax.plot(xs, ys, style, label=label, markersize=5)
            for x, y, p in zip(xs, ys, points):
                if p["strength"] is not None:
                    ax.annotate(f"{p['strength']:g}", (x, y), textcoords="offset points", xytext=(3, 3),
                                fontsize=7, color=line.get_color())
        ax.set_title(f"steer toward {toward}")
        ax.set_xlabel(f"EM toward {toward} under conflict (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("EM without conflict, steered (%)  ↑ less harm")
    axes[1].legend(fontsize=8, loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
    return path
