"""Evaluating a pretrained encoder: reconstruction loss on fixed masks.

Features and the weighted kNN come from :mod:`foveal.engine.features` (the same code nvdinov2's
evaluate uses).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


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
