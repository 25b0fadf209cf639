"""Where the Hydra config tree lives.

The tree is ``configs/`` at the repository root; ``src/lrfer/configs`` links to it, so a wheel
(``pip install .``, not editable) ships the same files inside the package and :data:`CONFIG_DIR` is
``lrfer/configs`` in every kind of installation.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


def _config_dir() -> Path:
    shipped = _PACKAGE / "configs"  # a wheel's copy, or the link to configs/ in a source checkout
    if (shipped / "train.yaml").is_file():
        return shipped.resolve()
    return _PACKAGE.parents[1] / "configs"  # a checkout on a file system without symbolic links


#: The Hydra config tree (``train.yaml`` and the group folders).
CONFIG_DIR: Path = _config_dir()
