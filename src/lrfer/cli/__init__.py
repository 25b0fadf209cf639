"""Command-line entry points (thin: parse, call the library, print)."""

from pathlib import Path

#: The Hydra config tree at the repository root (lrfer is installed editable: `pip install -e .`).
CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
