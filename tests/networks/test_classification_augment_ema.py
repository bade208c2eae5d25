"""classification training pieces: Mixup/CutMix targets and boxes, soft cross entropy, weight EMA
(math and checkpoint round trip), RandAugment determinism, the confusion-matrix PNG."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from foveal.engine.ema import WeightEma
from foveal.engine.mixup import (
    Mixup,
    MixupSettings,
    cutmix_box,
    mix_targets,
    one_hot_smoothed,
    soft_target_cross_entropy,
)

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------------------------ mixup


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("alphas", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_targets_sum_to_one_and_match_lam(mode, alphas):
    settings = MixupSettings(
        mixup_alpha=alphas[0], cutmix_alpha=alphas[1], mode=mode, label_smoothing=0.1, num_classes=5
    )
    mixer = Mixup(settings, seed=0)
    images = torch.rand(6, 3, 16, 16)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    for _ in range(5):
        mixed, soft = mixer(images, target)
        assert mixed.shape == images.shape and soft.shape == (6, 5)
        torch.testing.assert_close(soft.sum(dim=1), torch.ones(6))
        # Weight of the own class minus the smoothing floor is lam (+ (1-lam) if partner shares it).
        floor = 0.1 / 5
        for i in range(6):
            j = 5 - i
            own = soft[i, target[i]] - floor
            partner = soft[i, target[j]] - floor
            if target[i] != target[j]:
                torch.testing.assert_close(own + partner, torch.tensor(0.9))


def test_cutmix_box_area_matches_corrected_lam():
    rng = np.random.default_rng(0)
    for lam in (0.1, 0.3, 0.5, 0.9, 0.999):
        for _ in range(20):
            (y0, y1, x0, x1), corrected = cutmix_box(24, 32, lam, rng)
            assert 0 <= y0 <= y1 <= 24 and 0 <= x0 <= x1 <= 32
            assert corrected == pytest.approx(1 - (y1 - y0) * (x1 - x0) / (24 * 32))
    (y0, y1, x0, x1), corrected = cutmix_box(20, 20, 0.0, rng, minmax=(0.5, 0.5))
    assert (y1 - y0, x1 - x0) == (10, 10) and corrected == pytest.approx(0.75)


def test_cutmix_pastes_partner_pixels_in_the_lam_fraction():
    settings = MixupSettings(cutmix_alpha=1.0, num_classes=2)
    mixer = Mixup(settings, seed=3)
    images = torch.stack([torch.zeros(3, 16, 16), torch.ones(3, 16, 16)])
    target = torch.tensor([0, 1])
    for _ in range(10):
        mixed, soft = mixer(images, target)
        kept = (mixed[0] == 0).float().mean()  # image 0 keeps its own pixels outside the box
        torch.testing.assert_close(soft[0, 0], kept)
        torch.testing.assert_close(soft[1, 1], (mixed[1] == 1).float().mean())


def test_mixup_blends_images_with_lam_and_prob_zero_is_identity():
    images = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
    target = torch.tensor([0, 1])
    mixed, soft = Mixup(MixupSettings(mixup_alpha=0.4, num_classes=2), seed=1)(images, target)
    torch.testing.assert_close(mixed[0], torch.full((3, 4, 4), float(soft[0, 1])))
    off = Mixup(MixupSettings(mixup_alpha=0.4, prob=0.0, num_classes=2), seed=1)
    mixed, soft = off(images, target)
    assert torch.equal(mixed, images) and torch.equal(soft, one_hot_smoothed(target, 2))


def test_soft_target_cross_entropy_matches_hard_targets():
    logits, target = torch.randn(8, 4), torch.randint(0, 4, (8,))
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5])
    for smoothing in (0.0, 0.1):
        soft = one_hot_smoothed(target, 4, smoothing)
        expected = F.cross_entropy(logits, target, label_smoothing=smoothing)
        torch.testing.assert_close(soft_target_cross_entropy(logits, soft), expected)
    expected = F.cross_entropy(logits, target, weight=weight)
    torch.testing.assert_close(
        soft_target_cross_entropy(logits, one_hot_smoothed(target, 4), weight), expected
    )
    lam = torch.full((8,), 0.7)
    torch.testing.assert_close(mix_targets(target, lam, 4, 0.0).sum(1), torch.ones(8))


def test_mixup_settings_reject_bad_values():
    with pytest.raises(ValueError, match="mode"):
        MixupSettings(mixup_alpha=1.0, mode="row", num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        MixupSettings(mixup_alpha=1.0)
    assert not MixupSettings(num_classes=3).enabled


# -------------------------------------------------------------------------------------- EMA


def test_ema_update_math_and_warmup():
    model = nn.Linear(2, 1)
    nn.init.zeros_(model.weight)
    ema = WeightEma(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.state["weight"], torch.full((1, 2), 0.1))
    ema.update(model)
    torch.testing.assert_close(ema.state["weight"], torch.full((1, 2), 0.19))
    warm = WeightEma(model, decay=0.999)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    warm.num_updates = 10_000
    assert warm.current_decay() == pytest.approx(0.999)
    # The forward pass with the average leaves the live weights alone.
    out = ema.forward(model, torch.ones(1, 2))
    torch.testing.assert_close(out, torch.full((1, 1), 0.38) + model.bias.detach())
    assert torch.equal(model.weight, torch.ones(1, 2))


def test_ema_checkpoint_round_trip_restores_the_average():
    from foveal.engine.supervised import ClassificationModule, OptimSettings
    from foveal.nn import VisionTransformer
    from foveal.nn.classifier import Classifier

    def module() -> ClassificationModule:
        torch.manual_seed(0)
        backbone = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)
        return ClassificationModule(
            Classifier(backbone, 3), OptimSettings(), ema_decay=0.5, classes=["a", "b", "c"]
        )

    first = module()
    with torch.no_grad():
        for p in first.model.parameters():
            p.add_(1.0)
    first.ema.update(first.model)
    checkpoint = {"state_dict": first.state_dict()}
    first.on_save_checkpoint(checkpoint)
    assert checkpoint["ema_updates"] == 1 and not any(k.startswith("ema") for k in checkpoint["state_dict"])

    second = module()
    second.on_load_checkpoint(checkpoint)
    assert second.ema.num_updates == 1
    for key, value in first.ema.state_dict().items():
        assert torch.equal(second.ema.state[key], value), key
    # A checkpoint saved without EMA starts the average from its live weights.
    third = module()
    third.on_load_checkpoint({"state_dict": checkpoint["state_dict"]})
    assert torch.equal(third.ema.state["head.1.weight"], first.model.head[1].weight)


# ------------------------------------------------------------------------------ RandAugment


def _image() -> Image.Image:
    array = (np.random.default_rng(0).random((24, 20, 3)) * 255).astype("uint8")
    return Image.fromarray(array)


def test_randaugment_is_deterministic_with_a_seeded_rng():
    from foveal.data import RandAugment

    img = _image()
    a = RandAugment("rand-m9-mstd0.5-inc1-n3-p1", rng=random.Random(7))
    b = RandAugment("rand-m9-mstd0.5-inc1-n3-p1", rng=random.Random(7))
    outs_a = [np.asarray(a(img)) for _ in range(6)]
    outs_b = [np.asarray(b(img)) for _ in range(6)]
    assert all(np.array_equal(x, y) for x, y in zip(outs_a, outs_b, strict=True))
    assert any(not np.array_equal(x, np.asarray(img)) for x in outs_a)
    c = RandAugment("rand-m9-n3-p1", rng=torch.Generator().manual_seed(1))
    d = RandAugment("rand-m9-n3-p1", rng=torch.Generator().manual_seed(1))
    assert np.array_equal(np.asarray(c(img)), np.asarray(d(img)))


@pytest.mark.parametrize("inc", [0, 1])
def test_every_randaugment_op_keeps_size_and_mode(inc):
    from foveal.data import RandAugment
    from foveal.data.randaugment import _OPS

    img = _image()
    for op in _OPS:
        for m in (0, 5, 10):
            out = RandAugment(f"rand-m{m}-n1-p1-inc{inc}", ops=[op], rng=random.Random(0))(img)
            assert isinstance(out, Image.Image) and out.size == img.size and out.mode == "RGB", op


def test_randaugment_policy_errors_name_the_part():
    from foveal.data.randaugment import parse_policy

    assert parse_policy("rand-m7-n3-mstd0.5-mmax9-p0.3-inc1").num_ops == 3
    with pytest.raises(ValueError, match="'w0'"):
        parse_policy("rand-m9-w0")
    with pytest.raises(ValueError, match="start with 'rand'"):
        parse_policy("augmix-m5")


def test_bad_randaugment_is_a_spec_error():
    from foveal.networks.classification.config import ClassificationConfig
    from foveal.networks.classification.resolve import resolve
    from foveal.spec import SpecError, build_config

    cfg = build_config(ClassificationConfig, {"dataset": {"augmentation": {"random_aug": {"policy": "rand-x9"}}}})
    with pytest.raises(SpecError, match="dataset.augmentation.random_aug.policy"):
        resolve(cfg)


# ------------------------------------------------------------------------------------- PNG


def test_confusion_matrix_png_is_written_and_readable(tmp_path):
    from foveal.networks.classification.plots import draw_confusion_matrix

    path = draw_confusion_matrix([[5, 1], [0, 6]], ["circle", "square"], tmp_path / "cm.png", "top-1 0.92")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100
        pixels = np.asarray(im.convert("RGB"))
    # Some dark (high-share) cells and white background are both present.
    assert (pixels.sum(axis=2) < 200).any() and (pixels.sum(axis=2) == 765).any()
