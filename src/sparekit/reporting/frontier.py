"""The steering frontier: EM toward the target against harm on prompts without conflict."""

from __future__ import annotations

from pathlib import Path

from sparekit.reporting.figures import pyplot, save_figure

#: (point key, y-axis label, scale) of each row of panels; the NLL row appears when measured.
_ROWS = (("em_no_conflict", "EM without conflict, steered (%)\n↑ less harm", 100.0),
         ("answer_nll_no_conflict", "gold-answer NLL without conflict\n(nats/token) ↓ more fluent", 1.0))


def plot_frontier(curves: dict, path: str | Path, title: str = "Steering frontier") -> Path:
    """Columns: direction; rows: harm measures. Each method is a line through its strength sweep."""
    plt = pyplot()
    points_of = [p for by_direction in curves.values() for pts in by_direction.values() for p in pts]
    rows = [row for row in _ROWS if any(row[0] in p for p in points_of)]
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 4.2 * len(rows)), sharex="col", squeeze=False)
    colours = {label: f"C{i % 10}" for i, label in enumerate(curves)}
    markers = {label: "os^Dvx*P"[i // 10 % 8] for i, label in enumerate(curves)}
    for (key, ylabel, scale), row_axes in zip(rows, axes):
        for ax, toward in zip(row_axes, ("memory", "context")):
            for label, by_direction in curves.items():
                points = [p for p in by_direction.get(toward, []) if key in p]
                if not points:
                    continue
                xs = [100 * p["em_target"] for p in points]
                ys = [scale * p[key] for p in points]
                ax.plot(xs, ys, marker=markers[label], linestyle="-" if len(points) > 1 else "none",
                        color=colours[label], label=label, markersize=5)
                for x, y, p in zip(xs, ys, points):
                    if p["strength"] is not None:
                        ax.annotate(f"{p['strength']:g}", (x, y), textcoords="offset points", xytext=(3, 3),
                                    fontsize=7, color=colours[label])
            ax.grid(alpha=0.3)
            ax.set_title(f"steer toward {toward}" if key == rows[0][0] else "")
        row_axes[0].set_ylabel(ylabel)
    for ax, toward in zip(axes[-1], ("memory", "context")):
        ax.set_xlabel(f"EM toward {toward} under conflict (%)  → better")
    axes[0][1].legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=130)
