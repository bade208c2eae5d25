"""Image classification on a pretrained backbone (TAO's ``classification_pyt``)."""

from __future__ import annotations

from foveal.networks.classification.config import ClassificationConfig, resolve
from foveal.networks.registry import COMMON_HANDOFF, Network, register_network

_ACTIONS_MODULE = "foveal.networks.classification.actions"
_LABELED = "one subfolder of images per class (<class>/<image>), or an archive of that layout"

NETWORK = register_network(
    Network(
        name="classification",
        config_cls=ClassificationConfig,
        description="Image classification: a linear or MLP head on a ViT / ConvNeXt V2 backbone.",
        actions={
            action: f"{_ACTIONS_MODULE}:{action}"
            for action in ("train", "evaluate", "inference", "export", "gen_trt_engine")
        },
        handoff={
            "train": {
                **COMMON_HANDOFF,
                "train.resume_training_checkpoint_path": "resume_model",
                # The parent of a classification train is a pretraining job: its backbone weights.
                "model.backbone.pretrained_backbone_path": "ptm_if_no_resume_model",
            },
            "evaluate": {**COMMON_HANDOFF, "evaluate.checkpoint": "parent_model"},
            "inference": {**COMMON_HANDOFF, "inference.checkpoint": "parent_model"},
            "export": {
                **COMMON_HANDOFF,
                "export.checkpoint": "parent_model",
                "export.onnx_file": "create_onnx_file",
            },
            "gen_trt_engine": {**COMMON_HANDOFF, "gen_trt_engine.onnx_file": "parent_onnx_file"},
        },
        metadata={
            "task": "classification",
            "automl_enabled": True,
            "monitoring_metric": "val_top1",
            "monitoring_mode": "max",
            "dataset_requirements": {
                "train": {
                    "dataset.train_dataset.images_dir": {
                        "labeled": True,
                        "required": True,
                        "source": "train",
                        "expected_files": _LABELED,
                    },
                    "dataset.val_dataset.images_dir": {
                        "labeled": True,
                        "required": False,
                        "source": "eval",
                        "expected_files": _LABELED,
                    },
                },
                "evaluate": {
                    "dataset.val_dataset.images_dir": {
                        "labeled": True,
                        "required": True,
                        "source": "eval",
                        "expected_files": _LABELED,
                    }
                },
                "inference": {
                    "dataset.test_dataset.images_dir": {
                        "labeled": False,
                        "required": True,
                        "source": "test",
                        "expected_files": "images (any depth) or an archive of them",
                    }
                },
            },
            # val_top1 (the AutoML and best-checkpoint metric) needs a validation set.
            "eval_dataset": "required",
            "default_pretrained_checkpoint": None,
            # Keys of the versions file (foveal/platforms/images.yaml); see `foveal image resolve`.
            "image": "foveal-pytorch",
            "action_images": {"gen_trt_engine": {"image": "foveal-tensorrt"}},
        },
        resolve=resolve,
    )
)

__all__ = ["NETWORK", "ClassificationConfig", "resolve"]
