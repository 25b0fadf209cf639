"""Dataset adapters, one module per dataset, each named by its config (``_target_``, and its schema in the
defaults list: :func:`lrfer.config.schema.dataset_schema_names`)."""

from __future__ import annotations

from hydra.utils import get_class
from omegaconf import DictConfig

from lrfer.core.errors import UserError
from lrfer.data.datasets.base import DatasetAdapter


def build_adapter(cfg: DictConfig) -> DatasetAdapter:
    """Instantiate the adapter named by ``cfg._target_`` with the dataset config node."""
    try:
        cls = get_class(cfg._target_)
    except Exception as err:
        raise UserError(f"dataset {cfg.get('name')}: cannot load adapter {cfg._target_!r} ({err})") from None
    return cls(cfg)


__all__ = ["DatasetAdapter", "build_adapter"]
