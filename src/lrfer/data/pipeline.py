"""From cached uint8 faces to training batches, entirely with batched tensor operations on the device.

For every (split, degradation) the low-resolution uint8 view is computed once, in chunks, on the device
that holds the data, and kept. A batch then gathers its images from the views (samples of one batch may
come from different degradations), resizes them back to the network input size, augments them on the
device and normalises them. No per-sample Python and no image decoding happen in the loop.

A batch is a dict: ``image`` (float, normalised, N x C x S x S), ``label`` (int64), ``target`` (soft
targets, only when the dataset has them), ``index`` (row in the split), ``factor`` (effective
downsampling factor of each image, float), ``degradation`` (index into the list of degradations the
batch was drawn from) and, when asked for, ``image_hr`` (the native image through the same
augmentation).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from lrfer.data.augment import augment_batch
from lrfer.data.degrade import Degradation, degrade_uint8, resize_to
from lrfer.data.faces import FaceData
from lrfer.errors import UserError


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[start, stop)`` of ``n`` items split over ``world`` processes."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


Batch = dict[str, torch.Tensor]


class FaceDataModule:
    """Serves training and evaluation batches of one dataset at any list of degradations."""

    def __init__(
        self,
        data: FaceData,
        *,
        degrade_cfg,
        augment_cfg,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        eval_batch_size: int,
        device: torch.device,
        storage_device: torch.device | None = None,
        sampler: str = "random",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise UserError(
                f"trainer.batch_size={batch_size} (the global batch) must be divisible by "
                f"the {world_size} processes"
            )
        self.rank, self.world_size = rank, world_size
        if sampler not in ("random", "balanced"):
            raise UserError(f"unknown sampler {sampler!r}: choose random or balanced")
        if batch_size <= 0 or eval_batch_size <= 0:
            raise UserError("trainer.batch_size and trainer.eval_batch_size must be positive")
        self.data = data
        self.degrade_cfg = degrade_cfg
        self.augment_cfg = augment_cfg
        self.device = device
        self.storage_device = storage_device or device
        self.splits = {name: split.to(self.storage_device) for name, split in data.splits.items()}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.sampler = sampler
        self.native_size = data.image_size[0]
        self.input_size = int(degrade_cfg.input_size or self.native_size)
        self.resize_back = bool(degrade_cfg.resize_back)
        channels = next(iter(self.splits.values())).images.shape[1]
        self.mean = torch.tensor(list(mean), device=device).view(1, -1, 1, 1)[:, :channels]
        self.std = torch.tensor(list(std), device=device).view(1, -1, 1, 1)[:, :channels]
        self._views: dict[tuple[str, str], torch.Tensor] = {}

    # -- views --------
    def view(self, split: str, degradation: Degradation) -> torch.Tensor:
        """The uint8 low-resolution view of a split (computed once on the storage device, then kept)."""
        key = (split, degradation.label)
        if key not in self._views:
            self._views[key] = degrade_uint8(
                self.splits[split].images,
                degradation,
                kernel=self.degrade_cfg.kernel,
                antialias=self.degrade_cfg.antialias,
            )
        return self._views[key]

    def network_size(self, degradation: Degradation) -> int:
        """Side of the images the network sees for this degradation."""
        if self.resize_back:
            return self.input_size
        return degradation.output_size(self.native_size, self.native_size)[0]

    def check_trainable(self, degradations: Sequence[Degradation]) -> None:
        """Refuse a training mix whose images would have different sizes (resize_back=false)."""
        sizes = {self.network_size(d) for d in degradations}
        if len(sizes) > 1:
            raise UserError(
                f"degrade.resize_back=false gives images of sizes {sorted(sizes)} for "
                f"{[d.label for d in degradations]}: train on one size or set degrade.resize_back=true"
            )

    # -- batch assembly --------
    def _gather(self, split: str, index: torch.Tensor, which: torch.Tensor, degs: Sequence[Degradation]):
        size = self.network_size(degs[int(which[0])]) if len(degs) else self.input_size
        channels = self.splits[split].images.shape[1]
        out = torch.empty((len(index), channels, size, size), device=self.device)
        for k, deg in enumerate(degs):
            rows = torch.nonzero(which == k).flatten()
            if rows.numel() == 0:
                continue
            lr = self.view(split, deg)[index[rows].to(self.storage_device)].to(self.device, non_blocking=True)
            lr = lr.float().div_(255.0)
            out[rows] = resize_to(lr, size, self.degrade_cfg.resize_kernel) if self.resize_back else lr
        return out.clamp_(0.0, 1.0)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def make_batch(
        self,
        split: str,
        index: torch.Tensor,
        which: torch.Tensor,
        degs: Sequence[Degradation],
        *,
        augment: bool,
        need_hr: bool = False,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """Assemble the batch of rows ``index`` of ``split``, row i at degradation ``degs[which[i]]``."""
        index = index.to(self.device)
        which = which.to(self.device)
        images = self._gather(split, index, which, degs)
        hr = None
        if need_hr:
            x1 = Degradation("x1", factor=1.0)
            hr = self._gather(split, index, torch.zeros_like(which), [x1])
        if augment:
            assert generator is not None
            state = generator.get_state()
            images = augment_batch(images, self.augment_cfg, generator)
            if hr is not None:
                after = generator.get_state()
                generator.set_state(state)
                hr = augment_batch(hr, self.augment_cfg, generator)
                generator.set_state(after)
        split_data = self.splits[split]
        rows = index.to(self.storage_device)
        factors = torch.tensor([d.effective_factor(self.native_size) for d in degs], device=self.device)
        batch: Batch = {
            "image": self._normalise(images),
            "label": split_data.labels[rows].to(self.device),
            "index": index,
            "factor": factors[which],
            "degradation": which,
        }
        if split_data.targets is not None:
            batch["target"] = split_data.targets[rows].to(self.device)
        if hr is not None:
            batch["image_hr"] = self._normalise(hr)
        return batch

    # -- iteration --------
    def _epoch_order(self, degs: Sequence[Degradation], generator: torch.Generator, mode: str):
        labels = self.splits["train"].labels
        n = len(labels)
        if self.sampler == "balanced":
            counts = torch.bincount(labels.cpu(), minlength=self.data.num_classes).clamp(min=1).float()
            weights = (1.0 / counts)[labels.cpu()]
            rows = torch.multinomial(weights, n, replacement=True, generator=generator)
        else:
            rows = torch.randperm(n, generator=generator)
        if mode == "all":
            rows = rows.repeat_interleave(len(degs))
            which = torch.arange(len(degs)).repeat(n)
            perm = torch.randperm(len(rows), generator=generator)
            return rows[perm], which[perm]
        if mode != "random":
            raise UserError(f"unknown degrade.train_mode {mode!r}: choose random or all")
        which = torch.randint(len(degs), (n,), generator=generator)
        return rows, which

    def num_train_batches(self, degs: Sequence[Degradation]) -> int:
        n = len(self.splits["train"]) * (len(degs) if self.degrade_cfg.train_mode == "all" else 1)
        return max(1, n // self.batch_size) if n >= self.batch_size else 1

    def train_batches(self, degs: Sequence[Degradation], seed: int, need_hr: bool = False) -> Iterator[Batch]:
        """One epoch of augmented training batches: this rank's share of every global batch.

        The epoch's order of samples (and of degradations, for a mixed training set) comes from ``seed``
        alone, so it is the same on every rank; global batch b is ``trainer.batch_size`` consecutive entries
        of it, and rank r takes the contiguous slice :func:`shard_range` gives it, so the ranks' shares are
        disjoint and together exactly the one-process batch. The augmentation stream comes from ``seed``
        and the rank (``seed + 1 + rank``; ``seed`` itself derives from the run seed, stage and epoch), so
        ranks do not augment their shares with the same random numbers.
        """
        self.check_trainable(degs)
        cpu_gen = torch.Generator().manual_seed(seed)
        dev_gen = torch.Generator(device=self.device).manual_seed(seed + 1 + self.rank)
        rows, which = self._epoch_order(degs, cpu_gen, self.degrade_cfg.train_mode)
        n_batches = self.num_train_batches(degs)
        bs = self.batch_size if len(rows) >= self.batch_size else len(rows)
        first, stop = shard_range(bs, self.rank, self.world_size)
        if stop == first:
            raise UserError(f"{len(rows)} training samples cannot be shared by {self.world_size} processes")
        for b in range(n_batches):
            sl = slice(b * bs + first, b * bs + stop)
            yield self.make_batch(
                "train", rows[sl], which[sl], degs, augment=True, need_hr=need_hr, generator=dev_gen
            )

    def eval_batches(self, split: str, deg: Degradation, need_hr: bool = False) -> Iterator[Batch]:
        """The whole split (this rank's shard under torchrun) at one degradation, in order, unaugmented."""
        first, stop = shard_range(len(self.splits[split]), self.rank, self.world_size)
        for start in range(first, stop, self.eval_batch_size):
            index = torch.arange(start, min(stop, start + self.eval_batch_size))
            yield self.make_batch(
                split, index, torch.zeros_like(index), [deg], augment=False, need_hr=need_hr
            )
