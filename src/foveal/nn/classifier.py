"""Image classifier: a backbone, a pooled feature and a linear or MLP head.

Shared by every network that trains with labels (classification, mae fine-tuning, ported
models): the model computes, the loop (:mod:`foveal.engine.supervised`) orchestrates.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from foveal.nn.backbone import Backbone


class Classifier(nn.Module):
    """``backbone.forward_features`` -> pool (cls | avg) -> head -> logits (B, num_classes)."""

    backbone: Any  # a Backbone (foveal.nn.backbone): any nn.Module with that interface
    head: nn.Sequential

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        head_type: str = "linear",
        dropout: float = 0.0,
        global_pool: str = "cls",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.global_pool = global_pool
        dim = int(backbone.embed_dim)
        last = nn.Linear(dim, num_classes)
        if head_type == "mlp":
            self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), last)
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), last)
        # Small init keeps the first steps from blowing up a pretrained backbone's features.
        nn.init.trunc_normal_(last.weight, std=2e-5 if head_type == "linear" else 0.02)
        nn.init.zeros_(last.bias)
        self.weights_kind = "live"  # "ema" when loaded from a checkpoint's averaged weights
        self.backbone_frozen = False  # set by freeze_backbone: the backbone stays in eval mode

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()  # a fixed backbone: no BatchNorm statistics updates, no dropout
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D)."""
        out = self.backbone.forward_features(x)
        if self.global_pool == "avg":
            return out["x_norm_patchtokens"].mean(dim=1)
        return out["x_norm_clstoken"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def freeze_backbone(model: Classifier, freeze: bool, freeze_blocks: list[int]) -> None:
    """Linear probe (freeze all) or freeze the given block indices (0 = first block)."""
    if freeze:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        model.backbone_frozen = True
        model.backbone.eval()
        return
    # Block k of the backbone has layer id k + 1 (ViT blocks and ConvNeXt V2 blocks alike).
    frozen = {idx + 1 for idx in freeze_blocks}
    for name, p in model.backbone.named_parameters():
        if model.backbone.layer_id_for_param(name) in frozen:
            p.requires_grad_(False)
