"""Classification metrics from a confusion matrix (accuracy, balanced accuracy) and named metric look-up."""

from __future__ import annotations

import torch

from lrfer.config.validate import metric_name_problem
from lrfer.core.errors import UserError


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = true class, columns = predicted class."""
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long, device=preds.device)
    return add_to_confusion_(cm, preds, labels)


def add_to_confusion_(cm: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Add the (label, prediction) pairs of a batch to the square count matrix ``cm``, in place.

    A fixed-size ``scatter_add_``, not ``torch.bincount`` (which reads the input's range on the host: a
    device synchronisation per batch on a GPU).
    """
    k = cm.shape[0]
    flat = labels.long() * k + preds.long()
    cm.view(-1).scatter_add_(0, flat, torch.ones_like(flat, dtype=cm.dtype))
    return cm


def metrics_from_confusion(cm: torch.Tensor) -> dict[str, float | int]:
    """``acc``, ``balanced_acc`` (mean recall over the classes present) and ``n``."""
    cm = cm.double()
    n = cm.sum().item()
    support = cm.sum(dim=1)
    present = support > 0
    recall = cm.diag()[present] / support[present]
    return {
        "acc": float(cm.diag().sum().item() / n) if n else 0.0,
        "balanced_acc": float(recall.mean().item()) if present.any() else 0.0,
        "n": int(n),
    }


#: Keys of a per-degradation metrics row that are not metrics one can select on.
NOT_METRICS = ("n", "confusion")


def check_metric_name(name: str, labels: list[str], what: str) -> None:
    """Refuse a malformed metric name, or one naming a degradation that is not in ``labels``.

    Whether the metric itself exists (``rrn_acc`` is reported by some methods only) is checked when the
    first validation has run, by :func:`named_metric`. (A run's ``trainer.monitor`` and ``objective`` are
    checked with the config, :func:`lrfer.config.validate.validate_config`; this checks a stage's own.)
    """
    problem = metric_name_problem(name, labels, what)
    if problem:
        raise UserError(problem)


def named_metric(rows: dict[str, dict], name: str, what: str = "metric") -> float:
    """The value of the validation metric ``name`` in per-degradation ``rows`` (as evaluation returns them).

    ``<metric>`` (``acc``, ``balanced_acc``, a method's own ``rrn_acc``, ...) is the mean of that metric
    over every evaluated degradation; ``<degradation>/<metric>`` (``x4/acc``) is its value at one.
    """
    label, _, metric = str(name).rpartition("/")
    if label:
        check_metric_name(name, list(rows), what)
        chosen = [rows[label]]
    else:
        chosen = list(rows.values())
    available = sorted({k for r in chosen for k in r if k not in NOT_METRICS})
    if not chosen or metric in NOT_METRICS or any(metric not in r for r in chosen):
        raise UserError(f"{what}={name!r}: the validation reports no {metric!r}; it reports {available}")
    return float(sum(float(r[metric]) for r in chosen) / len(chosen))
