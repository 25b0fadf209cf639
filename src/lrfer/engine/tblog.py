"""TensorBoard logging of a run (losses, learning rates, accuracies, confusion matrices, sample faces)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

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
        from lrfer.report.plots import confusion_figure

        self.writer.add_figure(tag, confusion_figure(cm, class_names, title=tag), step)

    def image_grid(self, tag: str, images: torch.Tensor, step: int = 0, nrow: int = 8) -> None:
        """``images`` in [0, 1], (N, C, H, W)."""
        if self.writer is None:
            return
        from lrfer.core.compat import torchvision

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
