"""Transforms: geometry, colour, tensors, builders, and randomness across DataLoader workers."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from foveal.data import (
    CenterCrop,
    ColorJitter,
    Compose,
    GaussianBlur,
    Normalize,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    Solarize,
    ToTensor,
    build_eval_transform,
    build_train_transform,
)

pytestmark = pytest.mark.unit


def _image(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _array(im: Image.Image) -> np.ndarray:
    return np.asarray(im).astype(int)


def test_random_resized_crop_size_bounds_and_seeded_repeatability():
    crop = RandomResizedCrop(16, scale=(0.2, 0.6), rng=random.Random(0))
    out = crop(_image())
    assert out.size == (16, 16)
    assert (
        _array(RandomResizedCrop(16, scale=(0.2, 0.6), rng=random.Random(0))(_image())).tolist()
        == _array(out).tolist()
    )
    seeded = [RandomResizedCrop(16, rng=torch.Generator().manual_seed(5))(_image()) for _ in range(2)]
    assert _array(seeded[0]).tolist() == _array(seeded[1]).tolist()  # a torch.Generator works too
    rng = random.Random(1)
    for _ in range(200):
        left, top, w, h = crop.get_params(400, 300, rng)
        assert 0 <= left <= 400 - w and 0 <= top <= 300 - h
        assert 0.2 - 0.01 <= w * h / (400 * 300) <= 0.6 + 0.01
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05


def test_random_resized_crop_falls_back_on_thin_images():
    crop = RandomResizedCrop((8, 12), scale=(0.9, 1.0), ratio=(1.0, 1.0))
    left, top, w, h = crop.get_params(100, 2, random.Random(0))
    assert (w, h) == (2, 2) and top == 0 and left == 49
    assert crop(_image(100, 2)).size == (12, 8)  # PIL sizes are (width, height)


def test_resize_and_center_crop():
    assert Resize(15)(_image(40, 30)).size == (20, 15)
    assert Resize(15)(_image(30, 40)).size == (15, 20)
    assert Resize((10, 12))(_image()).size == (12, 10)
    image = _image(40, 30)
    crop = CenterCrop(10)(image)
    assert _array(crop).tolist() == _array(image)[10:20, 15:25].tolist()
    padded = _array(CenterCrop((34, 40))(image))  # larger than the image: black border
    assert padded.shape == (34, 40, 3) and padded[:2].max() == 0 and padded[-2:].max() == 0


def test_flip_grayscale_solarize_blur_extremes():
    image = _image()
    assert _array(RandomHorizontalFlip(1.0)(image)).tolist() == _array(image)[:, ::-1].tolist()
    assert RandomHorizontalFlip(0.0)(image) is image
    grey = _array(RandomGrayscale(1.0)(image))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    flat = Image.new("RGB", (4, 4), (200, 100, 128))
    assert Solarize(1.0, threshold=128)(flat).getpixel((0, 0)) == (55, 100, 127)
    blurred = _array(GaussianBlur(1.0, 1.5, 1.5)(image))
    assert blurred.std() < _array(image).std()
    assert GaussianBlur(0.0)(image) is image


def test_color_jitter():
    image = _image()
    assert _array(ColorJitter()(image)).tolist() == _array(image).tolist()
    brighter = ColorJitter(brightness=0.5, rng=random.Random(3))(image)
    assert brighter.size == image.size and _array(brighter).tolist() != _array(image).tolist()
    red = Image.new("RGB", (2, 2), (255, 0, 0))
    shifted = ColorJitter(hue=0.5, rng=random.Random(0))(red).getpixel((0, 0))
    assert shifted != (255, 0, 0) and max(shifted) >= 250  # hue moved, saturation and value kept
    with pytest.raises(ValueError):
        ColorJitter(hue=0.7)


def test_to_tensor_and_normalize():
    tensor = ToTensor()(_image())
    assert (
        tensor.shape == (3, 30, 40)
        and tensor.dtype == torch.float32
        and 0 <= tensor.min()
        and tensor.max() <= 1
    )
    assert torch.allclose(
        tensor[:, 2, 5] * 255, torch.tensor(np.asarray(_image())[2, 5], dtype=torch.float32)
    )
    assert ToTensor()(Image.new("L", (5, 4), 255)).shape == (1, 4, 5)
    normalized = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(torch.ones(3, 2, 2))
    assert torch.allclose(normalized, torch.full((3, 2, 2), 2.0))


def test_builders():
    train = build_train_transform(24, color_jitter=0.4, rng=random.Random(0))
    assert train(_image(64, 48)).shape == (3, 24, 24)
    assert "RandomResizedCrop" in repr(train) and "ColorJitter" in repr(train)
    evaluate = build_eval_transform(224, crop_pct=0.875)
    assert evaluate.transforms[0].size == 256  # floor(224 / 0.875)
    first = evaluate(_image(300, 260))
    assert first.shape == (3, 224, 224) and torch.equal(first, evaluate(_image(300, 260)))
    assert build_eval_transform((16, 24))(_image()).shape == (3, 16, 24)
    with pytest.raises(ValueError):
        build_eval_transform(224, crop_pct=0)


def test_default_randomness_follows_torch_seed():
    flips = Compose([RandomResizedCrop(8), RandomHorizontalFlip()])
    torch.manual_seed(123)
    a = [_array(flips(_image())).sum() for _ in range(5)]
    torch.manual_seed(123)
    b = [_array(flips(_image())).sum() for _ in range(5)]
    assert a == b


class _CropParams(Dataset):
    """Each item: the crop box drawn by the process-default generator (no explicit rng)."""

    def __init__(self):
        self.crop = RandomResizedCrop(8)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(self.crop.get_params(1000, 1000, self.crop._rand()))


def _draws(workers: int) -> list[list[int]]:
    loader = DataLoader(_CropParams(), batch_size=1, num_workers=workers)
    return [batch[0].tolist() for batch in loader]


def test_workers_draw_different_augmentations_and_runs_repeat():
    torch.manual_seed(7)
    first = _draws(2)
    # Items 0, 2, 4... come from worker 0 and 1, 3, 5... from worker 1: the streams must differ.
    assert first[0::2] != first[1::2]
    torch.manual_seed(7)
    assert _draws(2) == first
