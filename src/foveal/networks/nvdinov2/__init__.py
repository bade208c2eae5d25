"""NVDINOv2: self-supervised ViT pretraining and distillation (TAO's ``nvdinov2``)."""

from __future__ import annotations

from foveal.networks.nvdinov2.config import NVDINOv2Config, resolve
from foveal.networks.registry import (
    DatasetNeed,
    Monitoring,
    Network,
    NetworkMetadata,
    StartFrom,
    register_network,
)

_IMAGES = "images (any depth) or an archive (.tar.gz/.zip) of them"

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
        # The student exists in both self-training and distillation runs (TAO saves no
        # teacher_epoch_* file when distilling), so it is what a child job takes.
        checkpoint_kind="student",
        start_from=(StartFrom("nvdinov2", "train.pretrained_model_path", kind="student"),),
        start_key="train.pretrained_model_path",
        metadata=NetworkMetadata(
            task="self-supervised",
            # The only progress signal is train_loss, whose scale moves with the very
            # hyper-parameters a search would vary (temperatures, prototypes): not a fair ranking.
            automl_enabled=False,
            monitoring=Monitoring("train_loss", "min"),
            dataset_requirements={
                "train": (DatasetNeed("dataset.train_dataset.images_dir", "train", True, False, _IMAGES),),
                "inference": (DatasetNeed("dataset.test_dataset.images_dir", "test", True, False, _IMAGES),),
                # kNN / linear probe need classes; the training images are the kNN reference when
                # they are labeled too, else a fixed split of the val set is.
                "evaluate": (
                    DatasetNeed(
                        "dataset.val_dataset.images_dir",
                        "val",
                        True,
                        True,
                        "images in class subfolders (root/<class>/<image>) or an archive",
                    ),
                    DatasetNeed(
                        "dataset.train_dataset.images_dir",
                        "train",
                        False,
                        True,
                        "images in the same class subfolders, or an archive",
                    ),
                ),
            },
            eval_dataset="optional",
        ),
        resolve=resolve,
    )
)

__all__ = ["NETWORK", "NVDINOv2Config", "resolve"]
