"""Build everything a run needs from the composed config, train, test once, write ``metrics.json``."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from lrfer.config.schema import parse_auto_bool
from lrfer.config.validate import log_warnings
from lrfer.core.checkpoint import write_json
from lrfer.core.errors import UserError
from lrfer.data.cache import load_or_build
from lrfer.data.datasets import build_adapter
from lrfer.data.degrade import Degradation, parse_degradation, parse_degradations
from lrfer.data.faces import FaceData, carve_validation, merge_validation
from lrfer.data.pipeline import FaceDataModule, network_input_size
from lrfer.engine import distributed as dist
from lrfer.engine.metrics import named_metric
from lrfer.engine.resolve import DegradeSpec, RunSpec, resolve
from lrfer.engine.runfolder import prepare_run_folder, run_identity
from lrfer.engine.tblog import RunLogger
from lrfer.engine.trainer import Trainer
from lrfer.methods.base import Method, MethodContext
from lrfer.models import pretrained

log = logging.getLogger(__name__)

#: ``dataset.on_device=auto`` keeps the data on the GPU when the uint8 images and the low-resolution views
#: the run will cache take less than this fraction of the GPU's *free* memory.
ON_DEVICE_MAX_FRACTION = 0.4


@dataclass
class RunParts:
    """What a run trains: its spec, the dataset, the data module serving it and the method."""

    spec: RunSpec
    data: FaceData
    datamodule: FaceDataModule
    method: Method

    @property
    def cfg(self) -> DictConfig:
        return self.spec.cfg

    @property
    def device(self) -> torch.device:
        return self.spec.device


def as_spec(spec: RunSpec | DictConfig) -> RunSpec:
    """``spec``, or a composed config (what :func:`lrfer.config.compose_config` users pass) resolved."""
    return spec if isinstance(spec, RunSpec) else resolve(spec)


def load_data(cfg: DictConfig) -> FaceData:
    """Decode (or read from the cache) the configured dataset and settle its validation split.

    * ``dataset.merge_val=true``: the official ``val`` split is folded into ``train``; no validation split;
    * otherwise a dataset without ``val`` gets one carved from ``train``: exactly ``dataset.val_per_class``
      faces of every class when set (a balanced split, e.g. AffectNet's 500 per class), else
      ``dataset.val_fraction`` of every class;
    * ``val_fraction=0`` (and no ``val_per_class``): no validation split at all (an official one is left
      unused; merge it instead).

    Without a validation split a run keeps every stage's last epoch (``metrics.json``: ``model_selection``).
    """
    adapter = build_adapter(cfg.dataset)
    data = load_or_build(adapter, cfg.paths.cache_dir, dist.machine_sharing())  # torchrun: once a machine
    for needed in ("train", "test"):
        if needed not in data.splits or len(data.splits[needed]) == 0:
            raise UserError(f"dataset {cfg.dataset.name} has no {needed} images: check dataset.root")
    fraction = float(cfg.dataset.val_fraction)  # values validated by resolve()
    per_class = cfg.dataset.get("val_per_class")
    if cfg.dataset.get("merge_val", False):
        if "val" not in data.splits:
            raise UserError(
                f"dataset.merge_val=true but {cfg.dataset.name} has no official validation split to merge "
                "(use dataset.val_fraction=0 to train on every training face)"
            )
        data = merge_validation(data)
    elif fraction == 0.0 and not per_class and "val" in data.splits:  # no validation split at all
        splits = {k: v for k, v in data.splits.items() if k != "val"}
        info = {**data.info, "official_val_unused": len(data.splits["val"])}
        data = FaceData(data.name, data.class_names, splits, info)
    else:
        data = carve_validation(data, fraction, cfg.dataset.split_seed, per_class)
    if data.num_classes != cfg.dataset.num_classes:
        raise UserError(
            f"dataset {cfg.dataset.name} has {data.num_classes} classes but dataset.num_classes="
            f"{cfg.dataset.num_classes}"
        )
    return data


def storage_device(spec: RunSpec, data: FaceData) -> torch.device:
    """Keep the uint8 images on the training device when they fit (``dataset.on_device``)."""
    device = spec.device
    mode = parse_auto_bool(spec.cfg.dataset.on_device, "dataset.on_device")  # None = auto
    if mode is False:
        return torch.device("cpu")
    if device.type != "cuda" or mode is True:
        return device
    nbytes = cached_bytes(spec.cfg, spec.degrade, data)
    free, _total = torch.cuda.mem_get_info(device)
    return device if nbytes < ON_DEVICE_MAX_FRACTION * free else torch.device("cpu")


def cached_bytes(cfg: DictConfig, degrade: DegradeSpec, data: FaceData) -> int:
    """Bytes a run keeps per device: the uint8 images of every split plus the low-resolution views it
    will cache (training and validation degradations, the method's ``factors``, the test degradations)."""
    factors = cfg.method.get("factors") if "method" in cfg else None
    extra = [parse_degradation(str(f)) for f in factors] if isinstance(factors, (list, ListConfig)) else []
    train = [*degrade.train, *extra]
    per_split = {"train": train, "val": [*degrade.val, *extra], "test": list(degrade.test)}
    # Views are made per image tensor: splits carved from one tensor (train / val) share them.
    per_base: dict[int, tuple[torch.Tensor, set]] = {}
    for name, split in data.splits.items():
        _, degs = per_base.setdefault(id(split.base), (split.base, set()))
        degs.update(per_split.get(name, train))
    total = 0
    for base, degs in per_base.values():
        n, c, h, w = base.shape
        total += base.numel()
        for deg in degs:
            try:
                oh, ow = deg.output_size(h, w)
            except UserError:
                continue
            if (oh, ow) != (h, w) or deg.operations:  # x1+noise8: native size, yet a new tensor
                total += n * c * oh * ow
    return total


def model_weights(cfg: DictConfig) -> str | None:
    """The local checkpoint ``model.weights`` names, if any."""
    return cfg.model.get("weights") if cfg.get("model") is not None else None


def build_method(cfg: DictConfig, context: MethodContext) -> Method:
    """Instantiate ``cfg.method`` (its ``_target_`` class) with the data context.

    ``model.weights`` (a local checkpoint) must reach at least one network of the method: a method without
    a ResNet-family network stops with one line instead of silently ignoring it.
    """
    weights = model_weights(cfg)
    loads_before = pretrained.load_count()
    # resolved in the whole config first: method keys may interpolate other nodes (e.g. ${degrade.train})
    resolved = OmegaConf.to_container(cfg.method, resolve=True)
    node = OmegaConf.create({k: v for k, v in resolved.items() if k != "name"})
    try:
        method = instantiate(node, context=context, _recursive_=False)
    except Exception as err:
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError) and "argument" in str(cause):
            raise UserError(f"method {cfg.method.get('name')}: {cause}") from None
        raise
    if not isinstance(method, Method):
        raise UserError(f"method._target_={cfg.method._target_} is not an lrfer Method")
    if weights and pretrained.load_count() == loads_before:
        raise UserError(
            f"model.weights={weights} is set but method={cfg.method.get('name')} builds no ResNet-family "
            "network that reads it: unset model.weights, or choose a method that builds one (README, "
            "'Pretrained weights')"
        )
    return method


def method_context(
    cfg: DictConfig, in_channels: int = 3, train_degradations: list[Degradation] | None = None
) -> MethodContext:
    """What the method needs to know about the data, from the config alone (no dataset is read).

    ``train_degradations``: the run's parsed ``degrade.train`` (:class:`RunSpec`); parsed from ``cfg`` when
    not given (tools that build a method without a run: model statistics, prediction)."""
    train_degs = list(train_degradations or parse_degradations(cfg.degrade.train))
    native = int(cfg.dataset.image_size)
    input_size = network_input_size(
        train_degs[0], native, cfg.degrade.input_size, bool(cfg.degrade.resize_back)
    )
    return MethodContext(
        num_classes=int(cfg.dataset.num_classes),
        input_size=input_size,
        native_size=native,
        in_channels=in_channels,
        train_degradations=train_degs,
        model=cfg.get("model"),
        class_names=list(cfg.dataset.class_names)[: int(cfg.dataset.num_classes)],
    )


def build_parts(spec: RunSpec | DictConfig) -> RunParts:
    """The dataset, data module and method of a resolved run (a composed config is resolved first)."""
    spec = as_spec(spec)
    cfg = spec.cfg
    if weights := model_weights(cfg):  # a bad model.weights fails before the dataset is decoded (read once:
        pretrained.read_state_dict(weights)  # the networks reuse it)
    if cfg.trainer.num_threads:
        torch.set_num_threads(int(cfg.trainer.num_threads))
    data = load_data(cfg)
    datamodule = FaceDataModule(
        data,
        degrade_cfg=cfg.degrade,
        augment_cfg=cfg.augment,
        mean=cfg.dataset.mean,
        std=cfg.dataset.std,
        batch_size=cfg.trainer.batch_size,
        eval_batch_size=cfg.trainer.eval_batch_size,
        device=spec.device,
        storage_device=storage_device(spec, data),
        # on_device=false: the prefetching host path, also on a CPU (where it overlaps gathering with the
        # step); auto on a GPU with data too large for it: the same, chosen by the data module.
        prefetch=True if str(cfg.dataset.on_device).lower() == "false" else None,
        sampler=cfg.dataset.sampler,
        rank=spec.rank,
        world_size=spec.world_size,
    )
    datamodule.view_sharing = dist.machine_sharing()  # one host copy of the views per machine (torchrun)
    side = int(cfg.dataset.image_size)
    if data.image_size != (side, side):
        raise UserError(
            f"the cached {cfg.dataset.name} images are {data.image_size[0]}x{data.image_size[1]} but "
            f"dataset.image_size={side}: rebuild the cache (delete it under {cfg.paths.cache_dir})"
        )
    context = method_context(cfg, datamodule.channels, list(spec.degrade.train))
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, context)
    return RunParts(spec, data, datamodule, method)


def format_table(metrics: dict, split: str = "test") -> str:
    """A fixed-width per-degradation table of a run's metrics (accuracy in %)."""
    rows = metrics.get(split, {})
    if not rows:
        return "(no results)"
    extra = sorted(
        {k for r in rows.values() for k in r if k not in ("acc", "balanced_acc", "n", "confusion")}
    )
    header = ["degradation", "acc %", "balanced %", "n", *extra]
    lines = [header]
    for label, row in rows.items():
        lines.append(
            [
                label,
                f"{100 * row['acc']:.2f}",
                f"{100 * row['balanced_acc']:.2f}",
                str(row["n"]),
                *[f"{100 * row[k]:.2f}" if k in row else "" for k in extra],
            ]
        )
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    out = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def run_training(cfg: DictConfig, run_dir: Path | None) -> dict:
    """:func:`run` for a composed config (what :func:`lrfer.config.compose_config` users call)."""
    return run(resolve(cfg, run_dir))


def run(spec: RunSpec) -> dict:
    """Train the spec's method on its dataset, test once at ``degrade.test`` and write ``metrics.json``."""
    t0 = time.perf_counter()
    cfg, run_dir = spec.cfg, spec.run_dir
    log_warnings(spec.warnings)
    if dist.is_main():
        prepare_run_folder(cfg, run_dir)  # orphan temporaries; trainer.overwrite=true's old results
    parts = build_parts(spec)
    main = dist.is_main()
    logger = RunLogger(run_dir, enabled=bool(cfg.logger.tensorboard) and main and run_dir is not None)
    try:
        trainer = Trainer(spec, parts.method, parts.datamodule, logger=logger, identity=run_identity(cfg))
        if cfg.logger.log_images and main:
            log_sample_faces(logger, parts.datamodule, list(spec.degrade.test), cfg.logger.num_sample_images)
        summaries = trainer.fit()
        val = trainer.evaluate("val", spec.degrade.val) if trainer.has_val else {}
        test = trainer.evaluate("test", spec.degrade.test, keep_confusion=True)
        metrics = run_metrics(cfg, parts, trainer.has_val, summaries, val, test, t0, trainer.cpu_s_earlier)
        if main:
            log_test_results(logger, cfg, test, parts.data.class_names)
            if run_dir is not None:
                write_json(metrics, Path(run_dir) / "metrics.json")
        return metrics
    finally:
        logger.close()


def run_metrics(
    cfg: DictConfig,
    parts: RunParts,
    has_val: bool,
    summaries: list,
    val: dict,
    test: dict,
    t0: float,
    cpu_s_earlier: float = 0.0,
) -> dict:
    """The run's ``metrics.json``: what was trained on what, how the model was chosen, validation and test
    results per degradation, per-stage training losses, parameters, environment, wall time (this start's)
    and CPU time (every start's: ``cpu_s_earlier``, the earlier starts' up to the resumed checkpoint)."""
    objective = str(cfg.get("objective", "acc"))
    # without a validation split (dataset.val_fraction=0) there is nothing a sweep may optimise
    objective_value = named_metric(val, objective, "objective") if val else None
    final = summaries[-1]
    return {
        "method": cfg.method.name,
        "dataset": cfg.dataset.name,
        # how the data was made: generator_version of synthetic faces, crop, validation carve-out, ...
        "dataset_info": parts.data.info,
        "seed": int(cfg.seed),
        "degrade": {"train": list(cfg.degrade.train), "test": list(cfg.degrade.test)},
        "objective": {"name": objective, "split": "val", "over": list(val), "value": objective_value},
        "model_selection": model_selection(cfg, parts.data, has_val),
        "val": val,
        "test": test,
        "train": {
            **final.losses,
            "stages": {
                s.name: {
                    "epochs": s.epochs,
                    "best_epoch": s.best_epoch,
                    "best_val": s.best_val,
                    **s.losses,
                }
                for s in summaries
            },
        },
        "num_params": sum(p.numel() for p in parts.method.parameters()),
        "environment": {
            "device": str(parts.device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "world_size": dist.world_size(),
            "gpu": torch.cuda.get_device_name(parts.device) if parts.device.type == "cuda" else None,
        },
        "duration_s": round(time.perf_counter() - t0, 2),
        # CPU seconds of every start, all threads: this process's and, when the run was resumed, the earlier
        # starts' up to the checkpoint it resumed from (work redone after a stop is counted once)
        "cpu_s": round(cpu_s_earlier + time.process_time(), 1),
        "cpu_s_earlier_starts": round(cpu_s_earlier, 1),
    }


def log_test_results(logger: RunLogger, cfg: DictConfig, test: dict, class_names: list[str]) -> None:
    """Test accuracy, confusion matrices and the hparams table in TensorBoard (no-op without a writer)."""
    for label, row in test.items():
        logger.scalars({"acc": row["acc"], "balanced_acc": row["balanced_acc"]}, 0, prefix=f"test/{label}/")
        logger.confusion(f"test/confusion/{label}", torch.tensor(row["confusion"]), class_names)
    logger.hparams(
        {
            "method": cfg.method.name,
            "dataset": cfg.dataset.name,
            "train": ",".join(cfg.degrade.train),
            "lr": cfg.trainer.optimizer.lr,
            "batch_size": cfg.trainer.batch_size,
            "seed": cfg.seed,
        },
        {f"test_{k}": v["acc"] for k, v in test.items()},
    )


def model_selection(cfg: DictConfig, data: FaceData, has_val: bool) -> dict:
    """How the tested model was chosen: ``best_val`` (each stage's best validation epoch) or ``last_epoch``,
    with the reason and the training faces used."""
    n_train = len(data.splits["train"])
    if not has_val:
        merged = data.info.get("val_merged_into_train")
        unused = data.info.get("official_val_unused")
        if merged is not None:
            reason = f"dataset.merge_val=true: the official validation split ({merged} faces) was trained on"
        else:
            reason = "dataset.val_fraction=0: no validation split, every training face was trained on"
            if unused:
                reason += f" (the official validation split, {unused} faces, is not used)"
        return {"mode": "last_epoch", "reason": reason, "train_faces": n_train, "val_faces": 0}
    n_val = len(data.splits["val"])
    if not cfg.trainer.restore_best:
        reason = "trainer.restore_best=false: validation is logged, the last epoch is tested"
        return {"mode": "last_epoch", "reason": reason, "train_faces": n_train, "val_faces": n_val}
    reason = "each stage's best validation epoch (trainer.monitor) is restored"
    return {"mode": "best_val", "reason": reason, "train_faces": n_train, "val_faces": n_val}


def log_sample_faces(logger: RunLogger, dm: FaceDataModule, degradations: list[Degradation], n: int) -> None:
    """A grid of the first ``n`` validation faces (rows) at every degradation (columns of the grid)."""
    if logger.writer is None or n <= 0:
        return
    rows = []
    split = "val" if "val" in dm.splits else "train"
    index = torch.arange(min(n, len(dm.splits[split])))
    for deg in degradations:
        if dm.network_size(deg) != dm.input_size:
            continue
        batch = dm.make_batch(split, index, torch.zeros_like(index), [deg], augment=False)
        rows.append(batch["image"] * dm.std + dm.mean)
    if rows:
        grid = torch.stack(rows, 1).flatten(
            0, 1
        )  # sample-major: each grid row is one face at every degradation
        labels = ",".join(d.label for d in degradations)
        logger.image_grid("samples/" + labels, grid.clamp(0, 1), nrow=len(rows))
