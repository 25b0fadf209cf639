"""TensorBoard logging of a run (losses, learning rates, accuracies, confusion matrices, sample faces)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lrfer.core.compat import torchvision

log = logging.getLogger(__name__)


class RunLogger:
    """Writes to ``<run_dir>/tb``; every method is a no-op when disabled (or on a non-zero rank)."""

    def __init__(self, run_dir: Path | None, enabled: bool = True) -> None:
        self.writer = None
        if enabled and run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}{key}", float(value), step)

    def confusion(self, tag: str, cm: torch.Tensor, class_names: list[str], step: int = 0) -> None:
        if self.writer is None:
            return
        self.writer.add_figure(tag, confusion_figure(cm, class_names, title=tag), step)

    def image_grid(self, tag: str, images: torch.Tensor, step: int = 0, nrow: int = 8) -> None:
        """``images`` in [0, 1], (N, C, H, W)."""
        if self.writer is None:
            return
        grid = torchvision.utils.make_grid(images.float().cpu(), nrow=nrow, padding=2, pad_value=1.0)
        self.writer.add_image(tag, grid, step)

    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        self.writer.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items()}, run_name="hparams")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def confusion_figure(cm: torch.Tensor, class_names: list[str], title: str = ""):
    """A row-normalised confusion matrix with counts, as a matplotlib figure."""
    cm = cm.double().cpu()
    norm = cm / cm.sum(dim=1, keepdim=True).clamp(min=1)
    k = len(class_names)
    import matplotlib  # imported only when a confusion matrix is drawn

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

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
