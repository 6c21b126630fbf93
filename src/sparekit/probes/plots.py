"""Paper-style figures of per-layer probe metrics (matplotlib Agg, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparekit.reporting.figures import finish_figure, pyplot

_LABELS = {"conflict": "conflict vs no conflict", "source": "context vs memory (under conflict)"}


def plot_layer_metrics(result: dict, path: str | Path, title: str) -> Path:
    """Accuracy and AUROC by layer (mean ± std band over seeds) for both targets; dashed: ``eval`` transfer."""
    plt = pyplot()
    layers = np.array(result["layers"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, metric, name in zip(axes, ("accuracy", "auroc"), ("Accuracy", "AUROC")):
        for (target, label), colour in zip(_LABELS.items(), ("tab:blue", "tab:orange")):
            for block, style, suffix in ((result, "-", ""), (result.get("eval") or {}, "--", " (transfer)")):
                if target not in block or "error" in block[target]:
                    continue
                mean = np.array(block[target][metric]["mean"])
                std = np.array(block[target][metric]["std"])
                ax.plot(layers, mean, style, color=colour, marker="o", markersize=3, label=label + suffix)
                ax.fill_between(layers, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
                if metric == "accuracy" and "majority_accuracy" in block[target] and not suffix:
                    ax.axhline(block[target]["majority_accuracy"]["mean"][0], color=colour, linewidth=0.8,
                               linestyle=":", label=f"{target}: majority class")
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":", label="chance")
        ax.set_xlabel("layer (output of decoder block)")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_ylabel(f"held-out {name}")
        ax.set_ylim(0.3, 1.02)
        ax.grid(alpha=0.3)
    return finish_figure(fig, axes, title, path)


def plot_components(result: dict, path: str | Path, title: str) -> Path:
    """Held-out accuracy by layer for each component (resid / attn / mlp), one panel per target."""
    plt = pyplot()
    layers = np.array(result["layers"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True, sharey=True)
    for ax, (target, label) in zip(axes, _LABELS.items()):
        for (component, tables), marker in zip(result["components"].items(), "osD^v"):
            table = tables[target]
            if "error" in table:
                continue
            mean, std = np.array(table["accuracy"]["mean"]), np.array(table["accuracy"]["std"])
            ax.plot(layers, mean, marker=marker, markersize=3, label=component)
            ax.fill_between(layers, mean - std, mean + std, alpha=0.15, linewidth=0)
        majority = next((t[target]["majority_accuracy"]["mean"][0] for t in result["components"].values()
                         if "majority_accuracy" in t[target]), None)
        if majority is not None:
            ax.axhline(majority, color="grey", linewidth=0.8, linestyle=":", label="majority class")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("layer (decoder block)")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy")
    return finish_figure(fig, axes, title, path)


def plot_breadth(curve: dict[int, dict], path: str | Path, title: str, in_distribution: float | None = None) -> Path:
    """Held-out accuracy and AUROC against the number of training relations (mean ± std over draws)."""
    plt = pyplot()
    sizes = np.array(sorted(curve))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, metric, name in zip(axes, ("accuracy", "auroc"), ("accuracy", "AUROC")):
        mean = np.array([curve[k][metric]["mean"] for k in sizes])
        std = np.array([curve[k][metric]["std"] for k in sizes])
        ax.plot(sizes, mean, marker="o", markersize=4, color="tab:blue", label="relation held out")
        ax.fill_between(sizes, mean - std, mean + std, color="tab:blue", alpha=0.2, linewidth=0)
        if in_distribution is not None and metric == "accuracy":
            ax.axhline(in_distribution, color="tab:green", linewidth=0.8, linestyle="--", label="in distribution")
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":", label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(k) for k in sizes])
        ax.set_xlabel("training relations")
        ax.set_ylabel(f"held-out {name}")
        ax.set_ylim(0.3, 1.02)
        ax.grid(alpha=0.3)
    return finish_figure(fig, axes, title, path)
