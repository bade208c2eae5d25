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
            # TAO's metadata enables AutoML. Trials are ranked on the online kNN top-1 of a labeled
            # eval set; without one, on train_loss (TAO's KPI) over a space that leaves out what
            # changes the loss's scale, so that the values compare.
            automl_enabled=True,
            monitoring=Monitoring("val_knn_top1", "max", fallback="train_loss"),
            loss_scale_parameters=(
                "train.schedulers.teacher_temperature",
                "train.loss",
                "train.num_prototypes",
                "model.head",
            ),
            ranking_note="val_knn_top1 (online kNN top-1 on dataset.val_dataset.images_dir, class subfolders) "
            "when the spec has labeled eval data; else train_loss, over a space without the temperatures, "
            "prototype count and loss weights, which change the loss's scale",
            dataset_requirements={
                "train": (
                    DatasetNeed("dataset.train_dataset.images_dir", "train", True, False, _IMAGES),
                    # online evaluation: kNN top-1 with class subfolders, collapse monitors without
                    DatasetNeed(
                        "dataset.val_dataset.images_dir",
                        "eval",
                        False,
                        True,
                        "images in class subfolders (root/<class>/<image>) or an archive",
                    ),
                ),
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
