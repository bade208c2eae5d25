"""ResNet / ResNet-D backbones and frozen BN: sizes, keys, numerics against Hugging Face, TAO checkpoints."""

from __future__ import annotations

import re

import pytest
import torch
from backbone_checks import loss_and_grads
from torch import nn

import foveal.nn.resnet  # noqa: F401  (registers the backbones)
from foveal.nn.frozen_bn import FrozenBatchNorm2d, freeze_batchnorm
from foveal.nn.registry import create_backbone, list_backbones
from foveal.nn.resnet import ResNet, resnet_checkpoint_filter_fn

pytestmark = pytest.mark.unit

# Parameter counts with the 1000-class fc. Plain: torchvision's model docs (resnet18 ... resnet152
# "num_params"). "d": not in timm's source; computed as plain + 19,232, the deep stem's extra
# parameters (3x3 convs 3->32, 32->32, 32->64 = 864 + 9,216 + 18,432, two BN(32) = 128, minus the
# 7x7 conv 3->64 = 9,408); the average-pool shortcut has the strided one's conv and BN. This gives
# timm's published sizes (resnet18d 11.7M, resnet34d 21.8M, resnet50d 25.6M, resnet101d 44.6M,
# resnet152d 60.2M) and the brief's resnet50d 25,576,264.
DEEP_STEM_EXTRA = 3 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 2 * 2 * 32 - 3 * 64 * 49
TORCHVISION_PARAMS = {
    "resnet_18": 11_689_512,
    "resnet_34": 21_797_672,
    "resnet_50": 25_557_032,
    "resnet_101": 44_549_160,
    "resnet_152": 60_192_808,
}
EXPECTED_PARAMS = {
    **TORCHVISION_PARAMS,
    **{f"{name}d": count + DEEP_STEM_EXTRA for name, count in TORCHVISION_PARAMS.items()},
}
EMBED_DIMS = {"18": 512, "34": 512, "50": 2048, "101": 2048, "152": 2048}
N_BLOCKS = {"18": 8, "34": 16, "50": 16, "101": 33, "152": 50}
_CACHE: dict[str, ResNet] = {}


def randomised(name: str, **overrides) -> ResNet:
    """A model whose BN weights, biases and running statistics are random (not 1/0), so that tests
    see every BN; ``zero_init_last=False`` so that gradients reach every block."""
    key = name + repr(sorted(overrides.items()))
    if key not in _CACHE:
        torch.manual_seed(0)
        model = create_backbone(name, zero_init_last=False, **overrides)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.normal_(0, 0.1)
                    module.running_mean.normal_(0, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
        _CACHE[key] = model.eval()
    return _CACHE[key]


def images(batch: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_every_tao_name_is_registered() -> None:
    assert list_backbones("resnet_*") == sorted(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_counts_match_the_references(name: str) -> None:
    with torch.device("meta"):
        with_head = create_backbone(name, num_classes=1000)
        backbone = create_backbone(name)
    depth = name.removeprefix("resnet_").removesuffix("d")
    assert sum(p.numel() for p in with_head.parameters()) == EXPECTED_PARAMS[name]
    dim = EMBED_DIMS[depth]
    assert backbone.embed_dim == backbone.num_features == dim
    assert sum(p.numel() for p in backbone.parameters()) == EXPECTED_PARAMS[name] - (1000 * dim + 1000)  # fc weight and bias
    assert backbone.n_blocks == N_BLOCKS[depth]
    assert isinstance(backbone.fc, nn.Identity)


def test_timm_and_torchvision_key_names() -> None:
    keys = {
        name: set(create_backbone(name, num_classes=10).state_dict()) for name in ("resnet_18", "resnet_50d")
    }
    assert {
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.conv2.weight",
        "fc.weight",
        "fc.bias",
    } <= keys["resnet_18"]
    assert "layer1.0.downsample.0.weight" not in keys["resnet_18"]  # 64 -> 64, stride 1: identity
    assert {
        "conv1.0.weight",
        "conv1.1.weight",
        "conv1.3.weight",
        "conv1.4.running_mean",
        "conv1.6.weight",
        "bn1.weight",
        "layer1.0.conv3.weight",
        "layer1.0.bn3.weight",
        "layer1.0.downsample.1.weight",  # 64 -> 256 at stride 1: Identity pool, then conv
        "layer3.0.downsample.2.running_var",
        "layer4.2.bn3.bias",
        "fc.weight",
    } <= keys["resnet_50d"]
    assert not any(re.search(r"downsample\.0\.", k) for k in keys["resnet_50d"])


def test_d_variant_stem_and_shortcut() -> None:
    model = create_backbone("resnet_18d")
    assert [tuple(m.weight.shape) for m in model.conv1 if isinstance(m, nn.Conv2d)] == [
        (32, 3, 3, 3),
        (32, 32, 3, 3),
        (64, 32, 3, 3),
    ]
    pool, conv, _ = model.layer2[0].downsample
    assert isinstance(pool, nn.AvgPool2d) and pool.ceil_mode and not pool.count_include_pad
    assert (pool.kernel_size, pool.stride) == (2, 2) and conv.stride == (1, 1)
    plain = create_backbone("resnet_18").layer2[0].downsample[0]
    assert plain.stride == (2, 2) and plain.kernel_size == (1, 1)


def test_initialisation_follows_timm() -> None:
    torch.manual_seed(0)
    model = create_backbone("resnet_50", num_classes=10)
    last = {f"layer{s}.{j}.bn3" for s, depth in enumerate(model.layers, 1) for j in range(depth)}
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert (module.weight == (0.0 if name in last else 1.0)).all(), name
            assert (module.bias == 0).all()
    weight = model.layer3[0].conv2.weight  # Kaiming normal, fan-out: std sqrt(2 / (9 * 256))
    assert weight.std().item() == pytest.approx((2 / (9 * 256)) ** 0.5, rel=0.02)
    basic = create_backbone("resnet_18")
    assert (basic.layer1[0].bn2.weight == 0).all() and (basic.layer1[0].bn1.weight == 1).all()
    assert (create_backbone("resnet_18", zero_init_last=False).layer1[0].bn2.weight == 1).all()


@pytest.mark.parametrize("name", ["resnet_18", "resnet_18d"])
def test_forward_shapes_and_pooling(name: str) -> None:
    model = randomised(name)
    x = images()
    with torch.no_grad():
        out = model.forward_features(x)
        pooled = model(x)
        pyramid = model.forward_feature_pyramid(x)
    assert set(out) == {"x_norm_clstoken", "x_norm_patchtokens"}
    assert out["x_norm_clstoken"].shape == (2, 512)
    assert out["x_norm_patchtokens"].shape == (2, 2 * 2, 512)  # 64 / 32 = 2
    # TAO's pre-logits: the plain global average of layer4 (no norm).
    torch.testing.assert_close(out["x_norm_clstoken"], pyramid[-1].mean(dim=(2, 3)))
    torch.testing.assert_close(out["x_norm_patchtokens"], pyramid[-1].flatten(2).mT)
    torch.testing.assert_close(pooled, out["x_norm_clstoken"])
    assert [tuple(m.shape[1:]) for m in pyramid] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    # Odd sizes: the "d" shortcut pools with ceil_mode, matching the strided 3x3 conv's size.
    with torch.no_grad():
        assert model.forward_features(images(1, 72))["x_norm_patchtokens"].shape == (1, 9, 512)
    with pytest.raises(ValueError, match="does not support masks"):
        model.forward_features(x, masks=torch.zeros(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("name", ["resnet_18", "resnet_18d"])
def test_backward_reaches_every_parameter(name: str) -> None:
    model = randomised(name, num_classes=3).train()
    try:
        model(images()).logsumexp(dim=1).mean().backward()
        for param_name, param in model.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, param_name
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def _to_hf_resnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (torchvision) names as transformers' ResNetModel names them."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^conv1\.", "embedder.embedder.convolution.", key)
        key = re.sub(r"^bn1\.", "embedder.embedder.normalization.", key)
        match = re.match(r"^layer(\d)\.(\d+)\.(.*)$", key)
        if match:
            rest = match.group(3)
            rest = re.sub(r"^conv(\d)\.", lambda m: f"layer.{int(m.group(1)) - 1}.convolution.", rest)
            rest = re.sub(r"^bn(\d)\.", lambda m: f"layer.{int(m.group(1)) - 1}.normalization.", rest)
            rest = rest.replace("downsample.0.", "shortcut.convolution.").replace(
                "downsample.1.", "shortcut.normalization."
            )
            key = f"encoder.stages.{int(match.group(1)) - 1}.layers.{match.group(2)}.{rest}"
        out[key] = value
    return out


@pytest.mark.parametrize(("name", "layer_type", "widths"), [("resnet_18", "basic", 64), ("resnet_50", "bottleneck", 256)])
def test_matches_hugging_face_resnet(name: str, layer_type: str, widths: int) -> None:
    """An independent implementation (transformers' ResNet, torchvision's architecture) with our
    weights computes the same features: same strides, paddings, shortcuts and block order."""
    transformers = pytest.importorskip("transformers")
    ours = randomised(name)
    config = transformers.ResNetConfig(
        layer_type=layer_type,
        depths=list(ours.layers),
        hidden_sizes=[widths * 2**i for i in range(4)],
        embedding_size=64,
    )
    hf = transformers.ResNetModel(config).eval()
    converted = _to_hf_resnet(ours.state_dict())
    if set(converted) != set(hf.state_dict()):
        pytest.skip(f"transformers {transformers.__version__} names ResNet weights differently")
    hf.load_state_dict(converted)
    x = images()
    with torch.no_grad():
        expected = hf(pixel_values=x).last_hidden_state
        got = ours.forward_feature_pyramid(x)[-1]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------- frozen BN


def test_frozen_batchnorm_keeps_statistics_and_has_no_parameters() -> None:
    source = randomised("resnet_18d")
    model = create_backbone("resnet_18d", zero_init_last=False)
    model.load_state_dict(source.state_dict())
    x = images()
    with torch.no_grad():
        expected = source.forward_features(x)["x_norm_clstoken"]  # eval-mode BN
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    bn_params = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert freeze_batchnorm(model) == n_bn == 3 + 2 * 8 + 3  # deep stem, blocks, shortcuts
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) == total - bn_params
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    assert set(buffers) == {k for k in source.state_dict() if not k.endswith("num_batches_tracked")}

    model.train()
    out = model.forward_features(x)["x_norm_clstoken"]
    torch.testing.assert_close(out, expected)  # eval-mode math in train mode
    out.sum().backward()
    for key, value in model.state_dict().items():
        assert torch.equal(value, buffers[key]), key  # running statistics unchanged
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert all(not list(m.parameters()) and not m.weight.requires_grad for m in frozen)
    assert model.layer1[0].conv1.weight.grad is not None  # gradients still pass through
    # A BatchNorm2d state dict (with num_batches_tracked) loads strictly.
    model.load_state_dict(source.state_dict())


def test_frozen_batchnorm_under_autocast_keeps_the_activation_dtype() -> None:
    bn = FrozenBatchNorm2d(4)
    assert bn(torch.randn(1, 4, 2, 2, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert freeze_batchnorm(nn.BatchNorm2d(4)) == 0  # the root is not replaced


# ----------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("prefix", ["model.", "model.backbone.", "backbone.", ""])
def test_tao_checkpoint_round_trip(prefix: str) -> None:
    """TAO 6.25 (``model.``), 6.0 (``model.backbone.``), 5.x (``backbone.``) and plain
    torchvision/timm state dicts load through the filter and give identical outputs."""
    source = randomised("resnet_18d", num_classes=5)
    checkpoint = {"state_dict": {prefix + k: v for k, v in source.state_dict().items()}, "epoch": 3}
    target = create_backbone("resnet_18d", num_classes=5).eval()
    target.load_state_dict(resnet_checkpoint_filter_fn(checkpoint, target))  # strict
    headless = create_backbone("resnet_18d").eval()
    filtered = resnet_checkpoint_filter_fn(checkpoint, headless)
    assert not any(k.startswith("fc.") for k in filtered)
    headless.load_state_dict(filtered)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
        torch.testing.assert_close(headless(x), source.forward_features(x)["x_norm_clstoken"], rtol=0, atol=0)


def test_filter_drops_other_heads_and_fills_frozen_bn_counters() -> None:
    frozen = create_backbone("resnet_18", num_classes=7)
    freeze_batchnorm(frozen)
    saved = {f"model.{k}": v for k, v in frozen.state_dict().items()}  # no num_batches_tracked
    saved["model.decoder.fc.weight"] = torch.zeros(7, 512)  # not a ResNet key
    target = create_backbone("resnet_18", num_classes=3)
    filtered = resnet_checkpoint_filter_fn(saved, target)
    assert "fc.weight" not in filtered and "decoder.fc.weight" not in filtered
    missing, unexpected = target.load_state_dict(filtered, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    assert filtered["bn1.num_batches_tracked"].item() == 0


# -------------------------------------------------------------------------------------- training


def test_layer_ids_cover_every_parameter() -> None:
    model = create_backbone("resnet_50d", num_classes=10)
    ids = {name: model.layer_id_for_param(name) for name, _ in model.named_parameters()}
    assert set(ids.values()) == set(range(model.n_blocks + 2))
    assert ids["conv1.0.weight"] == ids["conv1.4.bias"] == ids["bn1.weight"] == 0
    assert ids["layer1.0.conv1.weight"] == 1
    assert ids["layer2.0.downsample.1.weight"] == ids["layer2.0.conv3.weight"] == 3 + 1
    assert ids["layer4.2.bn3.weight"] == model.n_blocks == 16
    assert ids["fc.weight"] == model.n_blocks + 1
    assert model.layer_id_for_param("backbone.layer3.5.conv2.weight") == 3 + 4 + 5 + 1
    assert model.layer_id_for_param("backbone.bn1.bias") == 0
    assert model.no_weight_decay() == set()


def test_grad_checkpointing_gives_the_same_loss_and_gradients() -> None:
    model = randomised("resnet_18", drop_path_rate=0.1).train()
    x = images()

    try:
        plain_loss, plain = loss_and_grads(model, x, False)
        loss, grads = loss_and_grads(model, x, True)
    finally:
        model.set_grad_checkpointing(False)
        model.zero_grad(set_to_none=True)
        model.eval()
    torch.testing.assert_close(loss, plain_loss)
    assert grads.keys() == plain.keys() == {n for n, _ in model.named_parameters()}
    for name, grad in plain.items():
        torch.testing.assert_close(grads[name], grad, msg=name)


def test_drop_path_grows_linearly_and_unknown_arguments_fail() -> None:
    model = create_backbone("resnet_50", drop_path_rate=0.2)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for stage in model.stages() for b in stage]
    assert len(rates) == 16 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    assert rates[1] == pytest.approx(0.2 / 15)
    with pytest.raises(TypeError):
        create_backbone("resnet_18", not_an_argument=1)
