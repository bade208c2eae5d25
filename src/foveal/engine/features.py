"""Frozen-feature evaluation shared by every network: feature extraction, weighted kNN, a linear probe.

kNN follows DINO (Caron et al., arXiv:2104.14294, sec. 4.1 / appendix): L2-normalised features,
cosine similarity, the k nearest reference images vote for their class with weight
``exp(similarity / T)`` (k = 20, T = 0.07 by default). The linear probe follows DINOv2's linear
evaluation (Oquab et al., arXiv:2304.07193, sec. 7.1): a logistic regression on frozen
features, trained here full-batch with L-BFGS on CPU (a convex problem: a few hundred steps
reach the optimum, and the result is deterministic for a fixed seed, unlike DINOv2's SGD grid).

Features come from the backbone interface (``forward_features`` -> ``x_norm_clstoken``,
``x_norm_patchtokens``): ``cls`` is the class token (ViTs only) and ``avg`` the mean patch
token of a ViT, or a ConvNeXt's normalised global average (its ``x_norm_clstoken``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from foveal.nn.backbone import Backbone


def _labels(labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Class indices as a 1-D long tensor; an inference-mode tensor is cloned, since the linear
    probe's loss saves its targets for backward, which inference tensors forbid."""
    out = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    return out.clone() if out.is_inference() else out


def knn_top1(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor | Sequence[int],
    val_feats: torch.Tensor,
    val_labels: torch.Tensor | Sequence[int],
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of DINO's temperature-weighted kNN classifier.

    Args:
        train_feats: (N, D) features of the labeled reference images.
        train_labels: (N,) class indices.
        val_feats: (V, D) features of the images to classify.
        val_labels: (V,) class indices.
        k: neighbours (capped at N).
        temperature: vote weight is ``exp(cosine similarity / temperature)``.

    Returns:
        Fraction of ``val`` rows whose weighted vote is their label (0.0 for an empty val set).
    """
    train_y, val_y = _labels(train_labels), _labels(val_labels)
    if train_feats.shape[0] != train_y.numel() or val_feats.shape[0] != val_y.numel():
        raise ValueError("features and labels differ in length")
    if train_feats.shape[0] == 0:
        raise ValueError("kNN needs at least one training feature")
    if val_feats.shape[0] == 0:
        return 0.0
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    train = F.normalize(train_feats.double(), dim=1)
    val = F.normalize(val_feats.double(), dim=1)
    k = min(k, train.shape[0])
    correct = 0
    for start in range(0, val.shape[0], 1024):  # bounds memory at 1024 x N similarities
        sim = val[start : start + 1024] @ train.T  # (v, N)
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, dtype=sim.dtype)
        votes.scatter_add_(1, train_y[top_idx], (top_sim / temperature).exp())
        correct += int((votes.argmax(dim=1) == val_y[start : start + 1024]).sum())
    return correct / val.shape[0]


def linear_probe_top1(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor | Sequence[int],
    val_feats: torch.Tensor,
    val_labels: torch.Tensor | Sequence[int],
    *,
    steps: int = 300,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Top-1 accuracy of a logistic regression trained on frozen features.

    Features are standardised with the training set's mean and std; the loss is cross-entropy
    plus ``weight_decay * ||W||^2``, minimised full-batch by L-BFGS for at most ``steps``
    iterations. Deterministic for a given ``seed`` (it only seeds the initial weights).

    Args:
        train_feats: (N, D); train_labels: (N,).
        val_feats: (V, D); val_labels: (V,).
        steps: L-BFGS iterations.
        weight_decay: L2 penalty on the weights (not the bias).
        seed: initial-weight seed.
    """
    train_y, val_y = _labels(train_labels), _labels(val_labels)
    if val_feats.shape[0] == 0:
        return 0.0
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    mean = train_feats.double().mean(dim=0, keepdim=True)
    std = train_feats.double().std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-6)
    x_train = ((train_feats.double() - mean) / std).float()
    x_val = ((val_feats.double() - mean) / std).float()
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(x_train.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 0.01)
        linear.bias.zero_()
    optimizer = torch.optim.LBFGS(
        linear.parameters(), lr=1.0, max_iter=max(steps, 1), line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x_train), train_y) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    # Small problems run hundreds of tiny matmuls: thread start-up would dominate (100x on a busy CPU).
    threads = torch.get_num_threads()
    if x_train.numel() * num_classes < 2**22:
        torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            optimizer.step(closure)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        predicted = linear(x_val).argmax(dim=1)
    return float((predicted == val_y).float().mean())


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(reference indices, held-out indices): ``fraction`` of each class goes to the reference.

    Every class with at least two images keeps at least one on each side, so kNN always has
    neighbours of each evaluated class. The permutation is seeded, so the split is fixed.
    """
    generator = torch.Generator().manual_seed(seed)
    reference: list[int] = []
    held_out: list[int] = []
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    for label in sorted(by_class):
        members = by_class[label]
        order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        cut = round(len(order) * fraction)
        if len(order) >= 2:
            cut = min(max(cut, 1), len(order) - 1)
        reference += order[:cut]
        held_out += order[cut:]
    return sorted(reference), sorted(held_out)


def has_class_token(backbone: object) -> bool:
    """Whether ``backbone`` has a class token (ViTs do; ConvNeXt V2 pools instead)."""
    return isinstance(getattr(backbone, "cls_token", None), torch.Tensor)


def pooled(out: dict[str, torch.Tensor], has_cls: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(cls, avg)`` from one ``forward_features`` output (see the module docstring)."""
    if has_cls:
        return out["x_norm_clstoken"], out["x_norm_patchtokens"].mean(dim=1)
    return None, out["x_norm_clstoken"]


@dataclass
class Features:
    """Pooled features of a set of images, in loader order."""

    avg: torch.Tensor  # (N, D)
    cls: torch.Tensor | None  # (N, D), None without a class token
    extras: list[object]  # the loader's second items (labels or paths)

    def labels(self) -> torch.Tensor:
        """``extras`` as class indices (N,), for a labeled set."""
        return torch.as_tensor([int(label) for label in self.extras], dtype=torch.long)  # type: ignore[call-overload]

    def take(self, rows: list[int]) -> Features:
        return Features(
            self.avg[rows], None if self.cls is None else self.cls[rows], [self.extras[i] for i in rows]
        )


@torch.inference_mode()
def extract_features(backbone: Backbone, batches: Iterable[tuple[torch.Tensor, Any]]) -> Features:
    """Pooled features of every image of ``batches`` of ``(images (B, C, H, W), extra)``.

    The backbone is put in eval mode; features are float32 on the CPU's or the batches' device.
    """
    backbone.eval()  # type: ignore[attr-defined]  # an nn.Module
    has_cls = has_class_token(backbone)
    cls: list[torch.Tensor] = []
    avg: list[torch.Tensor] = []
    extras: list[object] = []
    for images, extra in batches:
        c, a = pooled(backbone.forward_features(images), has_cls)
        avg.append(a.float())
        if c is not None:
            cls.append(c.float())
        extras.extend(extra.tolist() if isinstance(extra, torch.Tensor) else list(extra))
    return Features(torch.cat(avg), torch.cat(cls) if cls else None, extras)
