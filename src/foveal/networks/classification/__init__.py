"""Image classification on a pretrained backbone (TAO's ``classification_pyt``)."""

from __future__ import annotations

from foveal.networks.classification.config import ClassificationConfig
from foveal.networks.classification.resolve import resolve
from foveal.networks.registry import (
    DatasetNeed,
    Monitoring,
    Network,
    NetworkMetadata,
    StartFrom,
    register_network,
)

_ACTIONS_MODULE = "foveal.networks.classification.actions"
_LABELED = "one subfolder of images per class (<class>/<image>), or an archive of that layout"
_BACKBONE_KEY = "model.backbone.pretrained_backbone_path"

NETWORK = register_network(
    Network(
        name="classification",
        config_cls=ClassificationConfig,
        description="Image classification (TAO classification_pyt): a linear head on a FAN, ViT, ResNet, MiT, "
        "ConvNeXt V2, Hiera or SigLIP backbone.",
        actions={
            action: f"{_ACTIONS_MODULE}:{action}"
            for action in ("train", "evaluate", "inference", "export", "gen_trt_engine")
        },
        # A classifier starts from another classifier (backbone and, for the same classes, head),
        # or from the backbone a pretraining job learned.
        start_from=(
            StartFrom("classification", "train.pretrained_model_path"),
            StartFrom("nvdinov2", _BACKBONE_KEY, kind="student"),
            StartFrom("mae", _BACKBONE_KEY),
        ),
        start_key=_BACKBONE_KEY,
        metadata=NetworkMetadata(
            task="classification",
            automl_enabled=True,
            monitoring=Monitoring("val_top1", "max"),
            dataset_requirements={
                "train": (
                    DatasetNeed("dataset.train_dataset.images_dir", "train", True, True, _LABELED),
                    DatasetNeed("dataset.val_dataset.images_dir", "eval", False, True, _LABELED),
                ),
                "evaluate": (DatasetNeed("dataset.val_dataset.images_dir", "eval", True, True, _LABELED),),
                "inference": (
                    DatasetNeed(
                        "dataset.test_dataset.images_dir",
                        "test",
                        True,
                        False,
                        "images (any depth) or an archive of them",
                    ),
                ),
            },
            # val_top1 (the AutoML and best-checkpoint metric) needs a validation set.
            eval_dataset="required",
        ),
        resolve=resolve,
        tao_only={
            "distill": "knowledge distillation from a teacher classifier",
            "quantize": "post-training quantization with torchao or ModelOpt",
        },
    )
)

__all__ = ["NETWORK", "ClassificationConfig", "resolve"]
