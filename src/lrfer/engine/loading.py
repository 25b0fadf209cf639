"""Reopen a finished run: its config (``.hydra/config.yaml``) and a checkpoint of its method."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from lrfer.config.compose import compose_config
from lrfer.config.validate import validate_config
from lrfer.core.checkpoint import load_checkpoint
from lrfer.core.errors import UserError
from lrfer.methods.base import Method

log = logging.getLogger(__name__)


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """Apply ``key=value`` overrides as Hydra's command line does.

    ``64`` is an int, ``[x1,x2]`` a list, ``null`` None, ``'64'`` a string; ``+key=value`` adds and ``~key``
    deletes. A bad override, or one of a key the config does not have (without ``+``), is a
    :class:`UserError`.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read the overrides {' '.join(overrides)}: {first}") from None
    for override in parsed:
        key, text = override.key_or_group, override.input_line
        if override.is_sweep_override():
            raise UserError(f"override {text}: give one value, not a sweep")
        value = override.value()
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if not isinstance(node, DictConfig) or leaf not in node:
                raise UserError(f"override {text}: {key} is not in the run's config")
            del node[leaf]
            continue
        if not (override.is_add() or override.is_force_add()) and not _has_key(cfg, key):
            raise UserError(
                f"override {text}: {key} is not in the run's config (a misspelt key?); "
                f"add a new key with +{text}"
            )
        if isinstance(OmegaConf.select(cfg, key), DictConfig) and not isinstance(value, dict):
            raise UserError(f"override {text}: {key} is a config group; set its keys ({key}.<key>=...)")
        OmegaConf.update(cfg, key, value, merge=True)


def _has_key(cfg: DictConfig, key: str) -> bool:
    """Whether the dotted ``key`` exists in ``cfg`` (a key holding null counts)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node


def load_run_config(
    run_dir: str | Path, overrides: list[str] | None = None, *, validate: bool = True
) -> DictConfig:
    """The config a run was trained with, with ``key=value`` overrides applied (e.g. ``dataset.root=...``),
    parsed as Hydra parses its command line and validated (:func:`lrfer.config.validate.validate_config`;
    ``validate=False``: by the caller, which resolves it, :func:`lrfer.engine.resolve.resolve`). Its
    ``trainer.resume`` / ``trainer.overwrite`` are off: reading a run never continues or replaces it.
    """
    run_dir = Path(run_dir)
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not an lrfer run folder: {path} is missing")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:
        raise UserError(f"cannot read {path}: {' '.join(str(err).split())}") from None
    OmegaConf.set_struct(cfg, False)
    # The run's checkpoint replaces every weight: initialisation files need not exist any more.
    if cfg.get("model") is not None:
        if cfg.model.get("weights"):
            cfg.model.weights = None
        if cfg.model.get("pretrained"):
            cfg.model.pretrained = False
    if cfg.get("method") is not None and cfg.method.get("extractor_weights"):
        cfg.method.extractor_weights = None
    fill_new_method_options(cfg)
    if cfg.get("trainer") is not None:
        cfg.trainer.resume = cfg.trainer.overwrite = False
    apply_overrides(cfg, overrides or [])
    if validate:
        validate_config(cfg, warn=False)
    return cfg


def fill_new_method_options(cfg: DictConfig) -> None:
    """Give a run made by an older lrfer the method options added since, at their current defaults.

    Method options have no Python defaults (the method's config holds them), so a run folder written before
    an option existed would not rebuild. Every option the run's config lacks is taken from the current
    config of the same method (same ``_target_``) and logged; the options the run has keep their values.
    An option whose addition changed the behaviour takes the value the method class records for runs made
    before it (``Method.VALUES_BEFORE_OPTIONS``) instead.
    """
    method = cfg.get("method")
    if method is None or not method.get("name"):
        return
    try:
        current = compose_config([f"method={method.name}"]).method
    except UserError:
        return  # a method config renamed or removed: the run's own config is all there is
    if current.get("_target_") != method.get("_target_"):
        return
    missing = [key for key in current if key not in method]
    if missing:
        before = getattr(get_class(str(method._target_)), "VALUES_BEFORE_OPTIONS", {})
        earlier = {key: before[key] for key in missing if key in before}
        cfg.method = OmegaConf.merge(current, earlier, method)
        used = [f"{key}={earlier[key]} (what runs before it trained with)" for key in earlier]
        if others := [key for key in missing if key not in earlier]:
            used.append(f"the current defaults of {', '.join(others)}")
        log.warning("the run predates method options %s: using %s", ", ".join(missing), "; ".join(used))


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
