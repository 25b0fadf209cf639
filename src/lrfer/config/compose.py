"""Composing the Hydra config tree (:data:`lrfer.config.tree.CONFIG_DIR`) in-process (scripts, tests,
notebooks)."""

from __future__ import annotations

from collections.abc import Iterable

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from lrfer.config.schema import register_schemas
from lrfer.config.tree import CONFIG_DIR
from lrfer.core.errors import UserError

#: Shorthand understood by :func:`compose_config`: ``input_size=<px>`` sets both of these keys.
INPUT_SIZE_KEYS = ("dataset.image_size", "degrade.input_size")


def expand_shorthands(overrides: Iterable[str]) -> list[str]:
    """``input_size=<px>`` -> ``dataset.image_size=<px> degrade.input_size=<px>``; others unchanged."""
    items: list[str] = []
    for item in overrides:
        if item.startswith("input_size="):
            size = item.split("=", 1)[1]
            items += [f"{key}={size}" for key in INPUT_SIZE_KEYS]
        else:
            items.append(item)
    return items


def merge_overrides(*groups: Iterable[str]) -> list[str]:
    """Concatenate lists of ``key=value`` overrides; a later one replaces an earlier one of the same key."""
    merged: dict[str, str] = {}
    for group in groups:
        for item in group:
            key = item.split("=", 1)[0].lstrip("+~")
            merged.pop(key, None)
            merged[key] = item
    return list(merged.values())


def first_line(err: BaseException) -> str:
    """The first line of a (Hydra / OmegaConf) error, followed by the first line of its cause if any."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    cause = err.__cause__ or err.__context__
    if cause is not None and str(cause).strip():
        line += f" ({str(cause).strip().splitlines()[0]})"
    return line


def compose_config(
    overrides: Iterable[str] = (), config_name: str = "train", hydra_errors: bool = False
) -> DictConfig:
    """The composed config, as ``python train.py <overrides>`` would see it (no run folder, no logging).

    Accepts the ``input_size=<px>`` shorthand (:func:`expand_shorthands`). A bad override (unknown key,
    wrong type, missing group option) raises :class:`~lrfer.core.errors.UserError` with Hydra's first line,
    or,
    with ``hydra_errors=True``, Hydra's / OmegaConf's own exception (what tests of the schemas inspect).
    """
    register_schemas()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            return compose(config_name, overrides=expand_shorthands(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        if hydra_errors:
            raise
        raise UserError(first_line(err)) from None
