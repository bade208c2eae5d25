"""Multi-crop augmentation and batching of nvdinov2 (DINOv2's ``DataAugmentationDINO``, arXiv:2304.07193).

Each image gives ``n_global_crops`` large views (seen by teacher and student) and
``n_local_crops`` small ones (student only): random resized crop + flip, colour jitter and
grayscale (strength and probabilities from ``dataset.transform``; DINOv2's 0.8 and 0.2 by default),
then Gaussian blur with p=1.0 on the first global crop, 0.1 on the others (which also get
solarize, p=0.2) and 0.5 on local crops (BYOL's asymmetric recipe, Grill et al.,
arXiv:2006.07733). PIL and torch only, from :mod:`foveal.data.transforms`.

:class:`MultiCropCollate` stacks a batch crop-major: ``global_crops`` (G B, 3, S, S) is crop 0 of
every image, then crop 1, ...; ``local_crops`` (L B, 3, s, s); ``masks`` (G B, N) bool.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from foveal.data.gpu_augment import NUM_PARAMS
from foveal.data.transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ColorJitter,
    Compose,
    GaussianBlur,
    Normalize,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Solarize,
    ToTensor,
)
from foveal.networks.nvdinov2.config import MaskingConfig, TransformConfig
from foveal.networks.nvdinov2.masking import BlockMaskGenerator, sample_masks


class RandomApply:
    """Apply ``transform`` with probability ``p``."""

    def __init__(self, transform: Callable[[Any], Any], p: float) -> None:
        self.transform, self.p = transform, p

    def __call__(self, img: Any) -> Any:
        return self.transform(img) if random.random() < self.p else img

    def __repr__(self) -> str:
        return f"RandomApply({self.transform!r}, p={self.p})"


def _colour(transform: TransformConfig) -> list[Any]:
    brightness, contrast, saturation, hue = transform.color_jitter  # four values (checked by resolve)
    return [
        RandomApply(ColorJitter(brightness, contrast, saturation, hue), p=transform.color_jitter_prob),
        RandomGrayscale(p=transform.grayscale_prob),
    ]


class MultiCropAugmentation:
    """PIL image -> ``{"global_crops": [G x (3, S, S)], "local_crops": [L x (3, s, s)]}``.

    Args:
        transform: ``dataset.transform`` (n_global_crops, global_crops_scale/size, n_local_crops,
            local_crops_scale/size, color_jitter, color_jitter_prob, grayscale_prob,
            gpu_augmentation).
        mean, std: normalisation (ImageNet's by default, as DINOv2).

    With ``transform.gpu_augmentation`` the crops are ``uint8`` after the geometry only, each with
    its colour parameters (``global_params`` / ``local_params``, :mod:`foveal.data.gpu_augment`);
    `device_colour` finishes them on the training device.
    """

    def __init__(
        self,
        transform: TransformConfig,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        self.n_global, self.n_local = transform.n_global_crops, transform.n_local_crops
        self.gpu = bool(transform.gpu_augmentation)
        to_tensor: list[Callable[[Any], Any]] = [ToTensor(), Normalize(mean, std)]

        def geometry(size: int, scale: Sequence[float]) -> list[Callable[[Any], Any]]:
            return [
                RandomResizedCrop(size, scale=(scale[0], scale[1]), interpolation="bicubic"),
                RandomHorizontalFlip(0.5),
            ]

        global_geometry = geometry(transform.global_crops_size, transform.global_crops_scale)
        self.first_global = Compose([*global_geometry, *_colour(transform), GaussianBlur(p=1.0), *to_tensor])
        self.other_global = Compose(
            [
                *global_geometry,
                *_colour(transform),
                GaussianBlur(p=0.1),
                Solarize(p=0.2, threshold=128),
                *to_tensor,
            ]
        )
        local_geometry = geometry(transform.local_crops_size, transform.local_crops_scale)
        self.local = Compose([*local_geometry, *_colour(transform), GaussianBlur(p=0.5), *to_tensor])
        if self.gpu:
            from foveal.data.gpu_augment import ColourPlan

            jitter = (list(transform.color_jitter), transform.color_jitter_prob, transform.grayscale_prob)
            self.plans = (ColourPlan(*jitter, blur_p=1.0), ColourPlan(*jitter, blur_p=0.1, solarize_p=0.2),
                          ColourPlan(*jitter, blur_p=0.5))  # fmt: skip
            self.geometry = (Compose(global_geometry), Compose(local_geometry))

    def _device_crops(self, img: Image.Image) -> dict[str, list[torch.Tensor]]:
        def crop(geometry: Callable[[Any], Any]) -> torch.Tensor:
            array = np.asarray(geometry(img).convert("RGB"), dtype=np.uint8)
            return torch.from_numpy(array.copy()).permute(2, 0, 1)

        first, other, local = self.plans
        global_params = [(first if i == 0 else other).sample() for i in range(self.n_global)]
        return {
            "global_crops": [crop(self.geometry[0]) for _ in range(self.n_global)],
            "global_params": global_params,
            "local_crops": [crop(self.geometry[1]) for _ in range(self.n_local)],
            "local_params": [local.sample() for _ in range(self.n_local)],
        }

    def __call__(self, img: Image.Image) -> dict[str, list[torch.Tensor]]:
        if self.gpu:
            return self._device_crops(img)
        global_crops = [
            self.first_global(img) if i == 0 else self.other_global(img) for i in range(self.n_global)
        ]
        local_crops = [self.local(img) for _ in range(self.n_local)]
        return {"global_crops": global_crops, "local_crops": local_crops}


class MultiCropCollate:
    """Stack per-image crop dicts crop-major and draw the iBOT masks of the global crops.

    Args:
        grid: (H, W) patch grid of a global crop.
        masking: ``train.masking`` (mask_ratio_min/max, mask_sample_probability).
    """

    def __init__(self, grid: tuple[int, int], masking: MaskingConfig) -> None:
        self.generator = BlockMaskGenerator(grid)
        self.ratio = (masking.mask_ratio_min, masking.mask_ratio_max)
        self.probability = masking.mask_sample_probability

    def __call__(self, samples: list[dict[str, list[torch.Tensor]]]) -> dict[str, torch.Tensor]:
        def crop_major(key: str) -> torch.Tensor | None:
            count = len(samples[0].get(key, []))
            return torch.stack([s[key][i] for i in range(count) for s in samples]) if count else None

        out = {key: crop_major(key) for key in samples[0]}
        global_crops = out["global_crops"]
        assert global_crops is not None
        if out["local_crops"] is None:
            out["local_crops"] = global_crops.new_zeros((0, *global_crops.shape[1:]))
            if "local_params" in out:
                out["local_params"] = torch.zeros(0, NUM_PARAMS)
        batch = {key: value for key, value in out.items() if value is not None}
        batch["masks"] = sample_masks(len(global_crops), self.generator, *self.ratio, self.probability)
        return batch


def device_colour(
    batch: dict[str, torch.Tensor],
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> dict[str, torch.Tensor]:
    """A ``gpu_augmentation`` batch (uint8 crops + parameters) made a normal one, on its device."""
    if "global_params" not in batch:
        return batch
    from foveal.data.gpu_augment import apply_colour

    out = {k: v for k, v in batch.items() if not k.endswith("_params")}
    for kind in ("global", "local"):
        crops = batch[f"{kind}_crops"]
        out[f"{kind}_crops"] = (
            apply_colour(crops, batch[f"{kind}_params"], mean, std) if len(crops) else crops.float()
        )
    return out
