"""Toy-sized jobs every network can run in seconds, and can hand to each other: one shrunk ViT
for all (so weights flow between networks) and spec overrides at 32 px. Tests import it after
putting this folder on ``sys.path`` (as the DDP child does)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

# every network's ViT shrunk alike (patched into each network's create_backbone)
TINY_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2}

CLASSIFICATION = [
    "model.backbone.type=vit_tiny_patch16",
    "dataset.img_size=32",
    "dataset.num_classes=0",
    "dataset.batch_size=16",
    "dataset.workers=0",
    "train.num_epochs=1",
]
MAE = [
    "model.arch=vit_tiny_patch16",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "dataset.augmentation.input_size=32",
    "dataset.batch_size=16",
    "dataset.num_workers_per_gpu=0",
    "train.num_epochs=1",
    "train.optim.warmup_epochs=0",
]


@contextmanager
def tiny_backbones() -> Iterator[None]:
    """While the block runs, classification, mae and nvdinov2 build ``TINY_VIT``-sized ViTs."""
    from foveal.networks.classification import model as classification_model
    from foveal.networks.mae import models as mae_models
    from foveal.networks.nvdinov2 import backbones as nvdinov2_backbones

    with pytest.MonkeyPatch.context() as mp:
        for module in (classification_model, mae_models, nvdinov2_backbones):
            real = module.create_backbone
            mp.setattr(module, "create_backbone", lambda name, real=real, **kw: real(name, **{**kw, **TINY_VIT}))
        yield
