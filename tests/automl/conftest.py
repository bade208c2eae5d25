"""Tiny mae pretraining runs for AutoML tests: real subprocess trials that take seconds each."""

from __future__ import annotations

from pathlib import Path

import pytest

from foveal.data.synthetic import make_demo_dataset

# vit_tiny_patch16 at 32 px is 4 patches: an epoch over 24 images is three steps.
TINY_MAE = [
    "model.arch=vit_tiny_patch16",
    "model.decoder_embed_dim=16",
    "dataset.augmentation.input_size=32",
    "dataset.batch_size=8",
    "dataset.num_workers_per_gpu=0",
]


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("automl-shapes")
    return make_demo_dataset(
        out, num_train=24, num_val=8, num_test=4, image_size=32, num_classes=2, num_workers=1
    )


@pytest.fixture
def tiny_mae(shapes):
    """``tiny_mae(epochs, *extra)`` -> spec overrides for a seconds-long mae pretraining trial."""

    def overrides(epochs: int, *extra: str) -> list[str]:
        return [
            *TINY_MAE,
            f"train.num_epochs={epochs}",
            f"dataset.train_data_sources={shapes['images_train']}",
            *extra,
        ]

    return overrides
