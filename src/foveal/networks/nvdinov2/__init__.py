"""NVDINOv2: self-supervised ViT pretraining and distillation (TAO's ``nvdinov2``)."""

from __future__ import annotations

from foveal.networks.nvdinov2.config import NVDINOv2Config, resolve
from foveal.networks.registry import COMMON_HANDOFF, Network, register_network

NETWORK = register_network(
    Network(
        name="nvdinov2",
        config_cls=NVDINOv2Config,
        description="NVDINOv2 self-supervised ViT pretraining (DINO + iBOT + KoLeo), with distillation.",
        actions={
            "train": "foveal.networks.nvdinov2.train:train",
            "evaluate": "foveal.networks.nvdinov2.evaluation:evaluate",
            "inference": "foveal.networks.nvdinov2.inference:inference",
            "export": "foveal.networks.nvdinov2.export:export",
            "gen_trt_engine": "foveal.networks.nvdinov2.export:gen_trt_engine",
        },
        handoff={
            "train": {
                **COMMON_HANDOFF,
                "train.resume_training_checkpoint_path": "resume_model",
                "train.pretrained_model_path": "ptm_if_no_resume_model",
            },
            # Downstream actions take the parent's backbone-only file (checkpoint_globs' first kind);
            # resume_model reads checkpoint_globs["model"], the full model_epoch_* file.
            "evaluate": {**COMMON_HANDOFF, "evaluate.checkpoint": "parent_model"},
            "inference": {**COMMON_HANDOFF, "inference.checkpoint": "parent_model"},
            "export": {
                **COMMON_HANDOFF,
                "export.checkpoint": "parent_model",
                "export.onnx_file": "create_onnx_file",
            },
            "gen_trt_engine": {**COMMON_HANDOFF, "gen_trt_engine.onnx_file": "parent_onnx_file"},
        },
        # Student first: it exists in both self-training and distillation runs (TAO saves no
        # teacher_epoch_* file when distilling), so it is what parent_model picks by default.
        checkpoint_globs={
            "student": "student_epoch_*.pth",
            "teacher": "teacher_epoch_*.pth",
            "model": "model_epoch_*.pth",
        },
        metadata={
            "task": "self-supervised",
            # The only progress signal is train_loss, whose scale moves with the very
            # hyper-parameters a search would vary (temperatures, prototypes): not a fair ranking.
            "automl_enabled": False,
            "monitoring_metric": "train_loss",
            "monitoring_mode": "min",
            "dataset_requirements": {
                "train": {
                    "dataset.train_dataset.images_dir": {
                        "labeled": False,
                        "required": True,
                        "source": "train",
                        "expected_files": "images (any depth) or an archive (.tar.gz/.zip) of them",
                    }
                },
                "inference": {
                    "dataset.test_dataset.images_dir": {
                        "labeled": False,
                        "required": True,
                        "source": "test",
                        "expected_files": "images (any depth) or an archive (.tar.gz/.zip) of them",
                    }
                },
                # kNN / linear probe need classes; the training images are the kNN reference when
                # they are labeled too, else a fixed split of the val set is.
                "evaluate": {
                    "dataset.val_dataset.images_dir": {
                        "labeled": True,
                        "required": True,
                        "source": "val",
                        "expected_files": "images in class subfolders (root/<class>/<image>) or an archive",
                    },
                    "dataset.train_dataset.images_dir": {
                        "labeled": True,
                        "required": False,
                        "source": "train",
                        "expected_files": "images in the same class subfolders, or an archive",
                    },
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

__all__ = ["NETWORK", "NVDINOv2Config", "resolve"]
