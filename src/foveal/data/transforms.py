"""Image transforms without torchvision: PIL image in, float tensor (C, H, W) out.

Geometry and colour follow torchvision's PIL code paths (RandomResizedCrop's sampling,
shorter-side Resize, CenterCrop, ColorJitter via ImageEnhance and an HSV hue shift), so recipes
from MAE, DINO/DINOv2 and timm carry over unchanged.

Randomness: every random transform takes an optional ``rng``: a `random.Random` or a
`torch.Generator`. Without one it draws from torch's global generator, as torchvision does:
torch seeds that generator differently in each DataLoader worker (and each epoch), so workers
never repeat each other's augmentations (the numpy-global-state bug), and a run is reproducible
under ``torch.manual_seed``. An explicit generator is copied into every worker as is, so pass
one only for single-process use such as tests.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class _TorchRandom:
    """The part of `random.Random`'s API used here, drawing from a torch generator."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator  # None: torch's global generator, seeded per DataLoader worker

    def random(self) -> float:
        return float(torch.rand((), dtype=torch.float64, generator=self.generator))

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()

    def randint(self, a: int, b: int) -> int:
        return int(torch.randint(a, b + 1, (), generator=self.generator))

    def shuffle(self, items: list) -> None:
        order = torch.randperm(len(items), generator=self.generator).tolist()
        items[:] = [items[i] for i in order]

    def __repr__(self) -> str:
        return "torch.default_generator" if self.generator is None else repr(self.generator)


_TORCH_GLOBAL = _TorchRandom()
RandomSource = random.Random | torch.Generator


def _resample(interpolation: str | Image.Resampling) -> Image.Resampling:
    if isinstance(interpolation, Image.Resampling):
        return interpolation
    try:
        return _RESAMPLE[interpolation.lower()]
    except KeyError:
        raise ValueError(f"interpolation {interpolation!r} is not one of {', '.join(_RESAMPLE)}") from None


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int or a pair."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _check_probability(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p}")
    return p


class _Transform:
    """Base: a readable repr from the constructor arguments kept in `_args`."""

    _args: tuple[str, ...] = ()

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._args)
        return f"{type(self).__name__}({args})"


class _RandomTransform(_Transform):
    def __init__(self, rng: RandomSource | None):
        self.rng = rng
        self._source = _TorchRandom(rng) if isinstance(rng, torch.Generator) else rng

    def _rand(self) -> random.Random | _TorchRandom:
        return self._source if self._source is not None else _TORCH_GLOBAL


class Compose(_Transform):
    """Apply transforms in order."""

    def __init__(self, transforms: Iterable[Callable[[Any], Any]]):
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class RandomResizedCrop(_RandomTransform):
    """Crop a random area fraction `scale` with aspect `ratio`, resized to `size` (torchvision's sampling)."""

    _args = ("size", "scale", "ratio", "interpolation")

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: str = "bicubic",
        rng: RandomSource | None = None,
    ):
        super().__init__(rng)
        if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"need 0 < min <= max for scale {scale} and ratio {ratio}")
        self.size, self.scale, self.ratio = _pair(size), tuple(scale), tuple(ratio)
        self.interpolation, self._resample = interpolation, _resample(interpolation)

    def get_params(
        self, width: int, height: int, rng: random.Random | _TorchRandom
    ) -> tuple[int, int, int, int]:
        """(left, top, crop width, crop height): ten tries at the sampled shape, then a centre crop."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, width - w), rng.randint(0, height - h), w, h
        in_ratio = width / height  # fallback: the largest centred crop within the ratio bounds
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, img: Image.Image) -> Image.Image:
        left, top, w, h = self.get_params(img.width, img.height, self._rand())
        height, width = self.size
        return img.resize((width, height), self._resample, box=(left, top, left + w, top + h))


class Resize(_Transform):
    """Resize the shorter side to `size` keeping the aspect ratio, or to exactly (height, width)."""

    _args = ("size", "interpolation")

    def __init__(self, size: int | Sequence[int], interpolation: str = "bicubic"):
        self.size = size if isinstance(size, int) else _pair(size)
        self.interpolation, self._resample = interpolation, _resample(interpolation)

    def __call__(self, img: Image.Image) -> Image.Image:
        if isinstance(self.size, int):
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.size * long / short)
            new_w, new_h = (self.size, new_long) if w <= h else (new_long, self.size)
        else:
            new_h, new_w = self.size
        if (new_w, new_h) == img.size:
            return img
        return img.resize((new_w, new_h), self._resample)


class CenterCrop(_Transform):
    """Crop the centre `size` (int or (height, width)); smaller images are padded with black."""

    _args = ("size",)

    def __init__(self, size: int | Sequence[int]):
        self.size = _pair(size)

    def __call__(self, img: Image.Image) -> Image.Image:
        height, width = self.size
        left = int(round((img.width - width) / 2.0))
        top = int(round((img.height - height) / 2.0))
        return img.crop((left, top, left + width, top + height))  # PIL fills outside with zeros


class RandomHorizontalFlip(_RandomTransform):
    """Mirror left-right with probability `p`."""

    _args = ("p",)

    def __init__(self, p: float = 0.5, rng: RandomSource | None = None):
        super().__init__(rng)
        self.p = _check_probability(p)

    def __call__(self, img: Image.Image) -> Image.Image:
        if self._rand().random() < self.p:
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img



def _enhance(enhancer: Any, image: Image.Image, factor: float) -> Image.Image:
    """One PIL ``ImageEnhance`` step (brightness, contrast or colour) by ``factor``."""
    enhanced: Image.Image = enhancer(image).enhance(factor)
    return enhanced

class ColorJitter(_RandomTransform):
    """Random brightness, contrast, saturation (factors in [1-x, 1+x]) and hue (shift in [-h, h]), in random order.

    Hue is shifted on PIL's 8-bit HSV hue channel, as torchvision does for PIL images.
    """

    _args = ("brightness", "contrast", "saturation", "hue")

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        rng: RandomSource | None = None,
    ):
        super().__init__(rng)
        if min(brightness, contrast, saturation) < 0 or not 0 <= hue <= 0.5:
            raise ValueError("brightness, contrast and saturation must be >= 0 and hue in [0, 0.5]")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def __call__(self, img: Image.Image) -> Image.Image:
        rng = self._rand()
        ops: list[tuple[Callable[[Image.Image, float], Image.Image], float]] = []
        for enhancer, amount in (
            (ImageEnhance.Brightness, self.brightness),
            (ImageEnhance.Contrast, self.contrast),
            (ImageEnhance.Color, self.saturation),
        ):
            if amount > 0:
                factor = rng.uniform(max(0.0, 1 - amount), 1 + amount)
                ops.append((functools.partial(_enhance, enhancer), factor))
        if self.hue > 0:
            ops.append((_shift_hue, rng.uniform(-self.hue, self.hue)))
        rng.shuffle(ops)
        for op, value in ops:
            img = op(img, value)
        return img


def _shift_hue(img: Image.Image, shift: float) -> Image.Image:
    h, s, v = img.convert("HSV").split()
    hue = np.array(h, dtype=np.uint8)
    hue += np.uint8(int(round(shift * 255)) % 256)  # uint8 arithmetic wraps around the colour circle
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert("RGB")


class RandomGrayscale(_RandomTransform):
    """Replace the image by its grey version (kept as 3 channels) with probability `p`."""

    _args = ("p",)

    def __init__(self, p: float = 0.1, rng: RandomSource | None = None):
        super().__init__(rng)
        self.p = _check_probability(p)

    def __call__(self, img: Image.Image) -> Image.Image:
        if self._rand().random() < self.p:
            return img.convert("L").convert("RGB")
        return img


class GaussianBlur(_RandomTransform):
    """With probability `p`, blur with a radius drawn from [radius_min, radius_max] (DINO's recipe)."""

    _args = ("p", "radius_min", "radius_max")

    def __init__(
        self,
        p: float = 0.5,
        radius_min: float = 0.1,
        radius_max: float = 2.0,
        rng: RandomSource | None = None,
    ):
        super().__init__(rng)
        if not 0 <= radius_min <= radius_max:
            raise ValueError(f"need 0 <= radius_min <= radius_max, got {radius_min}, {radius_max}")
        self.p, self.radius_min, self.radius_max = _check_probability(p), radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        rng = self._rand()
        if rng.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(self.radius_min, self.radius_max)))


class Solarize(_RandomTransform):
    """With probability `p`, invert pixels at or above `threshold` (BYOL/DINO)."""

    _args = ("p", "threshold")

    def __init__(self, p: float = 0.2, threshold: int = 128, rng: RandomSource | None = None):
        super().__init__(rng)
        self.p, self.threshold = _check_probability(p), threshold

    def __call__(self, img: Image.Image) -> Image.Image:
        if self._rand().random() < self.p:
            return ImageOps.solarize(img, self.threshold)
        return img


class ToTensor(_Transform):
    """PIL image (RGB or L) to a float tensor (C, H, W) in [0, 1]."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        array = np.asarray(img, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        chw = array.transpose(2, 0, 1).copy()  # C-ordered and writable: PIL's buffer is read-only
        return torch.from_numpy(chw).float().div_(255.0)


class Normalize(_Transform):
    """(x - mean) / std per channel on a (C, H, W) tensor."""

    _args = ("mean", "std")

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean and std need the same length and std > 0, got {mean}, {std}")
        self.mean, self.std = tuple(mean), tuple(std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._mean) / self._std


def build_train_transform(
    input_size: int | Sequence[int],
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    color_jitter: float = 0.0,
    interpolation: str = "bicubic",
    rng: RandomSource | None = None,
) -> Compose:
    """RandomResizedCrop, horizontal flip, optional colour jitter (brightness = contrast =
    saturation = `color_jitter`, no hue, as timm), ToTensor, Normalize."""
    steps: list[Callable[[Any], Any]] = [RandomResizedCrop(input_size, scale, ratio, interpolation, rng=rng)]
    if hflip > 0:
        steps.append(RandomHorizontalFlip(hflip, rng=rng))
    if color_jitter > 0:
        steps.append(ColorJitter(color_jitter, color_jitter, color_jitter, rng=rng))
    return Compose([*steps, ToTensor(), Normalize(mean, std)])


def build_eval_transform(
    input_size: int | Sequence[int],
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
) -> Compose:
    """Resize to `input_size / crop_pct` (shorter side), centre-crop `input_size`, ToTensor, Normalize."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    height, width = _pair(input_size)
    if height == width:
        resize = Resize(math.floor(height / crop_pct), interpolation)
    else:
        resize = Resize((math.floor(height / crop_pct), math.floor(width / crop_pct)), interpolation)
    return Compose([resize, CenterCrop((height, width)), ToTensor(), Normalize(mean, std)])
