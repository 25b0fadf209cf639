"""The embedded default dataset: procedurally drawn faces (see :mod:`lrfer.data.synthetic`)."""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass

from lrfer.config.schema import DatasetConfig, register_dataset_schema
from lrfer.data import synthetic as generator_module
from lrfer.data.datasets.base import DatasetAdapter
from lrfer.data.faces import FaceData, FaceSplit
from lrfer.data.synthetic import CLASS_NAMES, GENERATOR_VERSION, make_synthetic_faces


@dataclass
class SyntheticDatasetConfig(DatasetConfig):
    num_train: int = 2000
    num_val: int = 500
    num_test: int = 1000
    seed: int = 0


register_dataset_schema("synthetic", SyntheticDatasetConfig)


class SyntheticFaces(DatasetAdapter):
    """Train / val / test splits of synthetic faces drawn from three disjoint seeds."""

    name = "synthetic"

    def fingerprint(self) -> dict:
        """Options, the generator version and a hash of its source: a changed generator rebuilds the cache."""
        source = inspect.getsource(generator_module).encode()
        return {
            **super().fingerprint(),
            "generator_version": GENERATOR_VERSION,
            "generator": hashlib.sha1(source).hexdigest()[:16],
        }

    def provenance(self) -> dict:
        return {"generator_version": GENERATOR_VERSION}

    def load(self) -> FaceData:
        cfg = self.cfg
        counts = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
        splits = {}
        for offset, (split, n) in enumerate(counts.items()):
            if n <= 0:
                continue
            images, labels = make_synthetic_faces(
                n, image_size=cfg.image_size, num_classes=cfg.num_classes, seed=cfg.seed * 1000 + offset
            )
            splits[split] = FaceSplit(images, labels)
        return FaceData(
            "synthetic",
            list(CLASS_NAMES[: cfg.num_classes]),
            splits,
            {"generated": True, **self.provenance()},
        )
