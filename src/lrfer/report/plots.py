"""Figures: confusion matrices and accuracy-against-degradation curves (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch


def confusion_figure(cm: torch.Tensor, class_names: list[str], title: str = ""):
    """A row-normalised confusion matrix with counts, as a matplotlib figure."""
    cm = cm.double().cpu()
    norm = cm / cm.sum(dim=1, keepdim=True).clamp(min=1)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * k, 0.8 + 0.7 * k))
    ax.imshow(norm.numpy(), vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                int(cm[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def accuracy_plot(columns: list[str], rows: dict[str, dict[str, float]], path, title: str = "") -> None:
    """Plot accuracy (y) against degradation (x, in the given column order), one line per run."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = list(range(len(columns)))
    for name, values in rows.items():
        pts = [(x, values[c]) for x, c in zip(xs, columns) if values.get(c) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=name)
    ax.set_xticks(xs, columns)
    ax.set_xlabel("test degradation")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if len(rows) <= 20:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
