"""Command-line entry points (thin: parse, call the library, print)."""

from lrfer.config.tree import CONFIG_DIR

__all__ = ["CONFIG_DIR"]
