"""Device-side colour augmentation (foveal.data.gpu_augment) against the PIL path it replaces, one
operation at a time on a photo-like image (run on CPU tensors: the same code runs on a GPU).

Bounds (on [0, 1] pixels): brightness, contrast, saturation, grayscale and solarize within 1.5/255
of PIL (PIL rounds to 8 bits between steps); hue within 2/255 on average (PIL's HSV is 8-bit);
the Gaussian within 2/255 on average (PIL approximates it with box blurs)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from foveal.data.gpu_augment import (
    BRIGHTNESS,
    CONTRAST,
    GRAY,
    HUE,
    NUM_PARAMS,
    ORDER,
    SATURATION,
    SIGMA,
    SOLARIZE,
    ColourPlan,
    apply_colour,
)
from foveal.data.transforms import _shift_hue

pytestmark = pytest.mark.unit
STEP = 1.5 / 255


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """Smooth gradients plus noise and a saturated square: every operation has something to change."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:64]
    image = np.stack([x * 4, y * 5, (x + y) * 2], -1).astype(np.float64) + rng.normal(0, 12, (48, 64, 3))
    image[10:20, 30:45] = (230, 40, 20)
    return Image.fromarray(image.clip(0, 255).astype(np.uint8))


def _identity(n: int = 1) -> torch.Tensor:
    row = torch.zeros(NUM_PARAMS)
    row[BRIGHTNESS] = row[CONTRAST] = row[SATURATION] = 1.0
    row[ORDER] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    return row.repeat(n, 1)


def _ours(image: Image.Image, row: torch.Tensor) -> np.ndarray:
    crops = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)[None]
    out = apply_colour(crops, row[None], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return out[0].permute(1, 2, 0).numpy()


def _pil(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255


def test_no_operation_is_plain_normalisation(photo):
    crops = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[None]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = (crops.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(apply_colour(crops, _identity(), mean, std), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("column", "value", "reference"),
    [
        (BRIGHTNESS, 1.35, lambda im, f: ImageEnhance.Brightness(im).enhance(f)),
        (BRIGHTNESS, 0.6, lambda im, f: ImageEnhance.Brightness(im).enhance(f)),
        (CONTRAST, 0.6, lambda im, f: ImageEnhance.Contrast(im).enhance(f)),
        (CONTRAST, 1.4, lambda im, f: ImageEnhance.Contrast(im).enhance(f)),
        (SATURATION, 0.3, lambda im, f: ImageEnhance.Color(im).enhance(f)),
        (SATURATION, 1.5, lambda im, f: ImageEnhance.Color(im).enhance(f)),
    ],
)
def test_jitter_operations_match_pil_enhance(photo, column, value, reference):
    row = _identity()[0]
    row[column] = value
    diff = np.abs(_ours(photo, row) - _pil(reference(photo, value)))
    assert diff.max() <= STEP, diff.max() * 255


@pytest.mark.parametrize("shift", [0.1, -0.25, 0.45])
def test_hue_shift_matches_pil_hsv(photo, shift):
    row = _identity()[0]
    row[HUE] = shift
    diff = np.abs(_ours(photo, row) - _pil(_shift_hue(photo, shift)))
    assert diff.mean() <= 2 / 255, diff.mean() * 255


def test_grayscale_blur_and_solarize_match_pil(photo):
    row = _identity()[0]
    row[GRAY] = 1.0
    assert np.abs(_ours(photo, row) - _pil(photo.convert("L"))).max() <= STEP
    row = _identity()[0]
    row[SIGMA] = 1.5
    blurred = np.abs(_ours(photo, row) - _pil(photo.filter(ImageFilter.GaussianBlur(radius=1.5))))
    assert blurred[4:-4, 4:-4].mean() <= 2 / 255, blurred.mean() * 255  # away from the border handling
    row = _identity()[0]
    row[SOLARIZE] = 1.0
    assert np.abs(_ours(photo, row) - _pil(ImageOps.solarize(photo, 128))).max() <= 1e-6


def test_jitter_runs_in_each_crops_own_order(photo):
    """Brightness then contrast differs from contrast then brightness; each crop of one batch
    follows its own order, as sequential PIL steps do."""
    rows = _identity(2)
    rows[:, BRIGHTNESS], rows[:, CONTRAST] = 1.6, 0.5
    rows[1, ORDER] = torch.tensor([1.0, 0.0, 2.0, 3.0])  # contrast first
    crops = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    out = apply_colour(crops, rows, (0.0,) * 3, (1.0,) * 3).permute(0, 2, 3, 1).numpy()
    first = ImageEnhance.Contrast(ImageEnhance.Brightness(photo).enhance(1.6)).enhance(0.5)
    second = ImageEnhance.Brightness(ImageEnhance.Contrast(photo).enhance(0.5)).enhance(1.6)
    assert np.abs(out[0] - _pil(first)).max() <= 2 * STEP and np.abs(out[1] - _pil(second)).max() <= 2 * STEP
    assert np.abs(out[0] - out[1]).max() > 10 / 255


def test_plans_draw_with_the_configured_probabilities():
    plan = ColourPlan((0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2, blur_p=0.5, solarize_p=0.2)
    rng = random.Random(0)
    rows = torch.stack([plan.sample(rng) for _ in range(4000)])
    jittered = (rows[:, BRIGHTNESS] != 1.0).float().mean()
    assert abs(jittered - 0.8) < 0.03 and abs(rows[:, GRAY].mean() - 0.2) < 0.03
    assert abs((rows[:, SIGMA] > 0).float().mean() - 0.5) < 0.03 and abs(rows[:, SOLARIZE].mean() - 0.2) < 0.03
    on = rows[:, BRIGHTNESS] != 1.0
    assert rows[on, BRIGHTNESS].min() >= 0.6 and rows[on, BRIGHTNESS].max() <= 1.4
    assert rows[:, HUE].abs().max() <= 0.1 and rows[:, SIGMA].max() <= 2.0
    assert {tuple(r) for r in rows[on][:, ORDER].long().tolist()} > {(0, 1, 2, 3)}  # shuffled orders


def test_multicrop_batches_on_the_device_path_look_like_the_cpu_path(photo):
    from foveal.networks.nvdinov2.config import NVDINOv2Config, resolve
    from foveal.networks.nvdinov2.multicrop import MultiCropAugmentation, MultiCropCollate, device_colour

    cfg = NVDINOv2Config()
    t = cfg.dataset.transform
    t.global_crops_size, t.local_crops_size, t.n_local_crops = 32, 16, 3
    cfg.model.backbone.patch_size, cfg.model.backbone.img_size = 16, 32
    cfg = resolve(cfg)
    collate = MultiCropCollate((2, 2), cfg.train.masking)
    batches = {}
    for gpu in (False, True):
        cfg.dataset.transform.gpu_augmentation = gpu
        augment = MultiCropAugmentation(cfg.dataset.transform)
        batches[gpu] = collate([augment(photo) for _ in range(4)])
    raw = batches[True]
    assert raw["global_crops"].dtype == torch.uint8 and raw["global_params"].shape == (8, NUM_PARAMS)
    assert raw["local_params"].shape == (12, NUM_PARAMS) and (raw["global_params"][:4, SIGMA] > 0).all()
    finished = device_colour(raw)
    assert set(finished) == set(batches[False]) and "global_params" not in finished
    for key in ("global_crops", "local_crops"):
        assert finished[key].shape == batches[False][key].shape and finished[key].dtype == torch.float32
        # normalised [0, 1] pixels with ImageNet's statistics, as the CPU path's
        low, high = (0 - 0.485) / 0.229, (1 - 0.406) / 0.225
        assert low - 1e-4 <= float(finished[key].min()) and float(finished[key].max()) <= high + 1e-4
