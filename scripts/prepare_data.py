#!/usr/bin/env python
"""Decode a dataset into lrfer's cache once and print what it holds.

    python scripts/prepare_data.py dataset=<name> dataset.root=<folder> [key=value ...]

Takes the same overrides as ``train.py`` (e.g. ``dataset.fold=3``, ``dataset.label_mode=crossentropy``,
``dataset.skip_corrupt=true``, ``paths.cache_dir=...``), builds or reads the cache, carves the validation
split when the dataset has none, and prints as its last stdout line the JSON summary
``{"dataset": name, "splits": {"train": {"n": N, "per_class": {...}}, "val": {...}, "test": {...}}}``.
A user error (missing folder, corrupt file, bad option) prints one ``error: ...`` line on stderr and exits 2.
See docs/datasets.md for each dataset's folder layout.
"""

from __future__ import annotations

import json
import logging
import sys

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from lrfer.cli import CONFIG_DIR
from lrfer.config import register_schemas
from lrfer.errors import UserError, exit_on_user_error


def first_line(err: BaseException) -> str:
    """The first line of a (Hydra / OmegaConf) error, followed by the first line of its cause if any."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    cause = err.__cause__ or err.__context__
    if cause is not None and str(cause).strip():
        line += f" ({str(cause).strip().splitlines()[0]})"
    return line


@exit_on_user_error
def main(overrides: list[str]) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from lrfer.config.validate import validate_config
    from lrfer.engine.run import load_data

    register_schemas()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            cfg = compose("train", overrides=overrides)
        validate_config(cfg)
        summary = load_data(cfg).summary()
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(first_line(err)) from None
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    main(sys.argv[1:])
