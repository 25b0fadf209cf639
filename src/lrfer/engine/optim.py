"""Optimisers and learning-rate schedules from config (``trainer.optimizer`` / ``trainer.scheduler``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim import lr_scheduler

from lrfer.errors import UserError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "step", "multistep", "exponential", "plateau", "cosine")
PLATEAU_MONITORS = ("val_acc", "train_acc")


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg) -> torch.optim.Optimizer:
    """``cfg.name`` over ``params``; ``cfg.decay_norm_and_bias=false`` exempts every 1-d parameter (biases,
    BatchNorm weights) from ``weight_decay``, as TensorFlow's per-layer weight regularisers do."""
    params = list(params)
    if not params:
        raise ValueError("the stage has no trainable parameters")
    if not cfg.get("decay_norm_and_bias", True) and cfg.weight_decay:
        matrices = [p for p in params if p.dim() > 1]
        vectors = [p for p in params if p.dim() <= 1]
        params = [{"params": matrices}, {"params": vectors, "weight_decay": 0.0}]
        params = [g for g in params if g["params"]]
    name = cfg.name.lower()
    if name == "adam":
        return torch.optim.Adam(
            params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    if name == "adamw":
        return torch.optim.AdamW(
            params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    raise UserError(f"unknown optimizer {cfg.name!r}: choose one of {', '.join(OPTIMIZERS)}")


class EpochScheduler:
    """A torch scheduler stepped once per epoch; ``plateau`` receives the monitored accuracy."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg, epochs: int) -> None:
        name = cfg.name.lower()
        self.name = name
        self.monitor = cfg.monitor
        if name == "none":
            self.sched = None
        elif name == "step":
            self.sched = lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        elif name == "multistep":
            self.sched = lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
        elif name == "exponential":
            self.sched = lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
        elif name == "cosine":
            self.sched = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs), eta_min=cfg.min_lr)
        elif name == "plateau":
            if cfg.monitor not in PLATEAU_MONITORS:
                raise UserError(
                    f"unknown scheduler.monitor {cfg.monitor!r}: choose one of {', '.join(PLATEAU_MONITORS)}"
                )
            self.sched = lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=cfg.factor, patience=cfg.patience, min_lr=cfg.min_lr
            )
        else:
            raise UserError(f"unknown scheduler {cfg.name!r}: choose one of {', '.join(SCHEDULERS)}")

    def step(self, val_acc: float | None, train_acc: float | None) -> None:
        if self.sched is None:
            return
        if self.name == "plateau":
            value = val_acc if self.monitor == "val_acc" else train_acc
            if value is not None:
                self.sched.step(value)
            return
        self.sched.step()

    def state_dict(self) -> dict:
        return {} if self.sched is None else self.sched.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.sched is not None and state:
            self.sched.load_state_dict(state)
