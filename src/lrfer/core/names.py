"""The names an option may take, in one place: the config validation (:mod:`lrfer.config.validate`) checks a
config against them before anything runs, and the code that acts on an option (the optimiser and scheduler
factories, the trainer, the degradations) refuses any other name with the same list."""

from __future__ import annotations

#: ``trainer.optimizer.name`` (:func:`lrfer.engine.optim.build_optimizer`).
OPTIMIZERS = ("adam", "adamw", "sgd")
#: ``trainer.scheduler.name`` (:func:`lrfer.engine.optim.build_scheduler`).
SCHEDULERS = ("none", "step", "multistep", "exponential", "plateau", "cosine")
#: ``trainer.scheduler.monitor``: what the ``plateau`` schedule watches.
PLATEAU_MONITORS = ("val_acc", "train_acc")
#: ``trainer.precision``.
PRECISIONS = ("auto", "fp32", "bf16")
#: ``trainer.compile_mode`` (``torch.compile``'s modes).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
#: ``degrade.kernel``: the MATLAB-style resampling kernels of a degradation (:mod:`lrfer.data.imresize`).
KERNELS = ("bicubic", "bilinear")
#: ``degrade.resize_kernel``: how a low-resolution face is resized back to the network input.
RESIZE_KERNELS = (*KERNELS, "nearest")
#: ``dataset.sampler``: uniform shuffling, or class-balanced draws.
SAMPLERS = ("random", "balanced")
#: ``degrade.train_mode``: one random training degradation per batch, or all of them.
TRAIN_MODES = ("random", "all")
