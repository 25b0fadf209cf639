"""Dataclass schemas for the config groups that every run uses: types only.

The values, defaults included, live in the YAML files under ``configs/`` (one source of defaults); a schema
field is ``MISSING`` here and every group option's file gives it a value (``tests/test_defaults.py``).

They are registered in Hydra's ConfigStore under ``schema/<group>/<name>`` and named at the top of each
YAML file's defaults list, so a misspelt key or a value of the wrong type stops the run at start-up with
Hydra's one-line message instead of being silently ignored.

``auto | true | false`` options
-------------------------------
An option that is either switched on, switched off or left to lrfer (``auto``) is declared with the
:data:`AutoBool` type and the :func:`auto_bool` field, and read with :func:`resolve_auto_bool`::

    @dataclass
    class TrainerConfig:
        sync_bn: AutoBool = auto_bool()          # YAML: ``sync_bn: auto  # auto | true | false``

    enabled = resolve_auto_bool(cfg.trainer.sync_bn, auto=device.type == "cuda", key="trainer.sync_bn")

Hydra parses ``true``/``false`` on the command line (and YAML parses them in files) as booleans, while
``auto`` stays a word, so the field accepts both kinds: ``true``/``false`` (also ``on``/``off``,
``yes``/``no``, in any case, and the strings ``'true'``/``'false'``), ``auto`` or ``null`` (both meaning
auto). Anything else is refused with one line when the config is validated. Never type such an option
``str`` (``true`` would arrive as ``'True'``) or ``bool`` (``auto`` would be refused). :func:`auto_bool_keys`
finds every such option in the schemas, so the validation and the tests cover a new one automatically.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import MISSING, DictConfig, OmegaConf

from lrfer.config.tree import CONFIG_DIR
from lrfer.core.errors import UserError

#: The type of an ``auto | true | false`` option: ``True``, ``False``, ``"auto"`` or ``None`` (= auto).
#: (OmegaConf 2.3 has no union types, so the schema accepts any value and :func:`parse_auto_bool`, run by the
#: config validation, refuses the rest.)
AutoBool = Any

_AUTO_BOOL = "lrfer_auto_bool"
_TRUE_WORDS = ("true", "on", "yes", "1")
_FALSE_WORDS = ("false", "off", "no", "0")


def auto_bool(default: bool | str | None = MISSING) -> Any:
    """A dataclass field for an ``auto | true | false`` option (see the module docstring); its value comes
    from the YAML like every other default."""
    return field(default=default, metadata={_AUTO_BOOL: True})


def parse_auto_bool(value: Any, key: str = "option") -> bool | None:
    """``True``/``False`` for an explicit choice, ``None`` for auto; :class:`UserError` for anything else."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("auto", "null", "none", ""):
            return None
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise UserError(f"{key} must be auto, true or false, got {value!r}")


def resolve_auto_bool(value: Any, auto: bool, key: str = "option") -> bool:
    """The effective setting of an ``auto | true | false`` option: ``auto`` (or ``null``) gives ``auto``."""
    parsed = parse_auto_bool(value, key)
    return bool(auto) if parsed is None else parsed


def _auto_bool_fields(node: type, prefix: str) -> list[str]:
    hints = typing.get_type_hints(node)
    keys = []
    for f in dataclasses.fields(node):
        if f.metadata.get(_AUTO_BOOL):
            keys.append(f"{prefix}{f.name}")
        elif dataclasses.is_dataclass(hints.get(f.name)):
            keys += _auto_bool_fields(hints[f.name], f"{prefix}{f.name}.")
    return keys


@dataclass
class OptimizerConfig:
    """``torch.optim`` optimiser: ``name`` is adam, adamw or sgd."""

    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    momentum: float = MISSING
    nesterov: bool = MISSING
    betas: list[float] = MISSING
    eps: float = MISSING
    decay_norm_and_bias: bool = MISSING


@dataclass
class SchedulerConfig:
    """Learning-rate schedule: none, step, multistep, exponential, plateau or cosine (stepped per epoch).

    ``plateau`` watches ``monitor``: ``val_acc`` (validation accuracy) or ``train_acc`` (training accuracy,
    as the EFC paper did); ``mode`` max. ``multistep`` multiplies the learning rate by ``gamma`` at every
    milestone, or by ``gammas[i]`` at ``milestones[i]`` when ``gammas`` is given (a piecewise-constant
    schedule such as CovPoolFER's 5e-3, 2e-3, 1e-3, 5e-4, 1e-4).
    """

    name: str = MISSING
    step_size: int = MISSING
    gamma: float = MISSING
    milestones: list[int] = MISSING
    gammas: list[float] = MISSING
    patience: int = MISSING
    factor: float = MISSING
    min_lr: float = MISSING
    monitor: str = MISSING


@dataclass
class TrainerConfig:
    max_epochs: int | None = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    device: str = MISSING
    precision: str = MISSING
    channels_last: AutoBool = auto_bool()
    compile: bool = MISSING
    compile_mode: str = MISSING
    grad_clip: float | None = MISSING
    resume: bool = MISSING
    overwrite: bool = MISSING
    monitor: str = MISSING
    sync_bn: AutoBool = auto_bool()
    restore_best: bool = MISSING
    val_every: int = MISSING
    checkpoint_every: Any = MISSING
    checkpoint_budget: float = MISSING
    log_every_n_steps: int = MISSING
    progress: AutoBool = auto_bool()
    progress_every_s: float | None = MISSING
    num_threads: int | None = MISSING
    deterministic: bool = MISSING
    tf32: bool = MISSING
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass
class DegradeConfig:
    """Which low-resolution views a run trains and is evaluated on, and how they are made.

    Labels are ``x<factor>`` (``x1`` = native, ``x2``, ``x6``, ``x16``) or ``<size>px`` (``14px``).
    """

    train: list[str] = MISSING
    val: list[str] | None = MISSING
    test: list[str] = MISSING
    train_mode: str = MISSING
    kernel: str = MISSING
    antialias: bool = MISSING
    input_size: int | None = MISSING
    resize_back: bool = MISSING
    resize_kernel: str = MISSING
    seed: int = MISSING


@dataclass
class AugmentConfig:
    """Batched on-device augmentation of training images (all probabilities/magnitudes; 0 disables)."""

    hflip: float = MISSING
    translate: float = MISSING
    rotate: float = MISSING
    scale_min: float = MISSING
    scale_max: float = MISSING
    brightness: float = MISSING
    contrast: float = MISSING
    saturation: float = MISSING
    erase_p: float = MISSING
    erase_area_min: float = MISSING
    erase_area_max: float = MISSING
    blur_p: float = MISSING
    blur_sigma_max: float = MISSING


@dataclass
class DatasetConfig:
    """Fields every dataset has (values: ``configs/dataset/common/options.yaml`` and the dataset's file);
    adapters extend it with their own options (a dataclass subclass)."""

    _target_: str = MISSING
    name: str = MISSING
    root: str | None = MISSING
    num_classes: int = MISSING
    class_names: list[str] = MISSING
    image_size: int = MISSING
    val_fraction: float = MISSING
    val_per_class: int | None = MISSING
    merge_val: bool = MISSING
    split_seed: int = MISSING
    sampler: str = MISSING
    mean: list[float] = MISSING
    std: list[float] = MISSING
    skip_corrupt: bool = MISSING
    on_device: AutoBool = auto_bool()


@dataclass
class LoggerConfig:
    tensorboard: bool = MISSING
    log_images: bool = MISSING
    num_sample_images: int = MISSING


@dataclass
class PathsConfig:
    cache_dir: str = MISSING


#: The defaults-list entry by which a dataset config names its schema.
_DATASET_SCHEMA_ENTRY = "/schema/dataset@_here_"

_SCHEMAS: dict[str, dict[str, type]] = {
    "trainer": {"trainer": TrainerConfig},
    "degrade": {"degrade": DegradeConfig},
    "augment": {"augment": AugmentConfig},
    "dataset": {"dataset": DatasetConfig},
    "logger": {"logger": LoggerConfig},
    "paths": {"paths": PathsConfig},
}


def dataset_schema_names(config_dir: Path = CONFIG_DIR) -> list[str]:
    """The dataset schemas the dataset configs name: the class path in each ``configs/dataset/*.yaml``'s
    defaults entry ``/schema/dataset@_here_: <module>.<Class>`` (a :class:`DatasetConfig` subclass)."""
    names = []
    for path in sorted((Path(config_dir) / "dataset").glob("*.yaml")):
        for entry in OmegaConf.load(path).get("defaults", []):
            if isinstance(entry, DictConfig) and _DATASET_SCHEMA_ENTRY in entry:
                names.append(str(entry[_DATASET_SCHEMA_ENTRY]))
    return names


def _dataset_schema(name: str) -> type:
    """The dataclass a dataset config names by its class path, imported (as Hydra imports ``_target_``)."""
    try:
        node = get_class(name)
    except Exception as err:
        raise UserError(f"a dataset config names the schema {name!r}, which fails to import: {err}") from None
    if not (isinstance(node, type) and issubclass(node, DatasetConfig)):
        raise UserError(f"a dataset config names the schema {name!r}: not a DatasetConfig dataclass")
    return node


def register_schemas() -> None:
    """Store every schema as ``schema/<group>/<name>`` in Hydra's ConfigStore (idempotent).

    A dataset's schema is named by its config (:func:`dataset_schema_names`) and stored under that name, so
    adding a dataset touches its adapter module and its YAML file only.
    """
    for name in dataset_schema_names():
        _SCHEMAS["dataset"].setdefault(name, _dataset_schema(name))
    cs = ConfigStore.instance()
    for group, nodes in _SCHEMAS.items():
        for name, node in nodes.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def schema_nodes() -> dict[str, dict[str, type]]:
    """Every registered schema, by group and name (the dataset configs' included)."""
    register_schemas()
    return {group: dict(nodes) for group, nodes in _SCHEMAS.items()}


def schema_node(group: str, name: str) -> type:
    """The dataclass registered as ``schema/<group>/<name>``
    (``schema_node("dataset", "lrfer.data.datasets.kdef.KdefConfig")``)."""
    register_schemas()
    return _SCHEMAS[group][name]


def auto_bool_keys() -> list[str]:
    """Every ``auto | true | false`` option in the schemas, as dotted keys (``trainer.channels_last``)."""
    register_schemas()
    keys: list[str] = []
    for group, nodes in _SCHEMAS.items():
        for node in nodes.values():
            keys += [k for k in _auto_bool_fields(node, f"{group}.") if k not in keys]
    return keys
