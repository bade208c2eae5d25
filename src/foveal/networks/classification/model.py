"""The classification network's model: the spec's backbone in a :class:`~foveal.nn.classifier.Classifier`."""

from __future__ import annotations

from foveal.networks.classification.config import ModelConfig
from foveal.nn import create_backbone
from foveal.nn.classifier import Classifier, freeze_backbone

__all__ = ["Classifier", "build_classifier", "freeze_backbone"]


def build_classifier(model_cfg: ModelConfig, num_classes: int, img_size: int) -> Classifier:
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
        global_pool=model_cfg.global_pool or "cls",  # resolve fills it (cls for ViTs, avg for ConvNeXt)
    )
