"""Classification metrics from logits: top-k, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts; rows are true classes, columns predictions."""
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_report(
    logits: torch.Tensor, target: torch.Tensor, classes: list[str], topk: tuple[int, ...] = (1, 5)
) -> dict[str, Any]:
    """Everything evaluate writes to results.json, as plain data.

    Args:
        topk: the top-k accuracies reported as ``top<k>`` (top-1 always; a k not below the
            number of classes is 1 by construction and skipped).
    """
    num_classes = len(classes)
    ks = sorted({1, *(k for k in topk if k < num_classes)})
    ranked = logits.topk(max(ks), dim=1).indices
    pred = ranked[:, 0]
    cm = confusion_matrix(pred, target, num_classes).double()
    tp = cm.diag()
    precision = tp / cm.sum(dim=0).clamp(min=1)
    recall = tp / cm.sum(dim=1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(cm[i].sum()),
        }
        for i, name in enumerate(classes)
    }
    report: dict[str, Any] = {"num_images": int(target.numel())}
    for k in ks:
        report[f"top{k}"] = float((ranked[:, :k] == target[:, None]).any(dim=1).double().mean())
    return report | {
        "loss": float(F.cross_entropy(logits, target)),
        "macro_f1": float(f1.mean()),
        "per_class": per_class,
        "classes": list(classes),
        "confusion_matrix": cm.long().tolist(),
    }
