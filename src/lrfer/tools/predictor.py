"""A method's ``predict`` as a plain ``images -> logits`` module: what is traced, exported and timed."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from lrfer.engine.loading import load_method_weights, load_run_config
from lrfer.engine.run import build_method, method_context
from lrfer.methods.base import Method


class Predictor(nn.Module):
    """``method.predict(images)`` as a module's forward (the method infers the resolution itself)."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.predict(images)


def build_predictor(cfg: DictConfig) -> tuple[Predictor, list[int]]:
    """A freshly initialised method of ``cfg`` in eval mode, and its per-image input shape ``[C, H, W]``."""
    ctx = method_context(cfg)
    return Predictor(build_method(cfg, ctx)).eval(), [ctx.in_channels, ctx.input_size, ctx.input_size]


def load_predictor(
    run_dir: str | Path, checkpoint: str = "best", overrides: list[str] | None = None
) -> tuple[Predictor, list[int]]:
    """A finished run's method with its ``checkpoint`` weights, in eval mode, and its input shape."""
    predictor, shape = build_predictor(load_run_config(run_dir, overrides or []))
    load_method_weights(predictor.method, run_dir, checkpoint)
    return predictor.eval(), shape
