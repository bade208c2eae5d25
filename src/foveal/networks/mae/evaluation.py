"""Evaluating a pretrained encoder: reconstruction loss on fixed masks, features, weighted kNN.

The kNN classifier is the one DINO (Caron et al., arXiv:2104.14294) and MAE-family papers report:
cosine similarity on L2-normalised features, the k nearest training images vote for their class
with weight ``exp(similarity / T)`` (k = 20, T = 0.07).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from foveal.networks.mae.models import EncoderFeatures


@torch.inference_mode()
def reconstruction_loss(model: nn.Module, batches: Iterable[torch.Tensor]) -> float:
    """Mean masked-reconstruction loss over ``batches`` of images (B, C, H, W).

    Batch ``i`` is masked with the RNG seeded to ``i`` (as the training module's validation), so
    the number is reproducible and comparable across checkpoints.
    """
    total, count = 0.0, 0
    for index, images in enumerate(batches):
        with torch.random.fork_rng():
            torch.manual_seed(index)
            loss, _ = model(images)
        total += float(loss) * len(images)
        count += len(images)
    return total / max(count, 1)


@torch.inference_mode()
def extract_features(
    encoder: nn.Module, batches: Iterable[tuple[torch.Tensor, object]]
) -> tuple[dict[str, torch.Tensor], list[object]]:
    """Pooled features of every image: ({"avg": (N, D)[, "cls": (N, D)]}, the batches' second items).

    ``avg`` is :class:`EncoderFeatures`' ``embedding``; ``cls`` is the ViT class token.
    """
    view = EncoderFeatures(encoder).eval()
    feats: dict[str, list[torch.Tensor]] = {"avg": []}
    if view.is_vit:
        feats["cls"] = []
    extras: list[object] = []
    for images, extra in batches:
        out = view(images)
        feats["avg"].append(out[0].float())
        if view.is_vit:
            feats["cls"].append(out[1].float())
        extras.extend(extra.tolist() if isinstance(extra, torch.Tensor) else list(extra))
    return {k: torch.cat(v) for k, v in feats.items()}, extras


def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> float:
    """Top-1 accuracy of weighted kNN on cosine similarity (see the module docstring).

    Args:
        train_features: (N, D); train_labels: (N,) class indices.
        val_features: (V, D); val_labels: (V,).
        num_classes: C.
        k: neighbours (capped at N).
        temperature: softmax-like temperature of the vote weights.
        chunk: validation rows per similarity block (bounds memory at chunk x N).
    """
    train = F.normalize(train_features.float(), dim=1)
    val = F.normalize(val_features.float(), dim=1)
    k = min(k, train.shape[0])
    correct = 0
    for start in range(0, val.shape[0], chunk):
        sim = val[start : start + chunk] @ train.T  # (v, N)
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / temperature).exp())
        correct += int((votes.argmax(dim=1) == val_labels[start : start + chunk]).sum())
    return correct / max(val.shape[0], 1)
