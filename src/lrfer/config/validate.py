"""The single validation pass over a composed config: values the schemas' types cannot check.

The schemas (``lrfer.config.schema``) check keys and types when Hydra composes the config; this pass checks
ranges and choices (a negative learning rate, a probability of 2, a validation fraction of 1.5, an unknown
optimiser, an ``auto | true | false`` option set to something else, impossible degradations) right after
composition, before anything is built or written. Every problem found is reported at once, in one line
(a :class:`~lrfer.core.errors.UserError`). Values that are legal but degenerate (a 1-pixel face made by
``x1000``, a single class, a learning rate of 0) are logged as warnings.

A run calls it once, through :func:`lrfer.engine.resolve.resolve` (``python train.py``: before Hydra creates
the run folder, :mod:`lrfer.cli.guard`); ``lrfer-evaluate``, ``lrfer-predict`` and the scripts run it on the
run's config with their overrides. A key that a config does not have (an old run's config,
a method without ``label_smoothing``) is skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lrfer.config.schema import auto_bool_keys, parse_auto_bool
from lrfer.core.degradation import Degradation, parse_degradations
from lrfer.core.errors import UserError
from lrfer.core.names import (
    COMPILE_MODES,
    KERNELS,
    OPTIMIZERS,
    PLATEAU_MONITORS,
    PRECISIONS,
    RESIZE_KERNELS,
    SAMPLERS,
    SCHEDULERS,
    TRAIN_MODES,
)

log = logging.getLogger(__name__)

#: Below this side (pixels) a face carries no expression: degradations that go lower get a warning.
MIN_FACE_SIDE = 3

_MISSING = object()


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=True)
    except Exception:  # a mandatory value left unset, or an interpolation that does not resolve: not ours
        return _MISSING


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Checker:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.errors: list[str] = []
        self.warnings: list[str] = []
        #: ``degrade.<part>`` -> its parsed labels (absent: unset or unreadable)
        self.degradations: dict[str, list] = {}

    def check(self, key: str, ok: Callable[[Any], bool], what: str, *, optional: bool = False) -> Any:
        """Record ``key=<value> <what>`` unless ``ok(value)``; ``optional``: null is allowed."""
        value = _get(self.cfg, key)
        if value is _MISSING or (optional and value is None):
            return None
        try:
            good = ok(value)
        except (TypeError, ValueError):
            good = False
        if not good:
            shown = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
            self.errors.append(f"{key}={shown} {what}")
            return None
        return value

    def at_least(self, key: str, low: float, *, optional: bool = False, integer: bool = False) -> Any:
        kind = "an integer" if integer else "a number"
        return self.check(
            key,
            lambda v: _number(v) and v >= low and (not integer or float(v).is_integer()),
            f"must be {kind} >= {low:g}" + (" (or null)" if optional else ""),
            optional=optional,
        )

    def above(self, key: str, low: float, *, optional: bool = False) -> Any:
        return self.check(
            key,
            lambda v: _number(v) and v > low,
            f"must be > {low:g}" + (" (or null)" if optional else ""),
            optional=optional,
        )

    def between(self, key: str, low: float, high: float, *, high_open: bool = False) -> Any:
        closing = ")" if high_open else "]"
        return self.check(
            key,
            lambda v: _number(v) and low <= v and (v < high if high_open else v <= high),
            f"must be in [{low:g}, {high:g}{closing}",
        )

    def choice(self, key: str, choices: tuple[str, ...], *, any_case: bool = False) -> Any:
        return self.check(
            key,
            lambda v: isinstance(v, str) and (v.lower() if any_case else v) in choices,
            f"must be one of {', '.join(choices)}",
        )


@dataclass(frozen=True)
class Validated:
    """What :func:`validate_config` found: the warnings, and the degradation lists it parsed."""

    #: degenerate but legal values
    warnings: list[str]
    #: ``train`` / ``val`` / ``test`` -> the parsed ``degrade.<part>`` (absent when unset)
    degradations: dict[str, list[Degradation]]


def validate_config(cfg: DictConfig, *, warn: bool = True) -> Validated:
    """Check the values of a composed config; raise one :class:`UserError` listing every problem.

    Returns the warnings (degenerate but legal values, also logged when ``warn``) and the parsed
    degradation lists (what :func:`lrfer.engine.resolve.resolve` keeps: the labels are parsed once).
    """
    c = _Checker(cfg)
    _check_auto_bools(c)
    _check_trainer(c)
    _check_optimizer(c, "trainer.optimizer.")
    _check_scheduler(c, "trainer.scheduler.")
    c.between("method.label_smoothing", 0, 1, high_open=True)
    c.at_least("method.epochs", 1, integer=True)
    image_size = _check_dataset_values(c)
    _check_augment(c)
    _check_degrade(c, image_size)
    _check_metric_names(c)
    _check_dataset(c)
    c.at_least("logger.num_sample_images", 0, integer=True)
    message = paper_init_warning(cfg)  # the paper's initialisation
    if message:
        c.warnings.append(message)
    if c.errors:
        raise UserError("; ".join(c.errors))
    if warn:
        log_warnings(c.warnings)
    return Validated(c.warnings, c.degradations)


def log_warnings(warnings) -> None:
    """Log the warnings of :func:`validate_config` (a run logs them once its log file is open)."""
    for message in warnings:
        log.warning("%s", message)


def _check_auto_bools(c: _Checker) -> None:
    """Every ``auto | true | false`` option of the schemas."""
    for key in auto_bool_keys():
        value = _get(c.cfg, key)
        if value is not _MISSING:
            try:
                parse_auto_bool(value, key)
            except UserError as err:
                c.errors.append(str(err))


def _check_trainer(c: _Checker) -> None:
    t = "trainer."
    c.at_least(t + "max_epochs", 1, optional=True, integer=True)
    for key in ("batch_size", "eval_batch_size", "val_every", "log_every_n_steps"):
        c.at_least(t + key, 1, integer=True)
    c.at_least(t + "num_threads", 1, optional=True, integer=True)
    c.check(
        t + "checkpoint_every",
        lambda v: str(v).lower() == "auto" or (str(v).isdigit() and int(v) >= 1),
        "must be auto or a whole number of epochs >= 1",
    )
    c.above(t + "checkpoint_budget", 0)
    c.above(t + "progress_every_s", 0, optional=True)
    c.above(t + "grad_clip", 0, optional=True)
    c.choice(t + "precision", PRECISIONS)
    c.choice(t + "compile_mode", COMPILE_MODES)
    c.check(  # which names the validation reports is checked by _check_metric_names
        t + "monitor",
        lambda v: isinstance(v, str) and v.strip() != "" and v.count("/") <= 1 and not v.endswith("/"),
        "must name a validation metric: acc, balanced_acc, a method's own (rrn_acc) or x4/acc",
    )
    c.check(
        t + "device",
        lambda v: isinstance(v, str) and (v in ("auto", "cpu", "cuda") or v.startswith("cuda:")),
        "must be auto, cpu, cuda or cuda:<index>",
    )


def _check_optimizer(c: _Checker, o: str) -> None:
    c.choice(o + "name", OPTIMIZERS, any_case=True)
    lr = c.at_least(o + "lr", 0)
    if lr == 0:
        c.warnings.append(f"{o}lr=0: the weights will not change")
    c.at_least(o + "weight_decay", 0)
    c.between(o + "momentum", 0, 1, high_open=True)
    c.above(o + "eps", 0)
    c.check(
        o + "betas",
        lambda v: len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
        "must be two numbers in [0, 1)",
    )


def _check_scheduler(c: _Checker, s: str) -> None:
    c.choice(s + "name", SCHEDULERS, any_case=True)
    c.choice(s + "monitor", PLATEAU_MONITORS)
    c.at_least(s + "step_size", 1, integer=True)
    c.above(s + "gamma", 0)
    c.at_least(s + "patience", 0, integer=True)
    c.check(s + "factor", lambda v: _number(v) and 0 < v < 1, "must be in (0, 1)")
    c.at_least(s + "min_lr", 0)
    c.check(s + "milestones", lambda v: all(_number(m) and m >= 1 for m in v), "must be epochs >= 1")
    c.check(s + "gammas", lambda v: all(_number(g) and g > 0 for g in v), "must be factors > 0")


def _check_dataset_values(c: _Checker) -> int | None:
    """The ``dataset.*`` values every dataset has; returns ``dataset.image_size`` when valid."""
    d = "dataset."
    num_classes = c.at_least(d + "num_classes", 1, integer=True)
    if num_classes == 1:
        c.warnings.append("dataset.num_classes=1: a single class makes every accuracy 100%")
    names = _get(c.cfg, d + "class_names")
    if num_classes and isinstance(names, (list, ListConfig)) and len(names) < num_classes:
        c.errors.append(f"dataset.num_classes={num_classes} but dataset.class_names has {len(names)} names")
    image_size = c.at_least(d + "image_size", 1, integer=True)
    if image_size is not None and image_size < 2 * MIN_FACE_SIDE:
        c.warnings.append(f"dataset.image_size={image_size}: faces this small carry little expression")
    c.check(
        d + "val_fraction",
        lambda v: _number(v) and 0 <= v < 1,
        "must be in [0, 1): the share of train held out for validation (0: none, the last epoch is kept)",
    )
    c.at_least(d + "val_per_class", 1, optional=True, integer=True)
    c.choice(d + "sampler", SAMPLERS)
    for key in ("num_train", "num_val", "num_test"):
        c.at_least(d + key, 0, integer=True)
    for key in ("mean", "std"):
        c.check(d + key, lambda v: len(v) in (1, 3) and all(_number(x) for x in v), "must be 1 or 3 numbers")
    c.check(d + "std", lambda v: all(x > 0 for x in v), "must be > 0")
    return image_size


def _check_augment(c: _Checker) -> None:
    a = "augment."
    for key in ("hflip", "erase_p", "blur_p", "translate"):
        c.between(a + key, 0, 1)
    for key in ("rotate", "brightness", "contrast", "saturation", "blur_sigma_max"):
        c.at_least(a + key, 0)
    low, high = c.above(a + "scale_min", 0), c.above(a + "scale_max", 0)
    if low is not None and high is not None and low > high:
        c.errors.append(f"augment.scale_min={low} must not exceed augment.scale_max={high}")
    low, high = c.between(a + "erase_area_min", 0, 1), c.between(a + "erase_area_max", 0, 1)
    if low is not None and high is not None and low > high:
        c.errors.append(f"augment.erase_area_min={low} must not exceed augment.erase_area_max={high}")


def _check_degrade(c: _Checker, image_size: int | None) -> None:
    g = "degrade."
    c.choice(g + "train_mode", TRAIN_MODES)
    c.choice(g + "kernel", KERNELS)
    c.choice(g + "resize_kernel", RESIZE_KERNELS)
    c.at_least(g + "input_size", 1, optional=True, integer=True)
    _check_degradations(c, image_size)


def paper_init_warning(cfg: DictConfig) -> str | None:
    """The warning for a paper-table experiment run without the paper's initialisation, else None.

    An experiment config names what its paper's numbers start from in a top-level ``paper_init`` block:
    ``key`` (the option that must be set, e.g. ``model.weights``), ``expects`` (what the paper used) and
    ``otherwise`` (what the run starts from when the key is unset). The run still goes ahead: the fallback
    is legal, only its numbers are not the paper's.
    """
    init = cfg.get("paper_init") if isinstance(cfg, DictConfig) else None
    if not init:
        return None
    value = OmegaConf.select(cfg, str(init.key), default=None)
    if value is not None and str(value).strip():
        return None
    return (
        f"{init.key} is unset: this experiment runs without the paper's initialisation ({init.expects}); "
        f"it starts from {init.otherwise} instead, so expect lower accuracy than the paper's table "
        f"(set {init.key}=PATH; expected ranges in experiments/<method>/README.md)"
    )


def _check_degradations(c: _Checker, image_size: int | None) -> None:
    """``degrade.train`` / ``val`` / ``test`` are readable, possible at ``image_size``, not degenerate."""
    for part in ("train", "val", "test"):
        labels = _get(c.cfg, f"degrade.{part}")
        if labels is _MISSING or (labels is None and part == "val"):
            continue
        try:
            degs = parse_degradations(list(labels) if isinstance(labels, (list, ListConfig)) else labels)
        except UserError as err:
            c.errors.append(f"degrade.{part}: {err}")
            continue
        c.degradations[part] = degs
        if not image_size:
            continue
        for deg in degs:
            try:
                side = min(deg.output_size(image_size, image_size))
            except UserError as err:
                c.errors.append(f"degrade.{part}: {err}")
                continue
            if side < MIN_FACE_SIDE:
                c.warnings.append(
                    f"degradation {deg.label} turns the {image_size}-px faces into {side}x{side} px "
                    f"(below {MIN_FACE_SIDE} px a face carries no expression)"
                )


def method_metrics(cfg: DictConfig) -> list[str] | None:
    """The validation metrics the config's method reports (``acc``, ``balanced_acc`` and its
    :attr:`~lrfer.methods.base.Method.extra_metrics`); None when the method class cannot be found."""
    from hydra.utils import get_class

    target = _get(cfg, "method._target_")
    if not isinstance(target, str):
        return None
    try:
        cls = get_class(target)
    except Exception:  # a method that does not import is reported when it is built
        return None
    return ["acc", "balanced_acc", *getattr(cls, "extra_metrics", ())]


def metric_name_problem(name: str, labels: list[str] | None, what: str) -> str | None:
    """What is wrong with the metric name ``name`` (``acc``, ``x4/acc``) of option ``what``, or None:
    a malformed name, or a degradation not in the validated ``labels`` (None: not known yet)."""
    label, _, metric = str(name).rpartition("/")
    if not metric or "/" in label:
        return f"{what}={name}: give <metric> (e.g. acc) or <degradation>/<metric> (e.g. x4/acc)"
    if label and labels is not None and label not in labels:
        return f"{what}={name}: {label} is not a validated degradation (they are {labels})"
    return None


def _check_metric_names(c: _Checker) -> None:
    """``trainer.monitor`` and ``objective`` name a metric the method reports at a validated degradation."""
    metrics = method_metrics(c.cfg)
    part = "val" if "val" in c.degradations else "train"
    unset_val = _get(c.cfg, "degrade.val") in (None, _MISSING)
    degs = c.degradations.get(part) if (part == "val" or unset_val) else None
    validated = [d.label for d in degs] if degs is not None else None  # None: unreadable, reported
    for key in ("trainer.monitor", "objective"):
        name = _get(c.cfg, key)
        if not isinstance(name, str) or (key == "trainer.monitor" and any(key in e for e in c.errors)):
            continue  # a malformed trainer.monitor is already reported
        metric = name.rpartition("/")[2]
        problem = metric_name_problem(name, validated, key)
        if problem:
            c.errors.append(problem)
        elif metrics is not None and metric not in metrics:
            c.errors.append(
                f"{key}={name}: the method reports no {metric!r} on the validation split; "
                f"choose one of {', '.join(metrics)} (or <degradation>/<metric>, e.g. x4/acc)"
            )


def _check_dataset(c: _Checker) -> None:
    """The dataset adapter's own checks (:meth:`~lrfer.data.datasets.base.DatasetAdapter.config_problems`)."""
    from hydra.utils import get_class

    node, target = _get(c.cfg, "dataset"), _get(c.cfg, "dataset._target_")
    if not isinstance(node, DictConfig) or not isinstance(target, str):
        return
    try:
        adapter = get_class(target)
    except Exception:  # an adapter that does not import is reported when it is built
        return
    if hasattr(adapter, "config_problems"):
        c.errors.extend(adapter.config_problems(node))
