"""Reopen a finished run: its config (``.hydra/config.yaml``) and a checkpoint of its method."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lrfer.engine.checkpoint import load_checkpoint
from lrfer.errors import UserError
from lrfer.methods.base import Method


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """The config a run was trained with, with ``key=value`` overrides applied (e.g. ``dataset.root=...``)."""
    run_dir = Path(run_dir)
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not an lrfer run folder: {path} is missing")
    cfg = OmegaConf.load(path)
    OmegaConf.set_struct(cfg, False)
    # The run's checkpoint replaces every weight: initialisation files need not exist any more.
    if cfg.get("model") is not None:
        if cfg.model.get("weights"):
            cfg.model.weights = None
        if cfg.model.get("pretrained"):
            cfg.model.pretrained = False
    if cfg.get("method") is not None and cfg.method.get("extractor_weights"):
        cfg.method.extractor_weights = None
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"cannot read override {item!r}: write key=value")
        key, value = item.split("=", 1)
        OmegaConf.update(cfg, key, OmegaConf.create({"v": value}).v if value else None, merge=True)
    return cfg


def load_method_weights(method: Method, run_dir: str | Path, checkpoint: str = "best") -> dict:
    """Load ``checkpoints/<checkpoint>.pt`` of a run into ``method``; returns the checkpoint's metadata."""
    if checkpoint not in ("best", "last"):
        raise UserError(f"unknown checkpoint {checkpoint!r}: choose best or last")
    path = Path(run_dir) / "checkpoints" / f"{checkpoint}.pt"
    last = path.with_name("last.pt")
    if checkpoint == "best" and not path.is_file() and last.is_file():
        path = last  # a run without validation split (dataset.val_fraction=0) keeps its last epoch only
    state = load_checkpoint(path)
    try:
        method.load_state_dict(state["method"])
    except (KeyError, RuntimeError) as err:
        raise UserError(f"{path} does not match the run's method ({str(err).splitlines()[0]})") from None
    return {k: v for k, v in state.items() if k not in ("method", "optimizers", "schedulers")}
