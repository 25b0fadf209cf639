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

from lrfer.config import compose_config
from lrfer.config.validate import validate_config
from lrfer.core.errors import exit_on_user_error
from lrfer.engine.run import load_data


@exit_on_user_error
def main(overrides: list[str]) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = compose_config(overrides)
    validate_config(cfg)
    summary = load_data(cfg).summary()
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    main(sys.argv[1:])
