"""Structured-config schemas (registered in Hydra's ConfigStore) and config helpers."""

from lrfer.config.compose import CONFIG_DIR, compose_config
from lrfer.config.schema import register_schemas

__all__ = ["CONFIG_DIR", "compose_config", "register_schemas"]
