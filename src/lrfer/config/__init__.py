"""Structured-config schemas (registered in Hydra's ConfigStore) and config helpers."""

from lrfer.config.compose import compose_config
from lrfer.config.schema import register_schemas
from lrfer.config.tree import CONFIG_DIR

__all__ = ["CONFIG_DIR", "compose_config", "register_schemas"]
