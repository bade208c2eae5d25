"""MAE: masked autoencoder pretraining and fine-tuning for ViT, ConvNeXt V2 and Hiera (TAO's ``mae``)."""

from __future__ import annotations

from foveal.networks.mae.config import MAEConfig, resolve
from foveal.networks.registry import (
    DatasetNeed,
    Monitoring,
    Network,
    NetworkMetadata,
    StartFrom,
    register_network,
)

_ACTIONS_MODULE = "foveal.networks.mae.actions"
_FINETUNE = {"train.stage": "finetune"}  # labels (class subfolders) are needed only then
_IMAGES = "images (.jpg/.png..., any depth) or an archive; class subfolders when train.stage=finetune"
_BANK = "class subfolders of images (kNN bank; skipped when unlabeled)"

NETWORK = register_network(
    Network(
        name="mae",
        config_cls=MAEConfig,
        description="Masked autoencoder (MAE / FCMAE / Hiera-MAE) pretraining and fine-tuning for ViT, "
        "ConvNeXt V2 and Hiera.",
        actions={
            action: f"{_ACTIONS_MODULE}:{action}"
            for action in ("train", "evaluate", "inference", "export", "gen_trt_engine")
        },
        # Fine-tuning starts from a pretraining job; so does more pretraining.
        start_from=(StartFrom("mae", "train.pretrained_model_path", stages=("pretrain",)),),
        start_key="train.pretrained_model_path",
        metadata=NetworkMetadata(
            task="self-supervised",
            automl_enabled=True,
            # Without a validation set only the training loss is logged; finetune reports accuracy.
            monitoring=Monitoring(
                "val_loss",
                "min",
                fallback="train_loss",
                by_stage={"pretrain": ("val_loss", "min"), "finetune": ("val_top1", "max")},
            ),
            dataset_requirements={
                "train": (
                    DatasetNeed("dataset.train_data_sources", "train", True, False, _IMAGES, _FINETUNE),
                    DatasetNeed("dataset.val_data_sources", "eval", False, False, _IMAGES, _FINETUNE),
                ),
                "evaluate": (
                    DatasetNeed("dataset.val_data_sources", "eval", True, False, _IMAGES, _FINETUNE),
                    # A pretrain checkpoint's kNN top-1 needs labeled training images as its bank.
                    DatasetNeed("dataset.train_data_sources", "train", False, True, _BANK),
                ),
                "inference": (DatasetNeed("dataset.test_data_sources", "test", True, False, _IMAGES),),
            },
            eval_dataset="optional",
        ),
        resolve=resolve,
    )
)

__all__ = ["NETWORK", "MAEConfig", "resolve"]
