"""From cached uint8 faces to training batches, entirely with batched tensor operations on the device.

For every (split, degradation) the low-resolution uint8 view is computed once, in chunks, on the training
device, and kept beside the images. A batch then gathers its images from the views (samples of one batch
may come from different degradations), resizes them back to the network input size, augments them on
the device and normalises them (straight into the memory format the networks want). No per-sample Python
and no image decoding happen in the loop.

Nothing in the loop waits for the device: the epoch's order is drawn on the host, every batch's rows are
grouped by degradation there, once per epoch, and the index tensors are moved to the device in one copy,
so a batch is assembled from slices whose sizes the host already knows (no ``nonzero``, no ``.item()``).

When the images stay on the host (``dataset.on_device=false``, or ``auto`` with data too large for the
GPU), a background thread gathers the next batches' uint8 rows into two pinned buffers in turn while the
device trains on the current one; the copies to the device are non-blocking, and a buffer is refilled only
once its copy has finished.

A batch is a dict: ``image`` (float, normalised, N x C x S x S), ``label`` (int64), ``target`` (soft
targets, only when the dataset has them), ``index`` (row in the split), ``factor`` (effective
downsampling factor of each image, float), ``degradation`` (index into the list of degradations the
batch was drawn from) and, when asked for, ``image_hr`` (the native image through the same
augmentation).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from lrfer.core.errors import UserError
from lrfer.data.augment import augment_batch
from lrfer.data.degrade import Degradation, degrade_uint8, resize_to
from lrfer.data.faces import FaceData, FaceSplit
from lrfer.data.shared_views import MachineSharing, source_of, view_name

X1 = Degradation("x1", factor=1.0)


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[start, stop)`` of ``n`` items split over ``world`` processes."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


Batch = dict[str, torch.Tensor]
#: One group of a batch: (index into the degradations, positions in the batch or None for all of it).
Group = tuple[int, "torch.Tensor | None"]


@dataclass
class EpochPlan:
    """This rank's share of every batch of an epoch, with its rows grouped by degradation (on the host).

    ``rows`` / ``which``: split rows and degradation indices, batch after batch (``share`` per batch);
    ``pos``: within every batch, the positions sorted by degradation (stable, so ascending within a
    degradation); ``counts[b][k]``: how many samples of batch b are at degradation k.
    """

    rows: torch.Tensor
    which: torch.Tensor
    pos: torch.Tensor
    counts: list[list[int]]
    share: int

    def groups(self, b: int, pos: torch.Tensor) -> list[Group]:
        """Batch b's groups, ``pos`` being batch b's slice of :attr:`pos` (on any device)."""
        out: list[Group] = []
        offset = 0
        for k, count in enumerate(self.counts[b]):
            if count == pos.shape[0]:  # the whole batch (the last evaluation batch may be short)
                return [(k, None)]
            if count:
                out.append((k, pos[offset : offset + count]))
                offset += count
        return out


def network_input_size(
    degradation: Degradation, native_size: int, input_size: int | None, resize_back: bool
) -> int:
    """Side of the images a network sees: ``degrade.input_size`` (null: the native size) when the degraded
    face is resized back (``degrade.resize_back``), else the degraded face's own side."""
    if resize_back:
        return int(input_size or native_size)
    return degradation.output_size(native_size, native_size)[0]


class FaceDataModule:
    """Serves training and evaluation batches of one dataset at any list of degradations.

    ``prefetch``: serve training batches through the background thread of the host path (see the module
    docstring). None (default): when the images are on the host and training on a GPU.

    ``view_sharing`` (set by the engine under torchrun, several processes per machine): host-resident views
    are made once per machine and memory-mapped by its processes (:mod:`lrfer.data.shared_views`).
    """

    view_sharing: MachineSharing | None = None

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
        prefetch: bool | None = None,
    ) -> None:
        # The values come checked: a run's by lrfer.engine.resolve.resolve (the batch size divisible by
        # the processes included), a test's by its own choice.
        self.rank, self.world_size = rank, world_size
        self.data = data
        self.degrade_cfg = degrade_cfg
        self.augment_cfg = augment_cfg
        self.device = device
        self.storage_device = storage_device or device
        moved: dict = {}  # splits carved from one image tensor share one copy of it
        self.splits: dict[str, FaceSplit] = {
            name: split.to(self.storage_device, moved) for name, split in data.splits.items()
        }
        self._host_labels = {name: split.labels.cpu() for name, split in data.splits.items()}
        on_host = self.storage_device.type == "cpu"
        self.prefetch = on_host and (device.type != "cpu" if prefetch is None else bool(prefetch))
        self.pin = self.prefetch and device.type == "cuda"
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.sampler = sampler
        self.native_size = data.image_size[0]
        self.input_size = int(degrade_cfg.input_size or self.native_size)
        self.resize_back = bool(degrade_cfg.resize_back)
        self.channels = next(iter(self.splits.values())).image_shape[0]
        self.mean = torch.tensor(list(mean), device=device).view(1, -1, 1, 1)[:, : self.channels]
        self.std = torch.tensor(list(std), device=device).view(1, -1, 1, 1)[:, : self.channels]
        #: Layout of the ``image`` tensors (the trainer sets channels_last when the networks use it).
        self.memory_format = torch.contiguous_format
        self._views: dict[tuple[int, str], torch.Tensor] = {}
        self._shared: set[tuple[int, str]] = set()  # views that went through view_sharing (every rank alike)
        self._factor_tables: dict[tuple[str, ...], torch.Tensor] = {}

    @property
    def num_classes(self) -> int:
        """How many expression classes the dataset has."""
        return self.data.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.data.class_names)

    def has_split(self, name: str) -> bool:
        """Whether the dataset has a non-empty split ``name`` (``val`` is absent with val_fraction=0)."""
        return name in self.splits and len(self.splits[name]) > 0

    # -- views --------
    def view(self, split: str, degradation: Degradation) -> torch.Tensor:
        """The uint8 low-resolution view of a split's images, indexed like them (rows of
        ``splits[split].base``; splits carved from one tensor share it). Computed once, on the training
        device in chunks, and kept where the images are."""
        base = self.splits[split].base
        key = (id(base), degradation.label)
        if key not in self._views:
            self._views[key] = self._make_view(base, degradation)
        return self._views[key]

    def _make_view(self, base: torch.Tensor, degradation: Degradation) -> torch.Tensor:
        compute = self.device if base.device != self.device else None
        return degrade_uint8(
            base,
            degradation,
            kernel=self.degrade_cfg.kernel,
            antialias=self.degrade_cfg.antialias,
            seed=int(self.degrade_cfg.get("seed", 0)),  # runs made before degrade.seed existed: 0
            device=compute,
        )

    def _prepare_views(self, split: str, degradations: Sequence[Degradation]) -> None:
        """Make ``split``'s views at ``degradations`` before any batch (and any prefetching thread).

        With :attr:`view_sharing` this is a collective step, taken by every rank at the same point of the
        run (the start of a training epoch and of an evaluation): a view that is a new tensor is made by
        the machine's local rank 0 and memory-mapped by the others. Whether a view goes through the sharing
        depends only on what every rank knows alike (the degradation and the images' shape)."""
        base = self.splits[split].base
        for deg in degradations:
            key = (id(base), deg.label)
            n, c, h, w = base.shape
            size = deg.output_size(h, w)
            if self.view_sharing is None or key in self._shared or (size == (h, w) and not deg.operations):
                self.view(split, deg)  # x1: the images themselves, nothing to share
                continue
            source = source_of(base)
            cfg = self.degrade_cfg
            name = view_name(
                "" if source is None else source[1],
                deg.label,
                kernel=cfg.kernel,
                antialias=bool(cfg.antialias),
                seed=int(cfg.get("seed", 0)),
                device=self.device.type,
            )
            self._views[key] = self.view_sharing.share(
                source,
                name,
                (n, c, *size),
                build=lambda base=base, deg=deg: self._make_view(base, deg),
                have=self._views.pop(key, None),
                on_host=base.device.type == "cpu",
            )
            self._shared.add(key)

    def network_size(self, degradation: Degradation) -> int:
        """Side of the images the network sees for this degradation."""
        return network_input_size(degradation, self.native_size, self.input_size, self.resize_back)

    def check_trainable(self, degradations: Sequence[Degradation]) -> None:
        """Refuse a training mix whose images would have different sizes (resize_back=false)."""
        sizes = {self.network_size(d) for d in degradations}
        if len(sizes) > 1:
            raise UserError(
                f"degrade.resize_back=false gives images of sizes {sorted(sizes)} for "
                f"{[d.label for d in degradations]}: train on one size or set degrade.resize_back=true"
            )

    def _factors(self, degs: Sequence[Degradation]) -> torch.Tensor:
        """Effective factor of each degradation, a float32 table kept on the device."""
        key = tuple(d.label for d in degs)
        if key not in self._factor_tables:
            values = [d.effective_factor(self.native_size) for d in degs]
            self._factor_tables[key] = torch.tensor(values, dtype=torch.float32).to(self.device)
        return self._factor_tables[key]

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device without waiting for it (pinned, non-blocking on a GPU)."""
        if self.device.type == "cuda" and t.device.type == "cpu":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    # -- batch assembly --------
    def _images(self, n: int, parts: list[tuple[Degradation, torch.Tensor | None, torch.Tensor]]):
        """Float images in [0, 1] at the network size from uint8 low-resolution ``parts`` (degradation,
        batch positions or None for the whole batch, uint8 rows on the device)."""
        size = self.network_size(parts[0][0])
        out = None
        for _deg, pos, lr in parts:
            lr = lr.float().div_(255.0)
            lr = resize_to(lr, size, self.degrade_cfg.resize_kernel) if self.resize_back else lr
            if pos is None:
                out = lr
                break
            if out is None:
                out = torch.empty((n, self.channels, size, size), device=self.device)
            out.index_copy_(0, pos, lr)
        return out.clamp_(0.0, 1.0)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        if self.memory_format == torch.contiguous_format:
            return (images - self.mean) / self.std
        out = torch.empty_like(images, memory_format=self.memory_format)
        return torch.sub(images, self.mean, out=out).div_(self.std)

    def _finish(
        self,
        split: str,
        parts,
        hr_rows: torch.Tensor | None,
        *,
        index: torch.Tensor,
        which: torch.Tensor,
        label: torch.Tensor,
        target: torch.Tensor | None,
        degs: Sequence[Degradation],
        augment: bool,
        generator: torch.Generator | None,
    ) -> Batch:
        """Resize, augment and normalise on the device; everything given is already there."""
        n = index.shape[0]
        images = self._images(n, parts)
        hr = None if hr_rows is None else self._images(n, [(X1, None, hr_rows)])
        if augment:
            assert generator is not None
            state = generator.get_state()
            images = augment_batch(images, self.augment_cfg, generator)
            if hr is not None:
                after = generator.get_state()
                generator.set_state(state)
                hr = augment_batch(hr, self.augment_cfg, generator)
                generator.set_state(after)
        batch: Batch = {
            "image": self._normalise(images),
            "label": label,
            "index": index,
            "factor": self._factors(degs)[which],
            "degradation": which,
        }
        if target is not None:
            batch["target"] = target
        if hr is not None:
            batch["image_hr"] = self._normalise(hr)
        return batch

    def _assemble(
        self,
        split: str,
        index: torch.Tensor,
        which: torch.Tensor,
        groups: list[Group],
        degs: Sequence[Degradation],
        *,
        augment: bool,
        need_hr: bool,
        generator: torch.Generator | None,
        base_rows: torch.Tensor | None = None,
    ) -> Batch:
        """A batch from index tensors (split rows on the storage device, degradations on the device)
        already grouped by degradation: no value is read back from the device."""
        data = self.splits[split]
        if base_rows is None:
            base_rows = data.base_index(index)
        parts = []
        for k, pos in groups:
            rows = base_rows if pos is None else base_rows[pos.to(base_rows.device)]
            lr = self.view(split, degs[k])[rows]
            parts.append((degs[k], None if pos is None else pos.to(self.device), self._on_device(lr)))
        hr = self._on_device(self.view(split, X1)[base_rows]) if need_hr else None
        target = None if data.targets is None else self._on_device(data.targets[index])
        return self._finish(
            split,
            parts,
            hr,
            index=self._on_device(index),
            which=self._on_device(which),
            label=self._on_device(data.labels[index]),
            target=target,
            degs=degs,
            augment=augment,
            generator=generator,
        )

    def _on_device(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.device == self.device else t.to(self.device, non_blocking=True)

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
        """Assemble the batch of rows ``index`` of ``split``, row i at degradation ``degs[which[i]]``.

        A convenience for one-off batches (it reads ``which`` on the host); the training loop uses
        :meth:`train_batches`, whose groups are planned once per epoch."""
        which_host = which.cpu()
        groups: list[Group] = []
        for k in range(len(degs)):
            pos = torch.nonzero(which_host == k).flatten()
            if len(pos) == len(which_host):
                groups = [(k, None)]
                break
            if len(pos):
                groups.append((k, pos))
        return self._assemble(
            split,
            index.to(self.storage_device),
            which.to(self.device),
            groups,
            degs,
            augment=augment,
            need_hr=need_hr,
            generator=generator,
        )

    # -- iteration --------
    def _epoch_order(self, degs: Sequence[Degradation], generator: torch.Generator, mode: str):
        labels = self._host_labels["train"]
        n = len(labels)
        if self.sampler == "balanced":
            counts = torch.bincount(labels, minlength=self.data.num_classes).clamp(min=1).float()
            weights = (1.0 / counts)[labels]
            rows = torch.multinomial(weights, n, replacement=True, generator=generator)
        else:
            rows = torch.randperm(n, generator=generator)
        if mode == "all":
            rows = rows.repeat_interleave(len(degs))
            which = torch.arange(len(degs)).repeat(n)
            perm = torch.randperm(len(rows), generator=generator)
            return rows[perm], which[perm]
        which = torch.randint(len(degs), (n,), generator=generator)
        return rows, which

    def num_train_batches(self, degs: Sequence[Degradation]) -> int:
        n = len(self.splits["train"]) * (len(degs) if self.degrade_cfg.train_mode == "all" else 1)
        return max(1, n // self.batch_size) if n >= self.batch_size else 1

    def epoch_plan(self, degs: Sequence[Degradation], seed: int) -> EpochPlan:
        """This rank's share of every batch of the epoch of ``seed``, grouped by degradation (host)."""
        rows, which = self._epoch_order(
            degs, torch.Generator().manual_seed(seed), self.degrade_cfg.train_mode
        )
        n_batches = self.num_train_batches(degs)
        bs = self.batch_size if len(rows) >= self.batch_size else len(rows)
        first, stop = shard_range(bs, self.rank, self.world_size)
        if stop == first:
            raise UserError(f"{len(rows)} training samples cannot be shared by {self.world_size} processes")
        share = stop - first
        take = (torch.arange(n_batches)[:, None] * bs + torch.arange(first, stop)[None, :]).flatten()
        rows, which = rows[take], which[take]
        batch_of = torch.arange(n_batches).repeat_interleave(share)
        key = batch_of * len(degs) + which
        pos = torch.argsort(key, stable=True) - batch_of * share
        counts = torch.bincount(key, minlength=n_batches * len(degs)).view(n_batches, len(degs)).tolist()
        return EpochPlan(rows, which, pos, counts, share)

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
        plan = self.epoch_plan(degs, seed)
        dev_gen = torch.Generator(device=self.device).manual_seed(seed + 1 + self.rank)
        self._prepare_views("train", [*degs, *([X1] if need_hr else [])])
        if self.prefetch:
            yield from self._host_batches(plan, degs, need_hr, dev_gen)
            return
        # One copy per epoch of the index tensors (pinned, non-blocking), then only slices of them.
        rows = self._to_device(plan.rows) if self.storage_device == self.device else plan.rows
        base = self.splits["train"].base_index(rows)
        which, pos = self._to_device(plan.which), self._to_device(plan.pos)
        s = plan.share
        for b in range(len(plan.counts)):
            sl = slice(b * s, (b + 1) * s)
            yield self._assemble(
                "train",
                rows[sl],
                which[sl],
                plan.groups(b, pos[sl]),
                degs,
                augment=True,
                need_hr=need_hr,
                generator=dev_gen,
                base_rows=base[sl],
            )

    def eval_plan(self, first: int, stop: int) -> EpochPlan:
        """Rows ``first..stop-1`` of a split in evaluation batches (the last one may be short), at one
        degradation: the plan the prefetching thread reads."""
        rows = torch.arange(first, stop)
        bs = self.eval_batch_size
        starts = range(0, len(rows), bs)
        counts = [[min(bs, len(rows) - b)] for b in starts]
        pos = torch.arange(len(rows)) % bs
        return EpochPlan(rows, torch.zeros(len(rows), dtype=torch.long), pos, counts, bs)

    # -- the host path --------
    def _host_batches(
        self, plan: EpochPlan, degs, need_hr: bool, generator, split: str = "train", augment: bool = True
    ) -> Iterator[Batch]:
        """Batches of host-resident images (training, or evaluation with ``augment=False``), gathered
        ahead into pinned buffers by a background thread."""
        if not plan.counts:
            return
        loader = _Prefetcher(self, plan, degs, need_hr, split)
        try:
            for _ in range(len(plan.counts)):
                slot, host = loader.next()
                dev = {
                    k: (v if v is None else self._to_device_async(v)) for k, v in host.items() if k != "lr"
                }
                parts = [
                    (degs[k], None if pos is None else self._to_device_async(pos), self._to_device_async(lr))
                    for k, pos, lr in host["lr"]
                ]
                loader.release(slot)  # the slot is refilled only once these copies are done
                yield self._finish(
                    split,
                    parts,
                    dev["hr"],
                    index=dev["index"],
                    which=dev["which"],
                    label=dev["label"],
                    target=dev["target"],
                    degs=degs,
                    augment=augment,
                    generator=generator,
                )
        finally:
            loader.close()

    def _to_device_async(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)

    def eval_batches(self, split: str, deg: Degradation, need_hr: bool = False) -> Iterator[Batch]:
        """The whole split (this rank's shard under torchrun) at one degradation, in order, unaugmented.

        Host-resident images are served like training batches (:attr:`prefetch`): gathered ahead into
        pinned buffers by the background thread and copied to the device without waiting."""
        self._prepare_views(split, [deg, *([X1] if need_hr else [])])  # every rank, also with no shard
        first, stop = shard_range(len(self.splits[split]), self.rank, self.world_size)
        if self.prefetch:
            yield from self._host_batches(
                self.eval_plan(first, stop), [deg], need_hr, None, split=split, augment=False
            )
            return
        for start in range(first, stop, self.eval_batch_size):
            index = torch.arange(start, min(stop, start + self.eval_batch_size), device=self.storage_device)
            which = torch.zeros(index.shape, dtype=torch.long, device=self.device)
            yield self._assemble(
                split, index, which, [(0, None)], [deg], augment=False, need_hr=need_hr, generator=None
            )


class _Prefetcher:
    """A thread gathering the host path's next batches into ``SLOTS`` buffers in turn (pinned on a GPU).

    The worker fills a free slot with batch b's uint8 rows (one tensor per degradation group, plus the
    native rows for ``image_hr``), labels, targets and indices; the training loop takes it, starts its
    non-blocking copies to the device and releases the slot with a CUDA event marking the copies' end;
    the worker waits for that event before it overwrites the slot. The epoch's order and grouping come
    from the :class:`EpochPlan`; the random augmentation stays on the training thread, so batches are
    the ones the device path gives.
    """

    SLOTS = 2

    def __init__(
        self, dm: FaceDataModule, plan: EpochPlan, degs, need_hr: bool, split: str = "train"
    ) -> None:
        self.dm, self.plan, self.degs, self.need_hr, self.split = dm, plan, degs, need_hr, split
        self.free: queue.Queue = queue.Queue()
        self.ready: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.buffers: list[dict] = [{} for _ in range(self.SLOTS)]
        for slot in range(self.SLOTS):
            self.free.put((slot, None))
        self.thread = threading.Thread(target=self._run, name="lrfer-prefetch", daemon=True)
        self.thread.start()

    def _buffer(self, slot: int, name: str, like: torch.Tensor, n: int) -> torch.Tensor | None:
        """Slot ``slot``'s pinned buffer ``name`` for ``n`` rows like ``like`` (None: allocate per batch)."""
        if not self.dm.pin:
            return None
        buf = self.buffers[slot].get(name)
        shape = (self.plan.share, *like.shape[1:])
        if buf is None or buf.shape != shape or buf.dtype != like.dtype:
            buf = torch.empty(shape, dtype=like.dtype, pin_memory=True)
            self.buffers[slot][name] = buf
        return buf[:n]

    def _gather(self, slot: int, name: str, source: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        out = self._buffer(slot, name, source, len(rows))
        return (
            torch.index_select(source, 0, rows)
            if out is None
            else torch.index_select(source, 0, rows, out=out)
        )

    def _fill(self, b: int, slot: int) -> dict:
        dm, plan, s = self.dm, self.plan, self.plan.share
        train = dm.splits[self.split]
        rows = plan.rows[b * s : (b + 1) * s]
        base = train.base_index(rows)
        pos = plan.pos[b * s : (b + 1) * s]
        lr = []
        for k, p in plan.groups(b, pos):
            sel = base if p is None else base[p]
            view = dm.view(self.split, self.degs[k])
            lr.append(
                (
                    k,
                    None if p is None else self._copy(slot, f"pos{k}", p),
                    self._gather(slot, f"lr{k}", view, sel),
                )
            )
        return {
            "lr": lr,
            "hr": self._gather(slot, "hr", dm.view(self.split, X1), base) if self.need_hr else None,
            "index": self._copy(slot, "index", rows),
            "which": self._copy(slot, "which", plan.which[b * s : (b + 1) * s]),
            "label": self._gather(slot, "label", train.labels, rows),
            "target": None if train.targets is None else self._gather(slot, "target", train.targets, rows),
        }

    def _copy(self, slot: int, name: str, t: torch.Tensor) -> torch.Tensor:
        out = self._buffer(slot, name, t, len(t))
        return t.clone() if out is None else out.copy_(t)

    def _run(self) -> None:
        try:
            for b in range(len(self.plan.counts)):
                while True:
                    if self.stop.is_set():
                        return
                    try:
                        slot, event = self.free.get(timeout=0.1)
                        break
                    except queue.Empty:
                        continue
                if event is not None:
                    event.synchronize()  # the device has finished copying this slot's previous batch
                self.ready.put((slot, self._fill(b, slot)))
        except BaseException as err:  # surfaced on the training thread
            self.ready.put((None, err))

    def next(self) -> tuple[int, dict]:
        while True:
            try:
                slot, item = self.ready.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError("the prefetching thread stopped") from None
        if slot is None:
            raise item
        return slot, item

    def release(self, slot: int) -> None:
        event = None
        if self.dm.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self.free.put((slot, event))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
