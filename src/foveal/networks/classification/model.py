"""The classification network's model: the spec's backbone in a :class:`~foveal.nn.classifier.Classifier`."""

from __future__ import annotations

import logging
from typing import Any

from foveal.networks.classification.config import ModelConfig
from foveal.nn import create_backbone
from foveal.nn.classifier import Classifier, freeze_backbone

logger = logging.getLogger(__name__)

__all__ = ["Classifier", "build_classifier", "freeze_backbone"]


def build_classifier(model_cfg: ModelConfig, num_classes: int, img_size: int) -> Classifier:
    """Build the classifier a ``model`` spec section describes (no weights loaded).

    ``model.backbone.freeze_norm`` turns every BatchNorm of the backbone into a frozen one (TAO's
    FrozenBatchNorm2d); pretrained weights loaded afterwards fill its buffers.
    """
    extra: dict[str, Any] = {}
    if model_cfg.backbone.patch_size is not None:
        extra["patch_size"] = model_cfg.backbone.patch_size
    if model_cfg.backbone.drop_path_rate is not None:
        extra["drop_path_rate"] = model_cfg.backbone.drop_path_rate
    backbone = create_backbone(model_cfg.backbone.type, img_size=img_size, **extra)
    if model_cfg.backbone.freeze_norm:
        from foveal.nn.frozen_bn import freeze_batchnorm

        count = freeze_batchnorm(backbone)
        if count == 0:
            logger.warning(
                "model.backbone.freeze_norm=true: %s has no BatchNorm (its norms are LayerNorms); nothing frozen",
                model_cfg.backbone.type,
            )
    return Classifier(
        backbone,
        num_classes,
        head_type="linear",
        dropout=model_cfg.head.dropout,
        global_pool=model_cfg.global_pool or "cls",  # resolve fills it (cls, or avg for ConvNeXt V2)
    )
