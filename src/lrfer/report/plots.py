"""Figures: accuracy-against-degradation curves (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


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
