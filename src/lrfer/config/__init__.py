"""Structured-config schemas (registered in Hydra's ConfigStore) and config helpers."""

from lrfer.config.schema import register_schemas

__all__ = ["register_schemas"]
