"""TAO classification_pyt's training augmentation, step for step, on PIL images.

TAO's ``dataset.augmentation`` section switches steps of one fixed pipeline on and off; this
module is that pipeline (:func:`build_tao_train_transform`), in TAO's order:

1. squash-resize to ``img_size`` x ``img_size`` (bilinear; the aspect ratio is not kept);
2. horizontal flip with ``hflip``, then vertical flip with ``vflip``;
3. RandAugment (TAO: ``rand-n2-m5-mstd1.0-inc1``, :mod:`foveal.data.randaugment`);
4. rotation by an angle drawn from ``angles`` with probability ``rotate`` (counter-clockwise,
   same canvas, nearest, black fill);
5. random resized crop (area 0.08-1, aspect 3/4-4/3, bilinear);
6. scale by s in ``scale_range`` (bicubic), then a random ``img_size`` window (black padding when
   the scaled image is smaller);
7. Gaussian blur with a radius drawn from [0, 1) pixels, on every image;
8. colour jitter (brightness, contrast, saturation, hue) with probability ``color_probability``;
9. to tensor and normalise (mean/std on the 0-1 scale);
10. random erasing of one rectangle with probability ``erase`` (area 2-33 %, aspect 0.3-3.3,
    filled with zeros, i.e. the mean colour after normalisation).

Evaluation is step 1 and 9 only (:func:`build_tao_eval_transform`). Two differences from TAO,
both where TAO does not do what its key says: every entry of ``angle_list`` can be drawn (TAO
draws from the first three), and ``color_probability`` gates the jitter (TAO jitters every image).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageFilter

from foveal.data.randaugment import RandAugment
from foveal.data.transforms import (
    ColorJitter,
    Compose,
    Normalize,
    RandomResizedCrop,
    RandomSource,
    ToTensor,
    _check_probability,
    _RandomTransform,
    _resample,
    _Transform,
)

TAO_RANDAUGMENT = "rand-n2-m5-mstd1.0-inc1"


@dataclass(frozen=True)
class TaoAugmentation:
    """The switches of TAO's pipeline (see the module docstring); 0 / None / False turns a step off."""

    img_size: int
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    hflip: float = 0.0
    vflip: float = 0.0
    randaugment: str | None = None
    rotate: float = 0.0
    angles: tuple[float, ...] = ()
    random_crop: bool = False
    scale_range: tuple[float, float] | None = None
    blur: bool = False
    color: tuple[float, float, float, float] | None = None  # brightness, contrast, saturation, hue
    color_probability: float = 1.0
    erase: float = 0.0


class SquashResize(_Transform):
    """Resize to exactly ``size`` x ``size`` (or ``(height, width)``; the aspect ratio is not
    kept), as TAO does."""

    _args = ("size", "interpolation")

    def __init__(self, size: int | tuple[int, int], interpolation: str = "bilinear"):
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.interpolation = interpolation
        self._resample = _resample(interpolation)

    def __call__(self, img: Image.Image) -> Image.Image:
        wh = (self.size[1], self.size[0])
        return img if img.size == wh else img.resize(wh, self._resample)


class RandomFlips(_RandomTransform):
    """Horizontal flip with probability ``hflip``, then, independently, vertical with ``vflip``."""

    _args = ("hflip", "vflip")

    def __init__(self, hflip: float, vflip: float, rng: RandomSource | None = None):
        super().__init__(rng)
        self.hflip, self.vflip = _check_probability(hflip), _check_probability(vflip)

    def __call__(self, img: Image.Image) -> Image.Image:
        rng = self._rand()
        if rng.random() < self.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < self.vflip:
            img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        return img


class RandomRotate(_RandomTransform):
    """With probability ``p``, rotate counter-clockwise by one of ``angles`` (degrees) on the same canvas."""

    _args = ("p", "angles")

    def __init__(self, p: float, angles: Sequence[float], rng: RandomSource | None = None):
        super().__init__(rng)
        if not angles:
            raise ValueError("angles must list at least one angle")
        self.p, self.angles = _check_probability(p), tuple(float(a) for a in angles)

    def __call__(self, img: Image.Image) -> Image.Image:
        rng = self._rand()
        if rng.random() >= self.p:
            return img
        angle = self.angles[rng.randint(0, len(self.angles) - 1)]
        return img.rotate(angle, resample=Image.Resampling.NEAREST, expand=False)


class ScaleRandomCrop(_RandomTransform):
    """Scale by s ~ U(scale_range) (bicubic), then take a random ``size`` window; a smaller image is
    pasted at a random offset on a black canvas."""

    _args = ("size", "scale_range")

    def __init__(self, size: int, scale_range: tuple[float, float], rng: RandomSource | None = None):
        super().__init__(rng)
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {list(scale_range)}")
        self.size, self.scale_range = int(size), (float(low), float(high))

    def __call__(self, img: Image.Image) -> Image.Image:
        rng = self._rand()
        scale = rng.uniform(*self.scale_range)
        width, height = (max(1, round(side * scale)) for side in img.size)
        img = img.resize((width, height), Image.Resampling.BICUBIC)
        if width >= self.size and height >= self.size:
            left, top = rng.randint(0, width - self.size), rng.randint(0, height - self.size)
            return img.crop((left, top, left + self.size, top + self.size))
        canvas = Image.new(img.mode, (self.size, self.size))
        # Crop what overflows on one axis, pad the other: the window covers a random part.
        left = rng.randint(0, abs(self.size - width)) * (1 if width < self.size else -1)
        top = rng.randint(0, abs(self.size - height)) * (1 if height < self.size else -1)
        canvas.paste(img, (left, top))
        return canvas


class RandomBlur(_RandomTransform):
    """Gaussian blur of every image with a radius (sigma, pixels) drawn from [0, ``radius_max``)."""

    _args = ("radius_max",)

    def __init__(self, radius_max: float = 1.0, rng: RandomSource | None = None):
        super().__init__(rng)
        self.radius_max = float(radius_max)

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.GaussianBlur(radius=self._rand().uniform(0.0, self.radius_max)))


class RandomApply(_RandomTransform):
    """Apply ``transform`` with probability ``p``."""

    _args = ("transform", "p")

    def __init__(self, transform: Callable[[Any], Any], p: float, rng: RandomSource | None = None):
        super().__init__(rng)
        self.transform, self.p = transform, _check_probability(p)

    def __call__(self, img: Any) -> Any:
        return self.transform(img) if self._rand().random() < self.p else img


class RandomErasing(_RandomTransform):
    """With probability ``p``, erase one rectangle of a normalised (C, H, W) tensor (timm's defaults:
    area 2-33 % of the image, log-uniform aspect 0.3-3.3, up to 10 attempts to fit). ``mode``
    ``"const"`` fills zeros (TAO classification), ``"pixel"`` standard-normal noise per pixel
    (MAE's fine-tuning recipe)."""

    _args = ("p", "mode")

    def __init__(
        self,
        p: float,
        area: tuple[float, float] = (0.02, 1 / 3),
        aspect: tuple[float, float] = (0.3, 1 / 0.3),
        rng: RandomSource | None = None,
        mode: str = "const",
    ):
        super().__init__(rng)
        if mode not in ("const", "pixel"):
            raise ValueError(f"mode must be const or pixel, got {mode!r}")
        self.p, self.area, self.mode = _check_probability(p), area, mode
        self.log_aspect = (math.log(aspect[0]), math.log(aspect[1]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rng = self._rand()
        if rng.random() >= self.p:
            return x
        _, height, width = x.shape
        for _ in range(10):
            target = rng.uniform(*self.area) * height * width
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = round(math.sqrt(target * aspect))
            w = round(math.sqrt(target / aspect))
            if 0 < h < height and 0 < w < width:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                x = x.clone()
                if self.mode == "pixel":
                    noise = torch.Generator().manual_seed(int(rng.random() * 2**53))
                    x[:, top : top + h, left : left + w] = torch.randn(
                        (x.shape[0], h, w), generator=noise, dtype=x.dtype
                    )
                else:
                    x[:, top : top + h, left : left + w] = 0.0
                return x
        return x


def build_tao_train_transform(aug: TaoAugmentation, rng: RandomSource | None = None) -> Compose:
    """TAO classification_pyt's training pipeline for ``aug`` (see the module docstring)."""
    size = aug.img_size
    steps: list[Callable[[Any], Any]] = [SquashResize(size)]
    if aug.hflip > 0 or aug.vflip > 0:
        steps.append(RandomFlips(aug.hflip, aug.vflip, rng=rng))
    if aug.randaugment:
        steps.append(RandAugment(aug.randaugment, rng=rng))
    if aug.rotate > 0 and aug.angles:
        steps.append(RandomRotate(aug.rotate, aug.angles, rng=rng))
    if aug.random_crop:
        steps.append(RandomResizedCrop(size, (0.08, 1.0), (3 / 4, 4 / 3), "bilinear", rng=rng))
    if aug.scale_range is not None:
        steps.append(ScaleRandomCrop(size, aug.scale_range, rng=rng))
    if aug.blur:
        steps.append(RandomBlur(1.0, rng=rng))
    if aug.color is not None and any(v > 0 for v in aug.color):
        jitter = ColorJitter(*aug.color, rng=rng)
        steps.append(jitter if aug.color_probability >= 1 else RandomApply(jitter, aug.color_probability, rng))
    steps += [ToTensor(), Normalize(aug.mean, aug.std)]
    if aug.erase > 0:
        steps.append(RandomErasing(aug.erase, rng=rng))
    return Compose(steps)


def build_tao_eval_transform(
    img_size: int | tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> Compose:
    """Evaluation: squash-resize to ``img_size`` (a side, or (height, width); bilinear), to tensor, normalise."""
    return Compose([SquashResize(img_size), ToTensor(), Normalize(mean, std)])


__all__ = [
    "TAO_RANDAUGMENT",
    "RandomApply",
    "RandomBlur",
    "RandomErasing",
    "RandomFlips",
    "RandomRotate",
    "ScaleRandomCrop",
    "SquashResize",
    "TaoAugmentation",
    "build_tao_eval_transform",
    "build_tao_train_transform",
]
