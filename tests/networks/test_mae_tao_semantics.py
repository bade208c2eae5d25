"""TAO mae keys with TAO's meaning: the crop scale range (torchvision's sampler, max_scale up to 2.0),
train.optim.backbone_multiplier, export.format and the augmentation defaults."""

from __future__ import annotations

import logging
import math
import random
from types import SimpleNamespace

import pytest
import torch

from foveal.data import RandomResizedCrop
from foveal.networks.mae.actions import _warn_pretrain_ignores
from foveal.networks.mae.config import AugmentationConfig, MAEConfig, OptimConfig, resolve
from foveal.networks.mae.models import build_finetune_model
from foveal.networks.mae.module import MAEFinetuneModule, optim_settings_from_mae
from foveal.networks.mae.transforms import finetune_transform, pretrain_transform
from foveal.spec import SpecError
from foveal.spec.loader import load_spec

pytestmark = pytest.mark.unit

DRAWS = 20_000


class CountingRandom(random.Random):
    """``random.Random`` that counts placements: the sampler calls ``randint`` only for a crop that
    fits; the centre-crop fallback draws no position."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.randint_calls = 0

    def randint(self, a: int, b: int) -> int:
        self.randint_calls += 1
        return super().randint(a, b)


def predicted_fallback(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], tries: int = 10
) -> float:
    """torchvision's RandomResizedCrop, worked out: a draw (area s ~ U(scale) of the image, aspect r
    log-uniform in ratio) fits iff s <= min(a / r, r / a) with a = width / height (w = sqrt(s A r)
    <= width and h = sqrt(s A / r) <= height); the centre crop comes after ``tries`` misses."""
    aspect = width / height
    log_r = torch.linspace(math.log(ratio[0]), math.log(ratio[1]), 100_001, dtype=torch.float64)
    r = log_r.exp()
    largest = torch.minimum(aspect / r, r / aspect).clamp(max=scale[1])
    p_fit = ((largest - scale[0]) / (scale[1] - scale[0])).clamp(0, 1).mean().item()
    return (1 - p_fit) ** tries


def measured_fallback(crop: RandomResizedCrop, width: int, height: int) -> float:
    rng = CountingRandom(0)
    for _ in range(DRAWS):
        crop.get_params(width, height, rng)
    placed = rng.randint_calls // 2  # a placed crop draws its left and top
    return (DRAWS - placed) / DRAWS


def test_tao_defaults_and_what_the_crop_is_built_from():
    aug = AugmentationConfig()
    assert (aug.min_scale, aug.max_scale, aug.min_ratio, aug.max_ratio) == (0.1, 2.0, 0.75, 1.33)
    for transform in (pretrain_transform(aug), finetune_transform(aug)):
        crop = transform.transforms[0]
        assert isinstance(crop, RandomResizedCrop)
        assert (crop.scale, crop.ratio) == ((0.1, 2.0), (0.75, 1.33))
    assert OptimConfig().backbone_multiplier == 0.1


@pytest.mark.parametrize(("width", "height"), [(2000, 2000), (2000, 1500)])
def test_max_scale_2_falls_back_as_torchvision_predicts(width, height):
    """Areas above the image never fit and are redrawn; after 10 misses the whole (ratio-clamped)
    image is taken: 0.56% of square images, 1.4% of 4:3 ones at TAO's defaults."""
    crop = pretrain_transform(AugmentationConfig()).transforms[0]
    expected = predicted_fallback(width, height, crop.scale, crop.ratio)
    assert 0.004 < expected < 0.02  # the research notes' 0.5% (square) to 1.4% (4:3)
    sigma = math.sqrt(expected * (1 - expected) / DRAWS)
    measured = measured_fallback(crop, width, height)
    assert abs(measured - expected) < 4 * sigma, (measured, expected)
    # With max_scale 1.0 the fallback practically never happens.
    plain = RandomResizedCrop(224, (0.1, 1.0), crop.ratio)
    assert predicted_fallback(width, height, plain.scale, plain.ratio) < 1e-5
    assert measured_fallback(plain, width, height) == 0.0


def test_the_fallback_is_the_ratio_clamped_centre_crop():
    never_fits = RandomResizedCrop(224, (1.5, 2.0), (0.75, 1.33))
    rng = CountingRandom(0)
    # 4:3 is wider than max_ratio 1.33: the full height, width 1500 * 1.33, centred.
    assert never_fits.get_params(2000, 1500, rng) == (2, 0, 1995, 1500)
    assert never_fits.get_params(1000, 1000, rng) == (0, 0, 1000, 1000)
    assert rng.randint_calls == 0


def test_scale_bounds_are_checked():
    with pytest.raises(SpecError, match=r"max_scale: 2\.5 is out of range \[0\.0, 2\.0\]"):
        load_spec(MAEConfig, overrides=["dataset.augmentation.max_scale=2.5"], resolve=resolve)
    with pytest.raises(SpecError, match=r"min_scale: must be > 0, got 0\.0"):
        load_spec(MAEConfig, overrides=["dataset.augmentation.min_scale=0"], resolve=resolve)


# ------------------------------------------------------------------------------ backbone_multiplier


def _lrs_by_part(multiplier: float, layer_decay: float) -> tuple[dict[str, float], float]:
    """The optimizer's learning rate of every parameter of a tiny ViT fine-tuning classifier."""
    cfg = SimpleNamespace(
        arch="vit_tiny_patch16", drop_path_rate=0.0, decoder_depth=1, decoder_embed_dim=16, global_pool=True
    )
    model = build_finetune_model(cfg, 3, 32, depth=2, embed_dim=32, num_heads=2)
    optim = OptimConfig(backbone_multiplier=multiplier, layer_decay=layer_decay, warmup_epochs=0, lr=1e-3)
    module = MAEFinetuneModule(
        model, optim_settings_from_mae(optim), steps_per_epoch=1, arch="vit_tiny_patch16"
    )
    module._trainer = SimpleNamespace(estimated_stepping_batches=10)  # what configure_optimizers reads
    optimizer = module.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}, optim.lr


def test_backbone_multiplier_scales_the_backbone_groups_only():
    lrs, lr = _lrs_by_part(0.1, layer_decay=1.0)
    backbone = {n: v for n, v in lrs.items() if n.startswith("backbone.")}
    rest = {n: v for n, v in lrs.items() if not n.startswith("backbone.")}
    assert backbone and rest and {"head.1.weight", "fc_norm.weight"} <= set(rest)
    assert all(v == pytest.approx(lr * 0.1) for v in backbone.values())
    assert all(v == pytest.approx(lr) for v in rest.values())
    # With layer-wise decay on top: block k of 2 gets 0.75 ** (3 - (k + 1)) of the backbone rate.
    lrs, lr = _lrs_by_part(0.5, layer_decay=0.75)
    assert lrs["backbone.blocks.0.attn.qkv.weight"] == pytest.approx(lr * 0.5 * 0.75**2)
    assert lrs["backbone.patch_embed.proj.weight"] == pytest.approx(lr * 0.5 * 0.75**3)
    assert lrs["head.1.weight"] == pytest.approx(lr)


def test_backbone_multiplier_is_not_used_when_pretraining(caplog):
    assert (
        optim_settings_from_mae(OptimConfig(backbone_multiplier=0.5), stage="pretrain").lr_multipliers == ()
    )
    cfg = MAEConfig()
    with caplog.at_level(logging.WARNING, logger="foveal.networks.mae.actions"):
        _warn_pretrain_ignores(cfg)  # TAO's default: nothing to say
    assert not caplog.records
    cfg.train.optim.backbone_multiplier = 0.5
    cfg.model.arch = "hiera_tiny_224"
    cfg.train.norm_pix_loss = False
    with caplog.at_level(logging.WARNING, logger="foveal.networks.mae.actions"):
        _warn_pretrain_ignores(cfg)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all("\n" not in m for m in messages)
    assert messages[0].startswith("train.optim.backbone_multiplier=0.5 is not used when pretraining")
    assert messages[1].startswith("train.norm_pix_loss=false is not used by hiera_tiny_224")


# ------------------------------------------------------------------------------ export


def test_export_format_is_onnx_only_for_export():
    with pytest.raises(SpecError) as info:
        load_spec(
            MAEConfig,
            overrides=["export.format=xdl", "export.checkpoint=x.pth"],
            action="export",
            resolve=resolve,
        )
    assert str(info.value) == "spec error: export.format: 'xdl' export is not supported (use onnx)"
    # A TAO train spec that carries export.format: xdl still trains.
    load_spec(MAEConfig, overrides=["export.format=xdl"], resolve=resolve)
    cfg = load_spec(MAEConfig, overrides=["export.checkpoint=x.pth"], action="export", resolve=resolve)
    assert (cfg.export.format, cfg.export.input_width, cfg.export.input_height) == ("onnx", None, None)


def test_finetune_random_erasing_writes_noise_into_one_rectangle():
    import random

    import torch

    from foveal.data.tao_augment import RandomErasing
    from foveal.networks.mae.config import MAEConfig
    from foveal.networks.mae.transforms import finetune_transform

    cfg = MAEConfig()
    cfg.dataset.augmentation.re_prob = 1.0
    assert isinstance(finetune_transform(cfg.dataset.augmentation).transforms[-1], RandomErasing)
    erase = RandomErasing(1.0, mode="pixel", rng=random.Random(0))
    out = erase(torch.zeros(3, 32, 32))
    changed = out.abs().sum(dim=0) > 0
    rows, cols = changed.any(dim=1).nonzero(), changed.any(dim=0).nonzero()
    box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert box.all() and 0.02 * 1024 <= int(changed.sum()) <= 1024 / 3 + 32  # one full rectangle
    assert 0.5 < float(out[:, changed].std()) < 1.5  # standard-normal noise, not a constant
    assert torch.equal(RandomErasing(0.0, mode="pixel")(torch.ones(3, 8, 8)), torch.ones(3, 8, 8))
