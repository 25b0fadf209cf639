"""Optimisers and learning-rate schedules from config (``trainer.optimizer`` / ``trainer.scheduler``)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch.optim import lr_scheduler

from lrfer.core.errors import UserError
from lrfer.core.names import OPTIMIZERS, PLATEAU_MONITORS, SCHEDULERS


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg) -> torch.optim.Optimizer:
    """``cfg.name`` over ``params``; ``cfg.decay_norm_and_bias=false`` exempts every 1-d parameter (biases,
    BatchNorm weights) from ``weight_decay``, as TensorFlow's per-layer weight regularisers do."""
    params = list(params)
    if not params:
        raise ValueError("the stage has no trainable parameters")
    # Fused Adam/AdamW on CUDA: one kernel per parameter group and no host read of the step counters.
    # On the CPU the single-tensor implementation is kept (CPU runs repeat the earlier runs bit for bit).
    # Decided on the tensors, before they may be split into parameter groups below.
    fused = {"fused": True} if all(p.is_cuda and p.is_floating_point() for p in params) else {}
    if not cfg.get("decay_norm_and_bias", True) and cfg.weight_decay:
        matrices = [p for p in params if p.dim() > 1]
        vectors = [p for p in params if p.dim() <= 1]
        params = [{"params": matrices}, {"params": vectors, "weight_decay": 0.0}]
        params = [g for g in params if g["params"]]
    name = cfg.name.lower()
    if name == "adam":
        return torch.optim.Adam(
            params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, **fused
        )
    if name == "adamw":
        return torch.optim.AdamW(
            params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, **fused
        )
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    raise UserError(f"unknown optimizer {cfg.name!r}: choose one of {', '.join(OPTIMIZERS)}")


#: The state entries that fix a schedule's shape; when a resumed run asks for another shape (a longer cosine,
#: other milestones), the schedule is rebuilt for it instead of continuing the stored one.
_SHAPE = {
    "step": ("step_size", "gamma"),
    "multistep": ("milestones", "gamma"),
    "exponential": ("gamma",),
    "cosine": ("T_max", "eta_min"),
}


class PiecewiseFactor:
    """The learning-rate factor of epoch ``e``: the product of ``gammas[i]`` over the ``milestones[i] <= e``
    (``multistep`` with ``gammas``; a class, not a lambda, so that LambdaLR saves its state)."""

    def __init__(self, milestones: list[int], gammas: list[float]) -> None:
        self.milestones = [int(m) for m in milestones]
        self.gammas = [float(g) for g in gammas]

    def __call__(self, epoch: int) -> float:
        factor = 1.0
        for milestone, gamma in zip(self.milestones, self.gammas):
            if epoch >= milestone:
                factor *= gamma
        return factor


class EpochScheduler:
    """A torch scheduler stepped once per epoch; ``plateau`` receives the monitored accuracy."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg, epochs: int) -> None:
        name = cfg.name.lower()
        self.name = name
        self.monitor = cfg.monitor
        self.optimizer = optimizer
        self.epochs = epochs
        self.cfg = cfg
        self.sched = self._build(optimizer, cfg, epochs)

    def _build(self, optimizer, cfg, epochs: int):
        name = self.name
        if name == "none":
            return None
        if name == "step":
            return lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        if name == "multistep":
            gammas = list(cfg.get("gammas") or [])
            if gammas:
                if len(gammas) != len(cfg.milestones):
                    raise UserError(
                        f"scheduler.gammas has {len(gammas)} factors for {len(cfg.milestones)} milestones: "
                        "give one factor per milestone (or none, for gamma at every milestone)"
                    )
                return lr_scheduler.LambdaLR(optimizer, PiecewiseFactor(list(cfg.milestones), gammas))
            return lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
        if name == "exponential":
            return lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
        if name == "cosine":
            return lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs), eta_min=cfg.min_lr)
        if name == "plateau":
            if cfg.monitor not in PLATEAU_MONITORS:
                raise UserError(
                    f"unknown scheduler.monitor {cfg.monitor!r}: choose one of {', '.join(PLATEAU_MONITORS)}"
                )
            return lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=cfg.factor, patience=cfg.patience, min_lr=cfg.min_lr
            )
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

    def load_state_dict(self, state: dict) -> str | None:
        """Continue a stored schedule. Call after the optimiser's state is loaded.

        When the stored schedule has another shape than this one (a cosine planned for fewer epochs: the run
        is being extended), the schedule is rebuilt for the new shape and fast-forwarded to the stored epoch
        instead, and a sentence saying so is returned (None when the stored schedule simply continues).
        """
        if self.sched is None or not state:
            return None
        fresh = self.sched.state_dict()
        changed = [k for k in _SHAPE.get(self.name, ()) if k in state and state[k] != fresh.get(k)]
        if not changed:
            self.sched.load_state_dict(state)
            return None
        epoch = int(state.get("last_epoch", 0))
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        with warnings.catch_warnings():  # stepping without optimizer.step(): only the learning rate moves
            warnings.simplefilter("ignore", UserWarning)
            self.sched = self._build(self.optimizer, self.cfg, self.epochs)
            for _ in range(epoch):
                self.sched.step()
        was = ", ".join(f"{k}={state[k]}" for k in changed)
        now = ", ".join(f"{k}={fresh[k]}" for k in changed)
        return (
            f"the {self.name} schedule was stored with {was} and is rebuilt with {now}, fast-forwarded to "
            f"epoch {epoch}: the epochs already trained followed the old schedule, so this is not the run a "
            "single training with the new settings would give"
        )


#: Settings whose change a resumed run refuses: the stored optimiser / scheduler state belongs to them.
_REFUSED = {
    "optimizer": ("name", "decay_norm_and_bias"),
    "scheduler": ("name",),
}
#: Optimiser settings held in every parameter group, applied to the groups when a resume changes them.
_GROUP_KEYS = ("weight_decay", "momentum", "betas", "eps", "nesterov")
#: ReduceLROnPlateau attributes that its stored state would otherwise bring back.
_PLATEAU_KEYS = {"factor": "factor", "patience": "patience"}


def step_settings(opt_cfg, sched_cfg) -> dict:
    """The optimiser and scheduler settings of one step, as stored in ``last.pt`` (``"settings"``)."""
    from omegaconf import DictConfig, OmegaConf

    def plain(cfg) -> dict:
        return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)

    return {"optimizer": plain(opt_cfg), "scheduler": plain(sched_cfg)}


def check_resumed_settings(stored: dict | None, now: dict, where: str) -> None:
    """Refuse (one line) a resume whose optimiser or scheduler type differs from the stored one.

    Call before the stored states are loaded: another scheduler's state would be loaded into this one
    (a cosine state in ExponentialLR sets the learning rate to 0). ``stored`` None: an older checkpoint
    without settings, nothing to compare.
    """
    if not stored:
        return
    changed = [
        f"trainer.{part}.{key}={now[part].get(key)} (the run used {stored[part].get(key)})"
        for part, keys in _REFUSED.items()
        for key in keys
        if part in stored and key in stored[part] and stored[part].get(key) != now[part].get(key)
    ]
    if changed:
        raise UserError(
            f"cannot resume {where} with {', '.join(changed)}: the stored optimiser and schedule state "
            "belongs to the old setting; resume with it, or train into a new hydra.run.dir"
        )


def apply_resumed_settings(
    stored: dict | None, now: dict, optimizer: torch.optim.Optimizer, scheduler: EpochScheduler
) -> list[str]:
    """After loading the stored states, apply the settings a resume changed; returns one line per change.

    A changed ``lr`` scales the current learning rate (and the schedule's base rates) by new / old, so the
    schedule keeps its position and continues from the new rate; other changed optimiser settings
    (``weight_decay``, ``momentum``, ...) replace the stored ones in every parameter group that held the old
    value (a group exempt from weight decay stays exempt). ``stored`` None: nothing to compare.
    """
    if not stored:
        return []
    lines = []
    old_opt, new_opt = stored.get("optimizer", {}), now["optimizer"]
    old_lr, new_lr = old_opt.get("lr"), new_opt.get("lr")
    if old_lr is not None and new_lr is not None and float(old_lr) != float(new_lr):
        ratio = float(new_lr) / float(old_lr) if float(old_lr) else None
        sched = scheduler.sched
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * ratio if ratio is not None else float(new_lr)
            if "initial_lr" in group:
                group["initial_lr"] = group["initial_lr"] * ratio if ratio is not None else float(new_lr)
        if sched is not None and hasattr(sched, "base_lrs"):
            sched.base_lrs = [b * ratio if ratio is not None else float(new_lr) for b in sched.base_lrs]
            sched._last_lr = [g["lr"] for g in optimizer.param_groups]
        lines.append(
            f"trainer.optimizer.lr={new_lr} (the run used {old_lr}): the learning rate continues from "
            f"{optimizer.param_groups[0]['lr']:.6g}"
        )
    for key in _GROUP_KEYS:
        old, new = old_opt.get(key), new_opt.get(key)
        if key not in old_opt or key not in new_opt or old == new:
            continue
        old_value = tuple(old) if isinstance(old, list) else old
        for group in optimizer.param_groups:
            current = tuple(group[key]) if isinstance(group.get(key), (list, tuple)) else group.get(key)
            if key in group and current == old_value:
                group[key] = tuple(new) if isinstance(new, list) else new
        lines.append(f"trainer.optimizer.{key}={new} (the run used {old}): applied")
    if scheduler.name == "plateau" and scheduler.sched is not None:
        old_sched, new_sched = stored.get("scheduler", {}), now["scheduler"]
        for key, attr in _PLATEAU_KEYS.items():
            if key in old_sched and old_sched[key] != new_sched.get(key):
                setattr(scheduler.sched, attr, new_sched[key])
                was = old_sched[key]
                lines.append(f"trainer.scheduler.{key}={new_sched[key]} (the run used {was}): applied")
        if "min_lr" in old_sched and old_sched["min_lr"] != new_sched.get("min_lr"):
            scheduler.sched.min_lrs = [float(new_sched["min_lr"])] * len(optimizer.param_groups)
            was, now_min = old_sched["min_lr"], new_sched["min_lr"]
            lines.append(f"trainer.scheduler.min_lr={now_min} (the run used {was}): applied")
    return lines
