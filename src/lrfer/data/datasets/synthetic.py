"""The embedded default dataset: procedurally drawn faces (see :mod:`lrfer.data.synthetic`)."""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass

from omegaconf import MISSING

from lrfer.config.schema import DatasetConfig
from lrfer.data import synthetic as generator_module
from lrfer.data.datasets.base import DatasetAdapter
from lrfer.data.faces import FaceData, FaceSplit
from lrfer.data.synthetic import EXPRESSIONS, GENERATOR_VERSION, MIN_IMAGE_SIZE, make_synthetic_faces


@dataclass
class SyntheticDatasetConfig(DatasetConfig):
    num_train: int = MISSING
    num_val: int = MISSING
    num_test: int = MISSING
    seed: int = MISSING


class SyntheticFaces(DatasetAdapter):
    """Train / val / test splits of synthetic faces drawn from three disjoint seeds; class ``c`` shows the
    expression ``dataset.class_names[c]`` (the one place the classes are named)."""

    name = "synthetic"

    @classmethod
    def config_problems(cls, cfg) -> list[str]:
        """The faces are drawn at 16 px or more; there must be training and test faces; nothing is read
        from ``dataset.root`` (set without ``dataset=<name>``, it would be ignored)."""
        problems = []
        size = cfg.get("image_size")
        if isinstance(size, int) and 0 < size < MIN_IMAGE_SIZE:
            problems.append(
                f"dataset.image_size={size}: the synthetic faces are drawn at {MIN_IMAGE_SIZE} px or more "
                f"(give dataset.image_size>={MIN_IMAGE_SIZE}; smaller faces: a degradation, e.g. "
                "degrade.test=[5px])"
            )
        names = cfg.get("class_names")
        if names is not None and sorted(names) != sorted(EXPRESSIONS):
            problems.append(
                f"dataset.class_names={list(names)}: the synthetic faces show {', '.join(EXPRESSIONS)} "
                "(name each once, in the order of the classes)"
            )
        for key in ("num_train", "num_test"):
            if cfg.get(key) == 0:
                problems.append(f"dataset.{key}=0: the synthetic set needs {key[4:]} faces (give 1 or more)")
        if cfg.get("root"):
            problems.append(
                f"dataset.root={cfg.root} but the dataset is synthetic (generated, no files read): choose "
                "the dataset too, e.g. dataset=rafdb dataset.root=..."
            )
        return problems

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
                n, image_size=cfg.image_size, num_classes=cfg.num_classes, seed=cfg.seed * 1000 + offset,
                expressions=tuple(cfg.class_names),
            )  # fmt: skip
            splits[split] = FaceSplit(images, labels)
        return FaceData(
            "synthetic",
            list(cfg.class_names)[: cfg.num_classes],
            splits,
            {"generated": True, **self.provenance()},
        )
