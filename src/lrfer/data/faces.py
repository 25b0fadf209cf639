"""In-memory face datasets: uint8 image tensors per split, labels and (optionally) soft targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lrfer.core.errors import UserError

SPLITS = ("train", "val", "test")


class FaceSplit:
    """One split: uint8 images (N, 3, H, W), ``labels`` int64 (N,), optional ``targets`` float (N, C).

    ``targets`` holds soft training targets (FERPlus probability / cross-entropy / multi-target modes); when
    it is None the one-hot of ``labels`` is the target.

    A split can also be a selection of rows of a larger image tensor (``rows``: sample i is
    ``base[rows[i]]``), which is how the validation split is carved from a training split without copying
    it (the cache is memory-mapped: indexing it would read the whole split into memory, on every rank).
    ``images`` is then made on demand (a copy); the data pipeline reads ``base`` and ``rows`` instead.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> None:
        self.base, self.labels, self.targets, self.rows = images, labels, targets, rows
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        n = images.shape[0] if rows is None else rows.shape[0]
        if labels.shape != (n,):
            raise ValueError("labels must have one entry per image")
        if targets is not None and targets.shape[0] != n:
            raise ValueError("targets must have one row per image")

    @property
    def images(self) -> torch.Tensor:
        """The split's images (N, C, H, W); a copy when the split selects rows of a larger tensor."""
        return self.base if self.rows is None else self.base[self.rows.to(self.base.device)]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.base.shape[1:])  # type: ignore[return-value]

    def base_index(self, index: torch.Tensor) -> torch.Tensor:
        """Rows of ``base`` holding samples ``index`` of the split."""
        return index if self.rows is None else self.rows[index]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> FaceSplit:
        """Samples ``index`` of the split, sharing its images (no copy of them)."""
        rows = index if self.rows is None else self.rows[index]
        return FaceSplit(
            self.base, self.labels[index], None if self.targets is None else self.targets[index], rows=rows
        )

    def to(self, device: torch.device | str, moved: dict | None = None) -> FaceSplit:
        """The split on ``device``; ``moved`` (id of a base tensor -> its copy) shares one copy of a base
        between splits carved from it."""
        moved = {} if moved is None else moved
        key = id(self.base)
        if key not in moved:
            moved[key] = self.base.to(device)
        return FaceSplit(
            moved[key],
            self.labels.to(device),
            None if self.targets is None else self.targets.to(device),
            None if self.rows is None else self.rows.to(device),
        )

    def per_class(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels.cpu(), minlength=num_classes).tolist()


@dataclass
class FaceData:
    """A whole dataset as loaded from its cache: class names in the dataset's own order and its splits."""

    name: str
    class_names: list[str]
    splits: dict[str, FaceSplit]
    info: dict = field(default_factory=dict)
    #: Text files written beside the cache arrays at build time (name -> content), e.g. crop_boxes.csv.
    files: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        first = next(iter(self.splits.values()))
        return int(first.base.shape[-2]), int(first.base.shape[-1])

    def summary(self) -> dict:
        """``{"dataset": name, "splits": {split: {"n": N, "per_class": {class: count}}}}``, plus ``"crop"``
        (mode, faces detected and not found) when the adapter reports how it cropped."""
        crop = {"crop": self.info["crop"]} if "crop" in self.info else {}
        return {
            "dataset": self.name,
            "splits": {
                name: {
                    "n": len(split),
                    "per_class": dict(zip(self.class_names, split.per_class(self.num_classes))),
                }
                for name, split in self.splits.items()
            },
            **crop,
        }


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out) with ``fraction`` of every class held out, reproducible from ``seed``.

    Every class with at least two samples keeps at least one sample on each side.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be between 0 and 1, got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    keep, held = [], []
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_held = round(len(idx) * fraction)
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(held)).values


def per_class_split(
    labels: torch.Tensor, per_class: int, seed: int, class_names: Sequence[str] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out) with exactly ``per_class`` samples of every class held out, drawn at random
    (reproducible from ``seed``), the rest kept: a balanced validation split such as AffectNet's 500 faces
    per class (residual voting network, Sec. 3.2.1).

    A class with ``per_class`` samples or fewer would leave nothing to train on: :class:`UserError`.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    gen = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    counts = torch.bincount(labels)
    short = [int(c) for c in torch.nonzero((counts > 0) & (counts <= per_class)).flatten()]
    if short:
        named = ", ".join(
            f"{class_names[c] if c < len(class_names) else c} ({int(counts[c])})" for c in short
        )
        raise UserError(
            f"dataset.val_per_class={per_class} but these classes have no more training faces than that: "
            f"{named}; lower dataset.val_per_class or use dataset.val_fraction"
        )
    keep, held = [], []
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        held.append(idx[:per_class])
        keep.append(idx[per_class:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(held)).values


def carve_validation(data: FaceData, fraction: float, seed: int, per_class: int | None = None) -> FaceData:
    """Add a seeded ``val`` split carved from ``train`` when the dataset has none: ``per_class`` samples of
    every class (:func:`per_class_split`) when given, else a stratified ``fraction`` of every class.

    Both splits select rows of the training images (no copy of them: see :class:`FaceSplit`).
    ``fraction=0`` (and no ``per_class``) carves nothing: the run trains on every training face and has no
    validation split (no best-epoch selection; the last epoch is kept).
    """
    if "val" in data.splits:
        return data
    if fraction <= 0 and not per_class:
        info = {**data.info, "val_carved_from_train": None}
        return FaceData(data.name, data.class_names, dict(data.splits), info)
    train = data.splits["train"]
    if per_class:
        keep, held = per_class_split(train.labels, int(per_class), seed, data.class_names)
        carved: dict = {"per_class": int(per_class), "seed": seed}
    else:
        keep, held = stratified_split(train.labels, fraction, seed)
        carved = {"fraction": fraction, "seed": seed}
    splits = dict(data.splits)
    splits["train"], splits["val"] = train.subset(keep), train.subset(held)
    info = {**data.info, "val_carved_from_train": carved}
    return FaceData(data.name, data.class_names, {k: splits[k] for k in SPLITS if k in splits}, info)


def merge_validation(data: FaceData) -> FaceData:
    """Fold the official ``val`` split into ``train`` (``dataset.merge_val=true``); no validation split is
    left.

    Soft targets survive: when only one side has them, the other side's labels become one-hot targets.
    """
    train, val = data.splits["train"], data.splits["val"]
    targets = None
    if train.targets is not None or val.targets is not None:
        k = data.num_classes

        def soft(split: FaceSplit) -> torch.Tensor:
            if split.targets is not None:
                return split.targets.float()
            return torch.nn.functional.one_hot(split.labels, k).float()

        targets = torch.cat([soft(train), soft(val)])
    merged = FaceSplit(torch.cat([train.images, val.images]), torch.cat([train.labels, val.labels]), targets)
    splits = {k: v for k, v in data.splits.items() if k != "val"}
    splits["train"] = merged
    info = {**data.info, "val_merged_into_train": len(val)}
    return FaceData(data.name, data.class_names, {k: splits[k] for k in SPLITS if k in splits}, info)
