"""mae models from the registry: every arch (capped) builds, trains a step, exports; handoff of weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from foveal.engine.optim import param_groups
from foveal.networks.mae.checkpoints import load_finetune_start
from foveal.networks.mae.config import ARCHS, OptimConfig
from foveal.networks.mae.models import (
    EncoderFeatures,
    MAEClassifier,
    build_finetune_model,
    build_pretrain_model,
    is_convnext,
    is_hiera,
)
from foveal.networks.mae.module import optim_settings_from_mae

pytestmark = pytest.mark.unit


def _capped(arch: str) -> tuple[int, dict]:
    """(image size, backbone overrides) small enough for a unit test."""
    if is_convnext(arch):
        return 64, {"depths": (1, 1, 1, 1), "dims": (8, 8, 16, 16)}
    if is_hiera(arch):  # 224 px only; tests/networks/test_mae_hiera.py covers it in depth
        return 224, {"embed_dim": 8, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
    patch = 14 if arch.endswith("14") else 16
    return 2 * patch, {"depth": 1, "embed_dim": 32, "num_heads": 2}


def _model_cfg(arch: str, **kw) -> SimpleNamespace:
    base = {
        "arch": arch,
        "drop_path_rate": 0.1,
        "decoder_depth": 1,
        "decoder_embed_dim": 16,
        "global_pool": True,
    }
    return SimpleNamespace(**{**base, **kw})


def _fcmae_available() -> bool:
    try:
        import foveal.networks.mae.fcmae  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_builds_both_stages(arch):
    if is_convnext(arch) and not _fcmae_available():
        pytest.skip("FCMAE (foveal.networks.mae.fcmae) is not in this checkout yet")
    size, overrides = _capped(arch)
    pretrain = build_pretrain_model(
        _model_cfg(arch), img_size=size, mask_ratio=0.6, norm_pix_loss=True, **overrides
    )
    classifier = build_finetune_model(_model_cfg(arch), 3, size, **overrides)
    family = "FCMAE" if is_convnext(arch) else "MaskedAutoencoderViT"
    assert type(pretrain).__name__ == ("MaskedAutoencoderHiera" if is_hiera(arch) else family)
    assert pretrain.mask_ratio == 0.6 and classifier.head[-1].out_features == 3


# Capped, the archs of a family differ only in name (checked above); one per family and patch size.
@pytest.mark.parametrize("arch", ["vit_tiny_patch16", "vit_huge_patch14", "convnextv2_atto"])
def test_forward_backward_and_onnx_export(arch, tmp_path):
    if is_convnext(arch) and not _fcmae_available():
        pytest.skip("FCMAE (foveal.networks.mae.fcmae) is not in this checkout yet")
    from foveal.export import export_onnx

    size, overrides = _capped(arch)
    cfg = _model_cfg(arch)
    pretrain = build_pretrain_model(cfg, img_size=size, mask_ratio=0.75, norm_pix_loss=True, **overrides)
    loss, out = pretrain(torch.randn(2, 3, size, size))
    loss.backward()
    assert torch.isfinite(loss) and out["pred"].shape[:2] == out["mask"].shape
    unused = [n for n, p in pretrain.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused  # DDP needs no find_unused_parameters

    classifier = build_finetune_model(cfg, 3, size, **overrides)
    logits = classifier(torch.randn(2, 3, size, size))
    logits.sum().backward()
    assert logits.shape == (2, 3)
    features = EncoderFeatures(pretrain.encoder)
    report = export_onnx(
        features,
        torch.randn(2, 3, size, size),
        tmp_path / "encoder.onnx",
        input_names=("input",),
        output_names=features.output_names,
    )
    assert report.passed and report.input_shapes["input"][0] == "batch"


def test_mae_pooling_is_fc_norm_of_prenorm_mean():
    size, overrides = _capped("vit_tiny_patch16")
    model = build_finetune_model(_model_cfg("vit_tiny_patch16"), 2, size, **overrides).eval()
    assert isinstance(model, MAEClassifier) and isinstance(model.backbone.norm, torch.nn.Identity)
    x = torch.randn(2, 3, size, size)
    tokens = model.backbone.forward_blocks(model.backbone._embed(x))[:, 1:]
    torch.testing.assert_close(model.features(x), model.fc_norm(tokens.mean(dim=1)))
    cls_model = build_finetune_model(_model_cfg("vit_tiny_patch16", global_pool=False), 2, size, **overrides)
    assert cls_model.global_pool == "cls" and not isinstance(cls_model.backbone.norm, torch.nn.Identity)


def _save_pretrain_checkpoint(path, model, arch: str) -> None:
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    config = {"model": {"arch": arch}, "train": {"stage": "pretrain"}}
    torch.save({"network": "mae", "stage": "pretrain", "config": config, "state_dict": state}, path)


@pytest.mark.parametrize("arch", ["vit_tiny_patch16", "convnextv2_atto"])
def test_finetune_starts_from_our_pretrain_checkpoint(arch, tmp_path):
    if is_convnext(arch) and not _fcmae_available():
        pytest.skip("FCMAE is not in this checkout yet")
    size, overrides = _capped(arch)
    pretrain = build_pretrain_model(
        _model_cfg(arch), img_size=size, mask_ratio=0.75, norm_pix_loss=True, **overrides
    )
    _save_pretrain_checkpoint(tmp_path / "pre.pth", pretrain, arch)
    # Fine-tune at twice the resolution: the ViT position table is resampled.
    classifier = build_finetune_model(_model_cfg(arch), 2, 2 * size, **overrides)
    message = load_finetune_start(classifier, tmp_path / "pre.pth", arch)
    assert "foveal mae pretrain checkpoint" in message
    encoder = pretrain.encoder.state_dict()
    for key, value in classifier.backbone.state_dict().items():
        if key == "pos_embed":
            assert value.shape[1] == 1 + 4 * (encoder[key].shape[1] - 1)
        elif key not in ("mask_token",) and not key.startswith("norm."):
            assert torch.equal(value, encoder[key]), key


def test_checkpoint_of_another_arch_is_refused(tmp_path):
    from foveal.engine.checkpoint import CheckpointError

    size, overrides = _capped("vit_tiny_patch16")
    pretrain = build_pretrain_model(
        _model_cfg("vit_tiny_patch16"), img_size=size, mask_ratio=0.75, norm_pix_loss=True, **overrides
    )
    _save_pretrain_checkpoint(tmp_path / "pre.pth", pretrain, "vit_tiny_patch16")
    wider = build_finetune_model(_model_cfg("vit_small_patch16"), 2, size, **{**overrides, "embed_dim": 64})
    with pytest.raises(CheckpointError, match=r"does not fit model\.arch=vit_small_patch16"):
        load_finetune_start(wider, tmp_path / "pre.pth", "vit_small_patch16")


def test_optim_adapter_and_no_decay_groups():
    optim = OptimConfig(type="SGD", lr_scheduler="cosine", warmup_epochs=3, layer_decay=0.65)
    settings = optim_settings_from_mae(optim)
    assert (settings.optimizer, settings.scheduler, settings.warmup_epochs, settings.layer_decay) == (
        "sgd",
        "cosine",
        3.0,
        0.65,
    )
    assert optim_settings_from_mae(OptimConfig()).scheduler == "multistep"
    size, overrides = _capped("vit_tiny_patch16")
    model = build_pretrain_model(
        _model_cfg("vit_tiny_patch16"), img_size=size, mask_ratio=0.75, norm_pix_loss=True, **overrides
    )
    decay, no_decay = sorted(
        param_groups(model, weight_decay=0.05, backbone=None), key=lambda g: -g["wd_scale"]
    )
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"encoder.cls_token", "mask_token"} <= skipped and decay["weight_decay"] == 0.05
    assert all(names[id(p)].endswith("weight") and p.ndim > 1 for p in decay["params"])
    assert "encoder.pos_embed" not in skipped | {names[id(p)] for p in decay["params"]}  # frozen sin-cos


def test_freeze_names_modules_and_suggests_on_typos():
    from foveal.networks.mae.checkpoints import freeze
    from foveal.spec import SpecError

    size, overrides = _capped("vit_tiny_patch16")
    model = build_pretrain_model(
        _model_cfg("vit_tiny_patch16"), img_size=size, mask_ratio=0.75, norm_pix_loss=True, **overrides
    )
    freeze(model, ["encoder.patch_embed", "decoder_blocks.0"])
    assert not any(p.requires_grad for p in model.encoder.patch_embed.parameters())
    assert not any(p.requires_grad for p in model.decoder_blocks[0].parameters())
    assert model.encoder.blocks[0].attn.qkv.weight.requires_grad
    with pytest.raises(
        SpecError, match=r"train\.freeze: no module 'encoder.block.0'.*did you mean encoder.blocks.0"
    ):
        freeze(model, ["encoder.block.0"])
