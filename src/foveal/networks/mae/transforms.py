"""Training transforms of the mae network, from ``dataset.augmentation``.

Pretraining (MAE): RandomResizedCrop (bicubic, ``min_scale``-``max_scale``, ``min_ratio``-
``max_ratio``), horizontal flip, normalise. Fine-tuning (MAE / DeiT recipe): the same crop with
``interpolation``, flip, colour jitter (``color_jitter`` > 0), RandAugment (``auto_aug``), then
normalise. (timm drops colour jitter when an auto-augment policy is set; here a set option is
always applied.) Mixup/CutMix and label smoothing act on batches, in the training module.
"""

from __future__ import annotations

from typing import Any

from foveal.data import (
    ColorJitter,
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ToTensor,
)
from foveal.data.tao_augment import RandomErasing
from foveal.networks.mae.config import AugmentationConfig
from foveal.spec import SpecError, SpecIssue


def pretrain_transform(aug: AugmentationConfig) -> Compose:
    steps: list[Any] = [
        RandomResizedCrop(
            aug.input_size, (aug.min_scale, aug.max_scale), (aug.min_ratio, aug.max_ratio), "bicubic"
        )
    ]
    if aug.hflip > 0:
        steps.append(RandomHorizontalFlip(aug.hflip))
    return Compose([*steps, ToTensor(), Normalize(aug.mean, aug.std)])


def finetune_transform(aug: AugmentationConfig) -> Compose:
    steps: list[Any] = [
        RandomResizedCrop(
            aug.input_size, (aug.min_scale, aug.max_scale), (aug.min_ratio, aug.max_ratio), aug.interpolation
        )
    ]
    if aug.hflip > 0:
        steps.append(RandomHorizontalFlip(aug.hflip))
    if aug.color_jitter > 0:
        steps.append(ColorJitter(aug.color_jitter, aug.color_jitter, aug.color_jitter))
    if aug.auto_aug:
        from foveal.data.randaugment import RandAugment

        try:
            steps.append(RandAugment(aug.auto_aug))
        except ValueError as exc:
            raise SpecError(SpecIssue("dataset.augmentation.auto_aug", str(exc))) from None
    erase: list[Any] = [RandomErasing(aug.re_prob, mode="pixel")] if aug.re_prob > 0 else []
    return Compose([*steps, ToTensor(), Normalize(aug.mean, aug.std), *erase])
