"""Classification metrics from a confusion matrix: accuracy, balanced (mean per-class) accuracy."""

from __future__ import annotations

import torch


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = true class, columns = predicted class."""
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


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
