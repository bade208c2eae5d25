"""The toy nvdinov2 set-up shared by the nvdinov2 tests and the DDP child process: a shrunk vit_t
and spec overrides that make a train job take seconds on a CPU."""

from __future__ import annotations

# vit_t shrunk (the registered size is full width); patched into backbones.create_backbone
TINY_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2}

# 32 px crops at patch 16, two local crops, tiny heads; append a later KEY=VALUE to change one
TRAIN = [
    "model.backbone.teacher_type=vit_t",
    "model.backbone.student_type=vit_t",
    "model.backbone.patch_size=16",
    "model.backbone.img_size=32",
    "model.head.hidden_dim=64",
    "model.head.bottleneck_dim=32",
    "dataset.batch_size=8",
    "dataset.workers=0",
    "dataset.transform.global_crops_size=32",
    "dataset.transform.local_crops_size=16",
    "dataset.transform.n_local_crops=2",
    "train.num_epochs=2",
    "train.precision=fp32",
    "train.num_prototypes=128",
    "train.schedulers.learning_rate.val_base=0.001",
    "train.schedulers.learning_rate.warm_up_steps=2",
    "train.schedulers.teacher_temperature.warm_up_steps=4",
    "train.schedulers.teacher_temperature.max_decay_steps=4",
]
