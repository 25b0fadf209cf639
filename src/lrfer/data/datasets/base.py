"""The interface every dataset adapter implements."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from omegaconf import DictConfig, OmegaConf

from lrfer.core.errors import UserError
from lrfer.data.faces import FaceData


class DatasetAdapter:
    """Reads one dataset's official files into a :class:`FaceData` (decoding happens once, then cached).

    Subclasses set ``name`` and implement :meth:`load` (and usually :meth:`source_files`). The dataset's
    config node (``cfg.dataset``) is available as ``self.cfg``.
    """

    name: ClassVar[str] = "dataset"

    def __init__(self, cfg: DictConfig | dict) -> None:
        self.cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)

    # -- to implement --------
    @classmethod
    def config_problems(cls, cfg: DictConfig) -> list[str]:
        """What is wrong with the dataset's config values for this adapter (checked at composition, before a
        run folder exists, by :func:`lrfer.config.validate.validate_config`); empty when nothing is."""
        return []

    def load(self) -> FaceData:
        raise NotImplementedError

    def source_files(self) -> list[Path]:
        """The files whose size and modification time identify this copy of the dataset."""
        return []

    def provenance(self) -> dict:
        """What identifies these faces beyond the config (recorded in every run's ``dataset_info``): a run
        whose ``dataset_info`` differs in these keys was trained on other faces. Empty for files on disk."""
        return {}

    # -- shared --------
    def options(self) -> dict:
        """Config values that change the decoded cache (all but the ones that only affect training)."""
        skip = {
            "root",
            "sampler",
            "mean",
            "std",
            "on_device",
            "val_fraction",
            "val_per_class",
            "merge_val",
            "split_seed",
        }
        return {k: v for k, v in OmegaConf.to_container(self.cfg, resolve=True).items() if k not in skip}

    def fingerprint(self) -> dict:
        files = []
        for f in self.source_files():
            st = os.stat(f)
            files.append([str(f), st.st_size, int(st.st_mtime)])
        return {"adapter": type(self).__qualname__, "options": self.options(), "files": files}

    def root(self) -> Path:
        """``dataset.root`` as a folder that exists, or a :class:`UserError` that names what was expected."""
        root = self.cfg.get("root")
        if not root:
            raise UserError(
                f"dataset.root is not set: pass dataset.root=<folder> pointing at your copy of {self.name}"
            )
        path = Path(str(root)).expanduser()
        if not path.is_dir():
            raise UserError(f"dataset.root={root} does not exist or is not a folder (dataset {self.name})")
        return path
