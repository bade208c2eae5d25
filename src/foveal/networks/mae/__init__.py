"""MAE: masked autoencoder pretraining and fine-tuning for ViT and ConvNeXt V2 (TAO's ``mae``)."""

from __future__ import annotations

from foveal.networks.mae.config import MAEConfig, resolve
from foveal.networks.registry import COMMON_HANDOFF, Network, register_network

_ACTIONS_MODULE = "foveal.networks.mae.actions"
_FINETUNE = {"train.stage": "finetune"}  # labels (class subfolders) are needed only then
_IMAGES = "images (.jpg/.png..., any depth) or an archive; class subfolders when train.stage=finetune"

NETWORK = register_network(
    Network(
        name="mae",
        config_cls=MAEConfig,
        description="Masked autoencoder (MAE / FCMAE) pretraining and fine-tuning for ViT and ConvNeXt V2.",
        actions={
            action: f"{_ACTIONS_MODULE}:{action}"
            for action in ("train", "evaluate", "inference", "export", "gen_trt_engine")
        },
        handoff={
            "train": {
                **COMMON_HANDOFF,
                "train.resume_training_checkpoint_path": "resume_model",
                "train.pretrained_model_path": "ptm_if_no_resume_model",
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
            "task": "self-supervised",
            "automl_enabled": True,
            "monitoring_metric": "val_loss",
            "monitoring_mode": "min",
            # Without a validation set only the training loss is logged; finetune reports accuracy.
            "monitoring_fallback_metric": "train_loss",
            "monitoring_by_stage": {"pretrain": ("val_loss", "min"), "finetune": ("val_top1", "max")},
            "dataset_requirements": {
                "train": {
                    "dataset.train_data_sources": {
                        "labeled": False,
                        "labeled_if": _FINETUNE,
                        "required": True,
                        "source": "train",
                        "expected_files": _IMAGES,
                    },
                    "dataset.val_data_sources": {
                        "labeled": False,
                        "labeled_if": _FINETUNE,
                        "required": False,
                        "source": "eval",
                        "expected_files": _IMAGES,
                    },
                },
                "evaluate": {
                    "dataset.val_data_sources": {
                        "labeled": False,
                        "labeled_if": _FINETUNE,
                        "required": True,
                        "source": "eval",
                        "expected_files": _IMAGES,
                    },
                    # A pretrain checkpoint's kNN top-1 needs labeled training images as its bank.
                    "dataset.train_data_sources": {
                        "labeled": True,
                        "required": False,
                        "source": "train",
                        "expected_files": "class subfolders of images (kNN bank; skipped when unlabeled)",
                    },
                },
                "inference": {
                    "dataset.test_data_sources": {
                        "labeled": False,
                        "required": True,
                        "source": "test",
                        "expected_files": _IMAGES,
                    }
                },
            },
            "eval_dataset": "optional",
            "default_pretrained_checkpoint": None,
            # Keys of the versions file (foveal/platforms/images.yaml); see `foveal image resolve`.
            "image": "foveal-pytorch",
            "action_images": {"gen_trt_engine": {"image": "foveal-tensorrt"}},
        },
        resolve=resolve,
    )
)

__all__ = ["NETWORK", "MAEConfig", "resolve"]
