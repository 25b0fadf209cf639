"""The shared trainer: drives any :class:`~lrfer.methods.base.Method` through its stages.

Per stage it builds one optimiser and one epoch scheduler per optimisation step, trains for the stage's
epochs (capped by ``trainer.max_epochs``), validates on the validation split, keeps ``best.pt`` (best
validation score of the stage, never the test split) and ``last.pt`` (everything needed to continue:
method, optimisers, schedulers, position, best score), and restores the best epoch at the end of the
stage. A run without a validation split (``dataset.val_fraction=0``, ``dataset.merge_val=true``) writes no
``best.pt`` and keeps every stage's last epoch. Every epoch's randomness derives from
``(seed, stage, epoch, rank)``, so a resumed run repeats the uninterrupted one exactly. Under torchrun each
rank trains on its own share of every global batch
(:meth:`~lrfer.data.pipeline.FaceDataModule.train_batches`), with its own augmentation and its own global
RNG stream (dropout, random interpolation weights), and DDP averages the gradients.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from lrfer.core.checkpoint import load_checkpoint
from lrfer.core.errors import ProcessError, UserError
from lrfer.data.degrade import Degradation, as_degradations, parse_degradations
from lrfer.data.pipeline import Batch, FaceDataModule
from lrfer.engine import distributed as dist
from lrfer.engine.checkpoint_writer import STAGE_START, CheckpointSchedule, CheckpointWriter, stage_state_keys
from lrfer.engine.deferred_log import DeferredScalars
from lrfer.engine.metrics import add_to_confusion_, check_metric_name, metrics_from_confusion, named_metric
from lrfer.engine.optim import (
    EpochScheduler,
    apply_resumed_settings,
    build_optimizer,
    check_resumed_settings,
    step_settings,
)
from lrfer.engine.resolve import RunSpec, resolve
from lrfer.engine.stop import StopRequest, Terminated
from lrfer.engine.tblog import RunLogger
from lrfer.methods.base import Method, Stage

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
#: What ``last.pt`` must hold to be resumed from.
RESUME_KEYS = (
    "version",
    "stage_index",
    "epoch",
    "global_step",
    "method",
    "optimizers",
    "schedulers",
    "summary",
    "summaries",
)
#: ``torch.compile`` backend of ``trainer.compile`` (the tests swap in a recording backend).
COMPILE_BACKEND = "inductor"


def derive_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (stable across Python processes, unlike ``hash``)."""
    value = 0x9E3779B97F4A7C15
    for p in parts:
        value = (value * 6364136223846793005 + int(p) + 1442695040888963407) % (1 << 63)
    return value


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


def apply_backend_settings(cfg, device: torch.device) -> None:
    """cuDNN / TF32 / determinism flags for training on ``device`` (nothing to set on a CPU).

    ``trainer.deterministic=false`` (default) lets cuDNN benchmark its convolution algorithms for the
    shapes it meets (``cudnn.benchmark``): faster, but two GPU runs of the same seed can differ in the last
    bits, and so can a resumed run from the uninterrupted one. ``trainer.deterministic=true`` asks for
    deterministic kernels (cuDNN, cuBLAS workspace, ``torch.use_deterministic_algorithms`` with warnings
    for ops that have none): the price of exact resume on a GPU. ``trainer.tf32=true`` (default) lets
    float32 matrix products and convolutions use TensorFloat-32 (``set_float32_matmul_precision('high')``);
    ``false`` keeps full float32 ('highest'). CPU runs repeat bit for bit whatever these say.
    """
    if device.type != "cuda":
        return
    deterministic = bool(cfg.deterministic)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.set_float32_matmul_precision("high" if cfg.tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = bool(cfg.tf32)


def compile_networks(networks, mode: str) -> None:
    """``torch.compile`` every network in place: its ``forward`` and the methods its class lists in
    ``compiled_methods`` (entry points a method calls directly, such as a feature classifier's
    ``feature_map`` / ``embed`` / ``classify``), each replaced on the instance by its compiled version.
    State dicts keep their keys. (``nn.Module.compile`` is not used: it compiles ``_call_impl``, which
    dynamo skips for torch's own modules, so a bare ``nn.Linear`` head would stay eager.)"""
    kwargs = {"backend": COMPILE_BACKEND}
    if mode != "default":
        kwargs["mode"] = mode
    seen: set[int] = set()
    for net in networks:
        if id(net) in seen:
            continue
        seen.add(id(net))
        for name in ("forward", *getattr(net, "compiled_methods", ())):
            bound = getattr(type(net), name).__get__(net)
            setattr(net, name, torch.compile(bound, **kwargs))


def pad_batch(batch: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """``batch`` with every per-sample tensor padded to ``rows`` rows by repeating its last row (the
    outputs of the padding rows are dropped): every evaluation batch then has one shape."""
    n = batch["label"].shape[0]
    if n >= rows:
        return batch
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n:
            v = torch.cat([v, v[-1:].expand(rows - n, *v.shape[1:])])
        out[k] = v
    return out


def progress_lines(iterable, total: int, desc: str, every_s: float, clock=time.monotonic):
    """Yield from ``iterable``, logging ``<desc>: step i/total (p%), r steps/s`` at most once per ``every_s``
    seconds (what a log file gets instead of a progress bar). Reads the clock only: no device sync."""
    start = last = clock()
    for i, item in enumerate(iterable, 1):
        yield item
        now = clock()
        if now - last >= every_s and i < total:
            last = now
            rate = i / max(now - start, 1e-9)
            log.info("%s: step %d/%d (%.0f%%), %.2f steps/s", desc, i, total, 100 * i / max(total, 1), rate)


@dataclass
class StageRun:
    """A stage ready to train (:meth:`Trainer.prepare_stage`): its degradations, optimisers and schedulers."""

    index: int
    stage: Stage
    epochs: int
    train_degs: list[Degradation]
    val_labels: list[str]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, EpochScheduler]


@dataclass
class _EpochSums:
    """What an epoch accumulates on the device, read once at its end."""

    losses: dict[str, torch.Tensor]
    correct: torch.Tensor
    #: per step: whether its loss was ever non-finite, and the first non-finite value
    bad: dict[str, torch.Tensor]
    bad_value: dict[str, torch.Tensor]
    seen: int = 0
    steps: int = 0
    has_logits: bool = False

    @classmethod
    def zeros(cls, steps: Sequence[str], device: torch.device) -> _EpochSums:
        return cls(
            losses={},
            correct=torch.zeros((), device=device),
            bad={step: torch.zeros((), dtype=torch.bool, device=device) for step in steps},
            bad_value={step: torch.zeros((), device=device) for step in steps},
        )


@dataclass
class StageSummary:
    name: str
    epochs: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    best_epoch: int | None = None
    best_val: float | None = None


class Trainer:
    """Trains a method on a :class:`FaceDataModule` and evaluates it at lists of degradations."""

    def __init__(
        self,
        spec: RunSpec,
        method: Method,
        data: FaceDataModule,
        *,
        logger: RunLogger | None = None,
        identity: dict | None = None,
        phase_timer: Callable[[str], AbstractContextManager] | None = None,
    ) -> None:
        """A trainer of ``method`` on ``data`` as the resolved run ``spec`` says (:func:`resolve`).

        ``phase_timer(phase)``: a context manager entered around each ``"train"``, ``"val"`` and
        ``"checkpoint"`` phase of an epoch (the benches time the phases with it)."""
        self.spec = spec
        self.cfg = cfg = spec.cfg.trainer
        #: What a resume must match (method, model, dataset shape), stored in every checkpoint as "config".
        self.identity = identity
        self.data = data
        self.device = device = spec.device
        self.seed = spec.seed
        self.run_dir = spec.run_dir
        self.logger = logger or RunLogger(None, enabled=False)
        self.train_degrade = list(spec.degrade.train)
        self.val_degrade = list(spec.degrade.val)
        self.amp_dtype = spec.trainer.amp_dtype
        self.channels_last = spec.trainer.channels_last
        self.phase_timer = phase_timer or (lambda phase: contextlib.nullcontext())
        apply_backend_settings(cfg, device)
        self.method = method.to(device)
        if self.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        # Batches are normalised straight into the layout the networks want (no extra copy per step).
        data.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model: torch.nn.Module = self.method  # wrapped in DDP per stage under torchrun
        log.info(
            "device %s, %s, channels_last=%s",
            device,
            "bf16 autocast" if self.amp_dtype is not None else "fp32",
            str(self.channels_last).lower(),
        )
        if cfg.compile:
            compile_networks(self.method.networks(), cfg.compile_mode)
        self.has_val = data.has_split("val")
        self.global_step = 0
        self.summaries: list[StageSummary] = []
        self.val_history: list[dict] = []
        #: CPU seconds of the run's earlier starts, up to the checkpoint this start resumed from (0 on a
        #: first start): ``metrics.json`` ``cpu_s`` adds this process's own, so a resumed run counts them all.
        self.cpu_s_earlier = 0.0
        # Only the main process writes checkpoints; the others do no checkpoint work at all.
        self.writer = CheckpointWriter(self.run_dir is not None and dist.is_main(), pin=device.type == "cuda")
        self.stop = StopRequest()
        #: Pad every evaluation batch to ``eval_batch_size`` rows (CUDA graphs replay fixed shapes only).
        self.fixed_eval_shapes = bool(cfg.compile) and cfg.compile_mode == "reduce-overhead"
        #: ``state_dict`` keys the current stage changes (None: all); what a mid-stage ``last.pt`` holds.
        self._stage_keys: set[str] | None = None

    @classmethod
    def from_config(
        cls,
        cfg: DictConfig,
        method: Method,
        data: FaceDataModule,
        *,
        run_dir: Path | None = None,
        logger: RunLogger | None = None,
        identity: dict | None = None,
    ) -> Trainer:
        """The trainer of a composed config (:func:`lrfer.config.compose_config` users): ``cfg`` is
        resolved first (:func:`resolve`); no run folder (checkpoints) or logger unless given."""
        return cls(resolve(cfg, run_dir), method, data, logger=logger, identity=identity)

    # -- helpers --------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.channels_last:
            for key in ("image", "image_hr"):
                if key in batch:
                    batch[key] = batch[key].contiguous(memory_format=torch.channels_last)
        return batch

    def _progress(self, iterable, total: int | None, desc: str):
        """A tqdm bar on a terminal; otherwise a log line every ``trainer.progress_every_s`` seconds
        (neither for batches of unknown number, or on a process other than the first)."""
        if not dist.is_main() or total is None:
            return iterable
        if self.spec.trainer.progress:
            return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
        every = self.cfg.get("progress_every_s")
        return iterable if not every else progress_lines(iterable, total, desc, float(every))

    def _stage_epochs(self, stage: Stage) -> int:
        cap = self.cfg.max_epochs
        return stage.epochs if cap is None else min(stage.epochs, int(cap))

    def _merged(self, base, override, step: str):
        if not override:
            return base
        override = dict(override)
        if step in override and isinstance(override[step], dict):
            override = override[step]
        elif any(isinstance(v, dict) for v in override.values()):
            override = override.get(step, {})
        return OmegaConf.merge(base, override)

    def _monitor(self, stage: Stage, val_labels: list[str]) -> str | None:
        """The validation metric that picks the stage's best epoch, or None (no selection)."""
        if stage.monitor is False or stage.monitor is None:
            return None
        if stage.monitor is True:
            label, _, metric = str(self.cfg.monitor).rpartition("/")
            if label and label not in val_labels:
                # a stage validated at its own degradations (a teacher on x1): the metric over those
                log.info("stage %s is validated on %s: it selects on %s", stage.name, val_labels, metric)
                return metric
            return str(self.cfg.monitor)
        check_metric_name(stage.monitor, val_labels, f"the monitor of stage {stage.name}")
        return str(stage.monitor)

    def stage_sync_bn(self, stage: Stage) -> bool:
        """``trainer.sync_bn`` for this stage: null (auto) synchronises on CUDA with several processes."""
        if dist.world_size() <= 1:
            return False
        sync_bn = self.spec.trainer.sync_bn
        want = self.device.type == "cuda" if sync_bn is None else bool(sync_bn)
        if want and not stage.sync_bn:
            log.info("stage %s keeps per-process BatchNorm (it cannot be synchronised)", stage.name)
            return False
        return want

    def _ckpt(self, name: str) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoints" / name

    # -- evaluation --------
    @torch.inference_mode()
    def evaluate(
        self,
        split: str,
        degradations: Sequence[Degradation | str],
        stage: Stage | None = None,
        keep_confusion: bool = False,
    ) -> dict[str, dict]:
        """Metrics per degradation on ``split`` (``acc``, ``balanced_acc``, ``n``, method extras), keyed by
        label; ``degradations`` are parsed ones (a run's spec) or labels."""
        was_training = self.method.training
        self.method.eval()
        k = self.data.num_classes
        degs = as_degradations(degradations)
        # Every rank sums the method's declared values, in the declared order, even with an empty shard.
        names = tuple(self.method.evaluation_values(stage))
        cms = torch.zeros(len(degs), k, k, dtype=torch.long, device=self.device)
        sums = torch.zeros(len(degs), len(names), dtype=torch.float64, device=self.device)
        for d, deg in enumerate(degs):
            for batch in self.data.eval_batches(split, deg):
                n = batch["label"].shape[0]
                if self.fixed_eval_shapes:
                    batch = pad_batch(batch, self.data.eval_batch_size)
                batch = self._prepare(batch)
                with self._autocast():
                    out = self.method.evaluate_step(batch, stage)
                out = {k: v[:n] for k, v in out.items()}  # per-sample values of the real rows
                batch = {k: v[:n] if isinstance(v, torch.Tensor) and v.dim() else v for k, v in batch.items()}
                add_to_confusion_(cms[d], out["logits"].argmax(dim=1), batch["label"])
                undeclared = set(out) - {"logits", *names}
                if undeclared:
                    raise ValueError(
                        f"{type(self.method).__name__}.evaluate_step returned {sorted(undeclared)}, which "
                        f"its evaluation_values({stage.name if stage else None}) does not declare"
                    )
                for i, key in enumerate(names):
                    if key in out:
                        sums[d, i] += out[key].detach().double().sum()
        # One all-reduce and one read of the whole evaluation (not one per degradation and value).
        cms = dist.all_reduce_sum(cms).cpu()
        sums = dist.all_reduce_sum(sums).cpu()
        results: dict[str, dict] = {}
        for d, deg in enumerate(degs):
            row: dict = metrics_from_confusion(cms[d])
            for i, key in enumerate(names):
                row[key] = float(sums[d, i].item() / max(1, row["n"]))
            if keep_confusion:
                row["confusion"] = cms[d].tolist()
            results[deg.label] = row
        self.method.train(was_training)
        return results

    # -- training --------
    def fit(self) -> list[StageSummary]:
        stages = self.method.stages()
        if not stages:
            raise ValueError(f"{type(self.method).__name__}.stages() returned no stage")
        resume = self._load_resume_state()
        with self.stop.on_sigterm(), self._flushed_on_exit():
            for si, stage in enumerate(stages):
                if resume is not None and si < resume["stage_index"]:
                    self.summaries.append(StageSummary(**resume["summaries"][si]))
                    continue
                state = resume if (resume is not None and si == resume["stage_index"]) else None
                self._fit_stage(si, stage, state)
                resume = None
        return self.summaries

    @contextlib.contextmanager
    def _flushed_on_exit(self):
        """Every checkpoint handed to the background writer is on disk when training ends, also when it
        fails (the error in flight wins over one of the last write, which is logged)."""
        try:
            yield
        except BaseException:
            try:
                self.writer.close()
            except Exception as err:  # the training error is the one to report
                log.error("the last checkpoint could not be written: %s", err)
            raise
        self.writer.close()
        base = self._ckpt(STAGE_START)
        if base is not None and dist.is_main():
            base.unlink(missing_ok=True)  # the last last.pt holds the whole method

    def close(self) -> None:
        """Wait for the checkpoint being written in the background (``fit`` does so before it returns)."""
        self.writer.close()

    def _load_resume_state(self) -> dict | None:
        if not self.cfg.resume:
            return None
        path = self._ckpt("last.pt")  # there is one: the run folder was checked (resolve)
        state = load_checkpoint(path, require=RESUME_KEYS)
        if state.get("version") != CHECKPOINT_VERSION:
            raise UserError(f"{path} was written by another lrfer checkpoint version: cannot resume from it")
        try:
            self.method.load_state_dict(state["method"])
        except (RuntimeError, KeyError, TypeError) as err:
            raise UserError(
                f"{path} does not fit this method ({str(err).splitlines()[0]}): resume with the run's own "
                "method and model, or train into a new hydra.run.dir"
            ) from None
        self.global_step = int(state["global_step"])
        self.val_history = list(state.get("val_history", []))
        # a checkpoint written before it recorded its CPU seconds: the kept epochs' own (a lower bound)
        self.cpu_s_earlier = float(state.get("cpu_s", sum(h.get("cpu_s", 0.0) for h in self.val_history)))
        log.info("resuming from %s (stage %d, epoch %d)", path, state["stage_index"], state["epoch"])
        return state

    def prepare_stage(self, si: int, stage: Stage, state: dict | None = None) -> StageRun:
        """Start stage ``si``: the method told (and given ``state``'s weights when resuming), the model
        wrapped (DDP, ``torch.compile``), one optimiser and epoch scheduler per step built. Train its
        epochs with :meth:`train_one_epoch` (what :meth:`fit` does, and the benches)."""
        epochs = self._stage_epochs(stage)
        train_degs = parse_degradations(stage.train_degrade) if stage.train_degrade else self.train_degrade
        val_degs = parse_degradations(stage.val_degrade) if stage.val_degrade else self.val_degrade
        self.data.check_trainable(train_degs)
        self.method.on_stage_start(stage)
        if state is not None:
            self.method.load_state_dict(state["method"])
        if not self.has_val:
            self._check_plateau_has_validation(stage)
        self.model = self.wrap_stage(stage)
        self._start_stage_checkpoints(si, stage, fresh=state is None)
        optimizers, schedulers = self.build_optimizers(stage, epochs)
        labels = [d.label for d in val_degs]
        return StageRun(si, stage, epochs, list(train_degs), labels, optimizers, schedulers)

    def _check_plateau_has_validation(self, stage: Stage) -> None:
        for step in stage.steps:
            sched_cfg = self._merged(self.cfg.scheduler, stage.scheduler, step)
            if sched_cfg.name == "plateau" and sched_cfg.monitor == "val_acc":
                raise UserError(
                    "trainer.scheduler=plateau watches val_acc but this run has no validation split "
                    "(dataset.val_fraction=0 or dataset.merge_val=true): "
                    "set trainer.scheduler.monitor=train_acc"
                )

    def _resume_stage(self, run: StageRun, state: dict) -> tuple[StageSummary, int]:
        """Optimisers and schedulers of a resumed stage as ``last.pt`` left them; its summary and epoch."""
        stored = state.get("settings") or {}
        for step in run.stage.steps:
            where = f"stage {run.stage.name}, step {step}"
            optimizer, scheduler = run.optimizers[step], run.schedulers[step]
            check_resumed_settings(stored.get(step), self.step_settings[step], where)
            optimizer.load_state_dict(state["optimizers"][step])
            rebuilt = scheduler.load_state_dict(state["schedulers"][step])
            if rebuilt:
                log.warning("%s: %s", where, rebuilt)
            for line in apply_resumed_settings(
                stored.get(step), self.step_settings[step], optimizer, scheduler
            ):
                log.warning("resuming %s with %s", where, line)
        return StageSummary(**state["summary"]), int(state["epoch"])

    def _fit_stage(self, si: int, stage: Stage, state: dict | None) -> None:
        run = self.prepare_stage(si, stage, state)
        monitor = self._monitor(stage, run.val_labels)
        summary, start_epoch = StageSummary(stage.name), 0
        if state is not None:
            summary, start_epoch = self._resume_stage(run, state)
        log.info("stage %s: %d epochs on %s", stage.name, run.epochs, [d.label for d in run.train_degs])
        schedule = CheckpointSchedule(self.cfg.checkpoint_every, self.cfg.checkpoint_budget)
        trained_seconds = 0.0
        for epoch in range(start_epoch, run.epochs):
            t0, cpu0 = time.perf_counter(), time.process_time()
            with self.phase_timer("train"):
                losses, train_acc = self.train_one_epoch(run, epoch)
            self.method.on_epoch_end(stage, epoch + 1)
            val_acc = None
            due = (epoch + 1) % self.cfg.val_every == 0 or epoch + 1 == run.epochs
            if self.has_val and monitor and due:
                val_acc = self._validate(run, epoch, monitor, summary, cpu0)
            for step, sched in run.schedulers.items():
                sched.step(val_acc, train_acc)
                self.logger.scalars(
                    {f"lr/{stage.name}/{step}": run.optimizers[step].param_groups[0]["lr"]}, self.global_step
                )
            summary.epochs = epoch + 1
            summary.losses = losses
            trained_seconds += time.perf_counter() - t0
            stop = self.stop.agreed
            if schedule.due(last_of_stage=epoch + 1 == run.epochs, stop=stop):
                self._checkpoint(run, epoch, summary, schedule, trained_seconds)
                trained_seconds = 0.0
            msg = " ".join(f"{k}={v:.4f}" for k, v in losses.items())
            shown = f" val {monitor}={val_acc:.4f}" if val_acc is not None else ""
            elapsed = time.perf_counter() - t0
            log.info("[%s] epoch %d/%d %s%s (%.1fs)", stage.name, epoch + 1, run.epochs, msg, shown, elapsed)
            if stop:
                self.writer.flush()
                raise Terminated(
                    f"stopped by SIGTERM after epoch {epoch + 1} of stage {stage.name}, which "
                    f"{self._ckpt('last.pt')} holds: continue with trainer.resume=true"
                )
        if self.cfg.restore_best and monitor and summary.best_epoch is not None:
            self._restore_best(si)
        self.method.on_stage_end(stage)
        self.summaries.append(summary)

    def _validate(self, run: StageRun, epoch: int, monitor: str, summary: StageSummary, cpu0: float) -> float:
        """Validate after ``epoch``: log it, keep it in the history, save ``best.pt`` when it is the best.

        The history entry also holds ``cpu_s``, this process's CPU seconds since ``cpu0`` (the epoch's start:
        its training and this validation, every thread), so each run's history measures what an epoch of
        each stage costs."""
        stage = run.stage
        with self.phase_timer("val"):
            val = self.evaluate("val", run.val_labels, stage)
        score = named_metric(val, monitor, "the monitored metric")
        cpu_s = round(time.process_time() - cpu0, 2)
        self.val_history.append(
            {
                "stage": stage.name,
                "epoch": epoch + 1,
                "monitor": monitor,
                "score": score,
                "val": val,
                "cpu_s": cpu_s,
            }
        )
        self.logger.scalars(
            {f"{lbl}/{k}": v[k] for lbl, v in val.items() for k in v if k not in ("n", "confusion")},
            self.global_step,
            prefix=f"val/{stage.name}/",
        )
        if summary.best_val is None or score > summary.best_val:
            summary.best_val, summary.best_epoch = score, epoch + 1
            self._save_best(run.index, stage, epoch + 1, score, val)
        return score

    def _checkpoint(
        self, run: StageRun, epoch: int, summary: StageSummary, schedule: CheckpointSchedule, seconds: float
    ) -> None:
        """``last.pt`` after ``epoch``; the schedule learns what it cost against ``seconds`` of training."""
        whole = epoch + 1 == run.epochs
        with self.phase_timer("checkpoint"):
            self._save_last(run.index, epoch + 1, run.optimizers, run.schedulers, summary, whole=whole)
        per_epoch = seconds / max(1, schedule.since)
        schedule.done(self.writer.last_cost, per_epoch)
        if self.writer.last_wait > schedule.budget * per_epoch * schedule.every:
            log.warning(
                "checkpoint waited %.2fs for the previous write: a slow disk; consider a larger "
                "trainer.checkpoint_every",
                self.writer.last_wait,
            )

    def wrap_stage(self, stage: Stage) -> torch.nn.Module:
        """What runs a training step of ``stage``: the method, or under torchrun DDP over the modules the
        stage trains (synchronised when it is built), compiled with them when ``trainer.compile``."""
        trained = [p for step in stage.steps for p in self.method.stage_parameters(stage, step)]
        find_unused = stage.find_unused_parameters
        model = dist.wrap_stage(
            self.method,
            trained,
            self.device,
            find_unused_parameters=len(stage.steps) > 1 if find_unused is None else bool(find_unused),
            sync_bn=self.stage_sync_bn(stage),
        )
        if self.cfg.compile and model is not self.method:
            # Compile the DDP-wrapped module, so that its gradient buckets' all-reduce overlaps the
            # compiled backward (the networks inside are compiled too, for what dynamo cannot inline).
            # Per stage, from a clean cache: the step is guarded on its stage, and dynamo compiles one code
            # object at most ``recompile_limit`` (8) times, so DRGFER's 9th stage would run uncompiled.
            # The stages before are done, and their graphs are not needed again.
            torch._dynamo.reset()
            kwargs = {} if self.cfg.compile_mode == "default" else {"mode": self.cfg.compile_mode}
            model = torch.compile(model, backend=COMPILE_BACKEND, **kwargs)
        return model

    def build_optimizers(self, stage: Stage, epochs: int):
        """One optimiser and one epoch scheduler per optimisation step of ``stage``."""
        optimizers, schedulers = {}, {}
        #: per step, the settings stored in last.pt that a resume compares with its own
        self.step_settings = {}
        for step in stage.steps:
            opt_cfg = self._merged(self.cfg.optimizer, stage.optimizer, step)
            sched_cfg = self._merged(self.cfg.scheduler, stage.scheduler, step)
            self.step_settings[step] = step_settings(opt_cfg, sched_cfg)
            optimizers[step] = build_optimizer(self.method.stage_parameters(stage, step), opt_cfg)
            schedulers[step] = EpochScheduler(optimizers[step], sched_cfg, epochs)
        return optimizers, schedulers

    def epoch_batches(self, run: StageRun, epoch: int) -> Iterable[Batch]:
        """The data module's training batches of ``epoch`` of ``run``'s stage (what an epoch trains on)."""
        seed = derive_seed(self.seed, run.index, epoch)
        return self.data.train_batches(run.train_degs, seed=seed, need_hr=run.stage.needs_hr)

    def train_one_epoch(
        self, run: StageRun, epoch: int, batches: Iterable[Batch] | None = None
    ) -> tuple[dict[str, float], float | None]:
        """One epoch of ``run``'s stage (:meth:`prepare_stage`): the mean of every loss and the training
        accuracy (None when the stage has no logits). ``batches``: train on these instead of
        :meth:`epoch_batches` (the benches' fixed batch, a few steps of an epoch).

        Nothing in a step waits for the device: losses, accuracy and the finite-loss check accumulate on the
        device and are read once, at the end of the epoch (and every ``log_every_n_steps`` steps only when
        a logger is writing)."""
        stage = run.stage
        seed = derive_seed(self.seed, run.index, epoch)
        seed_everything(seed + dist.rank())  # per rank: dropout masks etc. must differ between shares
        self.method.train()
        sums = _EpochSums.zeros(stage.steps, self.device)
        logging_on = self.logger.writer is not None
        deferred = DeferredScalars(
            lambda values, step: self.logger.scalars(values, step, prefix=f"train/{stage.name}/")
        )
        total = self.data.num_train_batches(run.train_degs) if batches is None else None
        batches = self.epoch_batches(run, epoch) if batches is None else batches
        bar = self._progress(batches, total, f"[{stage.name}] epoch {epoch + 1}/{run.epochs}")
        try:
            for batch in bar:
                out = self._train_step(self._prepare(batch), run, sums)
                self.global_step += 1
                if logging_on:
                    deferred.poll()  # an earlier logging step's losses, once their copy has landed
                    if self.global_step % self.cfg.log_every_n_steps == 0:
                        scalars = {k: v for k, v in out.items() if k != "logits" and v.dim() == 0}
                        deferred.push(scalars, self.global_step)
        except Exception:
            # A non-finite loss may break the method before the epoch ends (an eigendecomposition of NaNs):
            # report the loss, not its consequence.
            self._check_finite(stage, epoch, sums.bad, sums.bad_value)
            raise
        deferred.flush()
        losses, train_acc = self._epoch_results(stage, epoch, sums)
        self.logger.scalars(losses, self.global_step, prefix=f"epoch/{stage.name}/")
        return losses, train_acc

    def _train_step(self, batch: Batch, run: StageRun, sums: _EpochSums) -> dict[str, torch.Tensor]:
        """Every optimisation step of the stage on one batch; returns the last step's outputs."""
        stage = run.stage
        for step in stage.steps:
            with self._autocast():
                out = self.model(batch, stage, step)
            loss = out["loss"]
            finite = torch.isfinite(loss.detach())
            sums.bad_value[step] = torch.where(sums.bad[step], sums.bad_value[step], loss.detach().float())
            sums.bad[step] = sums.bad[step] | ~finite
            opt = run.optimizers[step]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip:
                params = [p for g in opt.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            opt.step()
            for key, value in out.items():
                if key == "logits" or value.dim() > 0:
                    continue
                name = key if len(stage.steps) == 1 or key != "loss" else f"loss_{step}"
                sums.losses[name] = sums.losses.get(name, 0) + value.detach().float()
            if "logits" in out:
                sums.has_logits = True
                sums.correct += (out["logits"].argmax(1) == batch["label"]).sum()
        sums.seen += batch["label"].shape[0]
        sums.steps += 1
        return out

    def _epoch_results(
        self, stage: Stage, epoch: int, sums: _EpochSums
    ) -> tuple[dict[str, float], float | None]:
        """One read (and under torchrun one all-reduce) of everything the epoch accumulated: the mean
        losses and the training accuracy; a non-finite loss or an agreed stop request is noted here."""
        keys = list(sums.losses)
        seen = torch.full((), float(sums.seen), device=self.device)
        values = [sums.losses[k] for k in keys] + [sums.correct.float(), seen]
        flags = [sums.bad[step].float() for step in stage.steps]
        stop = torch.full((), float(self.stop.requested), device=self.device)  # agreed by every rank
        totals = dist.all_reduce_sum(torch.stack(values + flags + [stop])).tolist()
        self.stop.agreed = totals.pop() > 0
        self._check_finite(stage, epoch, sums.bad, sums.bad_value, totals[len(values) :])
        world = dist.world_size()
        n_steps = max(1, sums.steps)
        losses = {}
        for k, total in zip(keys, totals):
            mean = total if world == 1 else (torch.tensor(total) / world).item()  # all_reduce_mean's float32
            losses[k] = float(mean) / n_steps
        train_acc = None
        if sums.has_logits:
            hits, total = totals[len(keys)], totals[len(keys) + 1]
            train_acc = float(hits / total)
            losses["train_acc"] = train_acc
        return losses, train_acc

    def _check_finite(self, stage, epoch, bad, bad_value, flags: list[float] | None = None) -> None:
        """The usual one-line error if a loss of this epoch was non-finite. ``flags``: per step, the
        number of processes that saw one (read at the end of the epoch); None: read this process's."""
        for i, step in enumerate(stage.steps):
            if flags is not None and not flags[i]:
                continue
            here = bool(bad[step])
            if not here and flags is None:
                continue
            value = bad_value[step].item() if here else "non-finite on another process"
            # read at the epoch's end, every process knows (one message); on the way out of a failed step,
            # only this one does (a ProcessError is printed by every torchrun rank)
            error = UserError if flags is not None else ProcessError
            raise error(
                f"the {step} loss of stage {stage.name} became {value} at epoch {epoch + 1}: "
                "lower the learning rate (trainer.optimizer.lr) or enable trainer.grad_clip"
            )

    # -- checkpoints --------
    def _start_stage_checkpoints(self, si: int, stage: Stage, fresh: bool) -> None:
        """Which keys the stage's ``last.pt`` holds; for a stage started afresh, the whole method as it
        starts (``stage_start.pt``: the part of the method a mid-stage ``last.pt`` leaves out)."""
        trained = [p for step in stage.steps for p in self.method.stage_parameters(stage, step)]
        modules = dist.trained_modules(self.method, [p for p in trained if p.requires_grad])
        self._stage_keys = stage_state_keys(self.method, modules)
        path = self._ckpt(STAGE_START)
        if fresh and path is not None and self._stage_keys is not None:
            self.writer.submit(path, lambda: {"stage_index": si, "method": self.method.state_dict()})

    def _save_best(self, si: int, stage: Stage, epoch: int, score: float, val: dict) -> None:
        path = self._ckpt("best.pt")
        if path is None:  # no run folder: every rank keeps its own copy to restore
            self._best_in_memory = {k: v.detach().clone() for k, v in self.method.state_dict().items()}
            return
        self.writer.submit(
            path,
            lambda: {
                "version": CHECKPOINT_VERSION,
                "stage_index": si,
                "stage": stage.name,
                "epoch": epoch,
                "score": score,
                "val": val,
                "method": self.method.state_dict(),
                "config": self.identity,
            },
        )

    def _restore_best(self, si: int) -> None:
        path = self._ckpt("best.pt")
        if path is None:
            best = getattr(self, "_best_in_memory", None)
            if best is not None:
                self.method.load_state_dict(best)
            return
        self.writer.flush()  # best.pt is on disk before any rank reads it
        dist.barrier()
        state = load_checkpoint(path, require=("method", "stage_index"))
        if int(state["stage_index"]) == si:
            self.method.load_state_dict(state["method"])

    def _save_last(self, si, epoch, optimizers, schedulers, summary: StageSummary, whole: bool) -> None:
        """``last.pt``: everything a resume needs. ``whole`` (a stage's last epoch): the whole method;
        otherwise only what the stage changes, completed from ``stage_start.pt`` when it is read."""
        path = self._ckpt("last.pt")
        if path is None:
            return
        keys = None if whole else self._stage_keys
        cpu_s = self.cpu_s_earlier + time.process_time()  # every start's, up to this checkpoint

        def build() -> dict:
            method = self.method.state_dict()
            state = {
                "version": CHECKPOINT_VERSION,
                "stage_index": si,
                "epoch": epoch,
                "global_step": self.global_step,
                "method": method if keys is None else {k: v for k, v in method.items() if k in keys},
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                "settings": self.step_settings,
                "summary": dict(summary.__dict__),
                "summaries": [dict(s.__dict__) for s in self.summaries],
                "val_history": list(self.val_history),
                "cpu_s": cpu_s,
                "config": self.identity,
            }
            if keys is not None:
                state["method_base"] = STAGE_START
            return state

        self.writer.submit(path, build)
