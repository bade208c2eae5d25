"""Image classifier: a registered backbone, a pooled feature and a linear or MLP head."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foveal.nn import create_backbone

logger = logging.getLogger(__name__)


class Classifier(nn.Module):
    """``backbone.forward_features`` -> pool (cls | avg) -> head -> logits (B, num_classes)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        head_type: str = "linear",
        dropout: float = 0.0,
        global_pool: str = "cls",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.global_pool = global_pool
        dim = backbone.embed_dim
        if head_type == "mlp":
            self.head = nn.Sequential(
                nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, num_classes)
            )
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))
        # Small init keeps the first steps from blowing up a pretrained backbone's features.
        last = self.head[-1]
        nn.init.trunc_normal_(last.weight, std=2e-5 if head_type == "linear" else 0.02)
        nn.init.zeros_(last.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D)."""
        out = self.backbone.forward_features(x)
        if self.global_pool == "avg":
            return out["x_norm_patchtokens"].mean(dim=1)
        return out["x_norm_clstoken"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_classifier(model_cfg: Any, num_classes: int, img_size: int) -> Classifier:
    """Build the classifier a ``model`` spec section describes (no weights loaded)."""
    extra = {}
    if getattr(model_cfg.backbone, "patch_size", None) is not None:
        extra["patch_size"] = model_cfg.backbone.patch_size
    backbone = create_backbone(
        model_cfg.backbone.type, img_size=img_size, drop_path_rate=model_cfg.backbone.drop_path_rate, **extra
    )
    return Classifier(
        backbone,
        num_classes,
        head_type=model_cfg.head.type,
        dropout=model_cfg.head.dropout,
        global_pool=model_cfg.global_pool,
    )


def load_backbone_weights(model: Classifier, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load backbone weights from a state dict of any supported layout (see :mod:`.pretrained`).

    Raises:
        CheckpointError: nothing (or too little) of the backbone matches.
    """
    from foveal.networks.classification.pretrained import PretrainedWeights, load_backbone

    count = load_backbone(
        model, PretrainedWeights(dict(state_dict), "state dict"), type(model.backbone).__name__, source
    )
    logger.info("loaded %d backbone tensors from %s", count, source)


def freeze_backbone(model: Classifier, freeze: bool, freeze_blocks: list[int]) -> None:
    """Linear probe (freeze all) or freeze the given block indices."""
    if freeze:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        return
    # Block k of the backbone has layer id k + 1 (ViT blocks and ConvNeXt V2 blocks alike).
    frozen = {idx + 1 for idx in freeze_blocks}
    for name, p in model.backbone.named_parameters():
        if model.backbone.layer_id_for_param(name) in frozen:
            p.requires_grad_(False)


def read_backbone_state(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors of a pretrained checkpoint of any supported kind, and the kind's name
    (see :func:`foveal.networks.classification.pretrained.read_pretrained`)."""
    from foveal.networks.classification.pretrained import read_pretrained

    weights = read_pretrained(path)
    return weights.tensors, weights.kind
