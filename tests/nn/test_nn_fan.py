"""FAN backbones (TAO's fan_* names): sizes, TAO keys, forward, reference quirks, TAO checkpoints."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from backbone_checks import key_digest, loss_and_grads
from torch import nn

import foveal.nn.fan  # noqa: F401  (registers the backbones)
from foveal.nn.backbone import Backbone
from foveal.nn.fan import FAN, FAN_VARIANTS, fan_checkpoint_filter_fn
from foveal.nn.fan_layers import (
    ChannelProcessing,
    ClassAttentionBlock,
    ConvNeXtLayerNorm2d,
    PositionalEncodingFourier,
)
from foveal.nn.registry import create_backbone, list_backbones

pytestmark = pytest.mark.unit

# Parameters with a 1000-class head. Exact: ``reference_param_count`` below applied to the variant
# definitions of NVlabs/FAN models/fan.py (ee1b7df) = TAO 6.25.10 cv/backbone_v2/fan.py; both reference
# implementations, built off-line (timm 1.0.14), give these integers, and TAO's state-dict keys and
# shapes hash to TAO_KEYS.
WITH_HEAD = {
    "fan_tiny_12_p16_224": 7_319_920,
    "fan_small_12_p16_224_se_attn": 27_452_440,
    "fan_small_12_p16_224": 28_345_336,
    "fan_base_18_p16_224": 54_350_320,
    "fan_large_24_p16_224": 80_574_100,
    "fan_tiny_8_p4_hybrid": 7_467_240,
    "fan_small_12_p4_hybrid": 26_117_944,
    "fan_base_16_p4_hybrid": 50_475_048,
    "fan_large_16_p4_hybrid": 76_855_140,
    "fan_xlarge_16_p4_hybrid": 120_407_316,
}
# Published sizes (M, with head; NVlabs/FAN README tables, FAN-L-Hybrid also in the paper's abstract,
# arXiv:2204.12451), printed truncated to 0.1 M. Not listed because the released code gives another size:
# FAN-S-ViT (README 28.0, code 28.35), FAN-B-ViT (54.0 vs 54.35), FAN-S-Hybrid (26.3 vs 26.12); the SE
# variant and XLarge have no published size.
PUBLISHED_M = {
    "fan_tiny_12_p16_224": 7.3,
    "fan_large_24_p16_224": 80.5,
    "fan_tiny_8_p4_hybrid": 7.4,
    "fan_base_16_p4_hybrid": 50.4,
    "fan_large_16_p4_hybrid": 76.8,
}
# (number of state-dict entries, sha256[:16] of the sorted "key:shape" lines) of TAO's models with a head.
TAO_KEYS = {
    "fan_tiny_12_p16_224": (439, "171538999d290cb7"),
    "fan_small_12_p16_224_se_attn": (427, "1aa99da617e82d58"),
    "fan_small_12_p16_224": (439, "7fee841d70c0bd8a"),
    "fan_base_18_p16_224": (625, "17a3585f56bbe6ae"),
    "fan_large_24_p16_224": (811, "a02dba20c4685c74"),
    "fan_tiny_8_p4_hybrid": (355, "d316998f35acecdd"),
    "fan_small_12_p4_hybrid": (417, "ea3e3604ba3003ab"),
    "fan_base_16_p4_hybrid": (603, "977be782c79bd7dc"),
    "fan_large_16_p4_hybrid": (807, "9460a4fe42f4c033"),
    "fan_xlarge_16_p4_hybrid": (860, "bc5663c007af5ef2"),
}
# name -> (feature dim, FAN blocks); TAO 6.25's num_features (research report §8).
SIZES = {
    "fan_tiny_12_p16_224": (192, 12),
    "fan_small_12_p16_224_se_attn": (384, 12),
    "fan_small_12_p16_224": (384, 12),
    "fan_base_18_p16_224": (448, 18),
    "fan_large_24_p16_224": (480, 24),
    "fan_tiny_8_p4_hybrid": (192, 8),
    "fan_small_12_p4_hybrid": (384, 10),
    "fan_base_16_p4_hybrid": (448, 16),
    "fan_large_16_p4_hybrid": (480, 22),
    "fan_xlarge_16_p4_hybrid": (768, 23),
}
# FAN-XLarge's layout at a CPU size: the width (and head count, heads of 4) changes after the first block
# instead of block 19, so that block ends with the stride-2 downsample.
SHRUNK_XLARGE = {"embed_dim": 44, "depth": 3, "channel_dims": (44, 64, 64), "num_heads": (11, 16, 16)}
# CPU-sized versions of the conv-stem and hybrid variants for the behaviour tests (the full smallest
# variants run in test_forward_shapes_and_pooling).
SMALL = {"embed_dim": 64, "depth": 2, "num_heads": 4}
SMALL_HYBRID = {**SMALL, "hybrid_depths": (1, 1)}
_CACHE: dict[str, FAN] = {}


def reference_param_count(name: str, num_classes: int) -> int:
    """Parameters of the reference FAN, written out from its modules (mlp ratio 4, 2 class-attention
    blocks)."""
    cfg = FAN_VARIANTS[name]
    depth, embed = cfg["depth"], cfg["embed_dim"]
    dims = list(cfg.get("channel_dims", [embed] * depth))
    heads = cfg["num_heads"] if isinstance(cfg["num_heads"], tuple) else (cfg["num_heads"],) * depth
    if "hybrid_depths" in cfg:  # ConvNeXt stem 128 -> 256, then a 2x2 conv to D

        def convnext_block(c: int) -> int:
            # 7x7 depthwise, norm, fc1, fc2, gamma
            return (49 * c + c) + 2 * c + (4 * c * c + 4 * c) + (4 * c * c + c) + c

        d0, d1 = cfg["hybrid_depths"]
        total = 3 * 128 * 16 + 128 + 256 + d0 * convnext_block(128)
        total += 256 + 128 * 256 * 4 + 256 + d1 * convnext_block(256) + 256 * embed * 4 + embed
    else:  # four 3x3 convs (no bias) + BN: 3 -> D/8 -> D/4 -> D/2 -> D
        widths = [3, embed // 8, embed // 4, embed // 2, embed]
        total = sum(9 * a * b + 2 * b for a, b in zip(widths, widths[1:], strict=False))
    total += 64 * embed + embed  # Fourier position encoding projection
    for i, (c, h) in enumerate(zip(dims, heads, strict=True)):
        attn = 4 * c * c + 4 * c  # q, kv, proj
        # fc1, two 3x3 depthwise convs, BN, gamma, fc2
        v_mlp = (4 * c * c + 4 * c) + 2 * (36 * c + 4 * c) + 8 * c + 4 * c + (4 * c * c + c)
        if cfg.get("se_mlp"):
            channel = v_mlp + 2 * (c * c // 4) + c // 4 + c  # + squeeze-excite convs
        else:
            channel = h + v_mlp + 2 * c + (c * c + c)  # temperature, norm_v, q
        total += 2 * c + attn + 2 * c + channel + 2 * c  # norm1, norm2, gamma1/2
        if i + 1 < depth and dims[i + 1] != c:
            total += 9 * c * dims[i + 1] + dims[i + 1] + 2 * dims[i + 1]  # downsample conv + LayerNorm
    c = dims[-1]
    total += c + 2 * (2 * c + 4 * (c * c + c) + 2 * c + (8 * c * c + 5 * c) + 2 * c)  # cls token, 2 CA blocks
    return total + 2 * c + (c * num_classes + num_classes if num_classes else 0)


def randomised(name: str = "fan_tiny_12_p16_224", **overrides) -> FAN:
    """A model (shared) whose norms, LayerScales, temperatures and BN statistics are random, so that tests
    see every one of them (the init leaves them at 1/0 or 1e-6)."""
    key = name + repr(sorted(overrides.items()))
    if key not in _CACHE:
        torch.manual_seed(0)
        model = create_backbone(name, **overrides)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if param.ndim == 1 or param_name.endswith(("temperature", "cls_token")):
                    param.add_(torch.randn_like(param) * 0.2)
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.normal_(0, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
        _CACHE[key] = model.eval()
    return _CACHE[key]


def images(batch: int = 2, height: int = 32, width: int | None = None, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width or height, generator=torch.Generator().manual_seed(seed))


def test_every_tao_name_is_registered() -> None:
    assert list_backbones("fan_*") == sorted(WITH_HEAD)  # TAO's fan_swin_* are not built here


@pytest.mark.parametrize("name", sorted(WITH_HEAD))
def test_parameter_counts_and_keys_match_the_references(name: str) -> None:
    with torch.device("meta"):
        with_head = create_backbone(name, num_classes=1000)
        backbone = create_backbone(name)
    count = sum(p.numel() for p in with_head.parameters())
    assert count == WITH_HEAD[name] == reference_param_count(name, 1000)
    dim, depth = SIZES[name]
    no_head = sum(p.numel() for p in backbone.parameters())
    assert no_head == reference_param_count(name, 0) == count - 1000 * dim - 1000  # head weight and bias
    if name in PUBLISHED_M:
        assert math.floor(count / 1e5) / 10 == PUBLISHED_M[name]
    assert key_digest(with_head.state_dict()) == TAO_KEYS[name]
    assert backbone.embed_dim == backbone.num_features == dim
    assert len(backbone.blocks) == depth and backbone.n_blocks == depth + 2  # + class-attention blocks
    assert isinstance(backbone.head, nn.Identity) and isinstance(backbone, Backbone)


def test_tao_key_names_and_shapes() -> None:
    with torch.device("meta"):
        vit = create_backbone("fan_tiny_12_p16_224", num_classes=10).state_dict()
        hybrid = create_backbone("fan_tiny_8_p4_hybrid").state_dict()
        se = create_backbone("fan_small_12_p16_224_se_attn").state_dict()
        xlarge = create_backbone("fan_xlarge_16_p4_hybrid").state_dict()
    assert vit["patch_embed.proj.0.0.weight"].shape == (24, 3, 3, 3)
    assert "patch_embed.proj.0.0.bias" not in vit
    assert {"patch_embed.proj.6.1.running_var", "patch_embed.proj.4.1.num_batches_tracked"} <= set(vit)
    assert vit["pos_embed.token_projection.weight"].shape == (192, 64, 1, 1)
    assert vit["blocks.0.attn.kv.weight"].shape == (384, 192)
    assert vit["blocks.0.mlp.mlp_v.fc1.weight"].shape == (768, 192)
    assert vit["blocks.0.mlp.mlp_v.dwconv.conv1.weight"].shape == (768, 1, 3, 3)
    assert {
        "blocks.0.mlp.mlp_v.dwconv.bn.running_mean",
        "blocks.0.mlp.mlp_v.gamma",
        "blocks.11.gamma2",
    } <= set(vit)
    assert vit["blocks.0.mlp.temperature"].shape == (4, 1, 1)
    assert vit["blocks.0.mlp.norm_v.bias"].shape == (192,)
    assert vit["cls_token"].shape == (1, 1, 192) and vit["cls_attn_blocks.1.attn.v.bias"].shape == (192,)
    assert vit["cls_attn_blocks.0.mlp.fc1.weight"].shape == (768, 192)
    assert vit["head.weight"].shape == (10, 192)
    assert hybrid["patch_embed.backbone.stem.0.weight"].shape == (128, 3, 4, 4)
    assert hybrid["patch_embed.backbone.stages.1.downsample.1.weight"].shape == (256, 128, 2, 2)
    assert hybrid["patch_embed.backbone.stages.0.blocks.2.mlp.fc2.weight"].shape == (128, 512, 1, 1)
    assert hybrid["patch_embed.backbone.stages.1.blocks.2.gamma"].shape == (256,)
    assert hybrid["patch_embed.proj.weight"].shape == (192, 256, 2, 2)
    assert not any(k.startswith("patch_embed.backbone.stages.0.downsample") for k in hybrid)
    assert se["blocks.0.mlp.se.conv_reduce.weight"].shape == (96, 384, 1, 1)
    assert not any(".mlp.temperature" in k or ".mlp.q." in k for k in se)
    assert xlarge["blocks.19.downsample.proj.weight"].shape == (768, 528, 3, 3)
    assert xlarge["blocks.19.downsample.norm.weight"].shape == (768,)
    assert [k.split(".")[1] for k in xlarge if k.endswith("downsample.proj.weight")] == ["19"]
    assert xlarge["blocks.20.mlp.temperature"].shape == (16, 1, 1) and xlarge["norm.weight"].shape == (768,)


@pytest.mark.parametrize("name", ["fan_tiny_12_p16_224", "fan_tiny_8_p4_hybrid"])
def test_forward_shapes_and_pooling(name: str) -> None:
    model = randomised(name)  # the full registered variant
    x = images()
    with torch.no_grad():
        out = model.forward_features(x)
        pooled = model(x)
    assert set(out) == {"x_norm_clstoken", "x_norm_patchtokens", "x_prenorm"}
    assert out["x_norm_clstoken"].shape == (2, 192)
    assert out["x_norm_patchtokens"].shape == (2, 2 * 2, 192)  # 32 / 16
    assert out["x_prenorm"].shape == (2, 1 + 4, 192)
    # TAO's pre-logits: the final norm of the cls token after the class-attention blocks.
    x_norm = model.norm(out["x_prenorm"])
    torch.testing.assert_close(out["x_norm_clstoken"], x_norm[:, 0])
    torch.testing.assert_close(out["x_norm_patchtokens"], x_norm[:, 1:])
    torch.testing.assert_close(pooled, out["x_norm_clstoken"])
    with torch.no_grad():  # any multiple of 16: the position encoding is computed per grid
        assert model.forward_features(images(1, 64, 32))["x_norm_patchtokens"].shape == (1, 4 * 2, 192)
    with pytest.raises(ValueError, match="does not support masks"):
        model.forward_features(x, masks=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiples of 16"):
        model(images(1, 72))


def test_downsampling_block_halves_the_grid() -> None:
    model = create_backbone(
        "fan_xlarge_16_p4_hybrid", **SHRUNK_XLARGE, hybrid_depths=(1, 1), num_classes=5
    ).eval()
    assert model.stride == 32 and model.embed_dim == 64
    with torch.no_grad():
        out = model.forward_features(images(2, 64))
        assert model(images(2, 64)).shape == (2, 5)
    assert out["x_norm_clstoken"].shape == (2, 64) and out["x_norm_patchtokens"].shape == (2, 2 * 2, 64)
    assert model.blocks[0].downsample is not None and model.blocks[1].downsample is None
    with pytest.raises(ValueError, match="multiples of 32"):
        model(images(1, 48))
    with pytest.raises(ValueError, match="multiples of 32"):
        create_backbone("fan_xlarge_16_p4_hybrid", **SHRUNK_XLARGE, img_size=208)
    with pytest.raises(TypeError):
        create_backbone("fan_tiny_12_p16_224", not_an_argument=1)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("fan_tiny_12_p16_224", SMALL),
        ("fan_small_12_p16_224_se_attn", SMALL),
        ("fan_tiny_8_p4_hybrid", SMALL_HYBRID),
    ],
)
def test_backward_reaches_every_parameter(name: str, overrides: dict) -> None:
    model = randomised(name, num_classes=3, **overrides).train()
    try:
        model(images()).logsumexp(dim=1).mean().backward()
        for param_name, param in model.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, param_name
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


# ------------------------------------------------------------------------------ reference quirks


def test_fourier_position_encoding_layout() -> None:
    """XCiT's table: positions 1..H scaled to (0, 2 pi], 32 sinusoids each (sin even, cos odd channel,
    wavelength 10000^(2 floor(i/2) / 32)), y's 32 channels before x's, then the 1x1 projection."""
    torch.manual_seed(0)
    encoding = PositionalEncodingFourier(8)
    wavelength = 10000 ** (2 * (torch.arange(32) // 2) / 32)

    def code(pos: int, length: int) -> torch.Tensor:
        angle = pos / (length + 1e-6) * 2 * math.pi / wavelength
        return torch.where(torch.arange(32) % 2 == 0, angle.sin(), angle.cos())

    height, width = 2, 3
    table = torch.stack(
        [torch.cat([code(r + 1, height), code(c + 1, width)]) for r in range(height) for c in range(width)]
    )
    weight = encoding.token_projection.weight.flatten(1)
    expected = table @ weight.T + encoding.token_projection.bias
    torch.testing.assert_close(encoding(height, width), expected[None])


def test_class_attention_block_patch_token_quirks() -> None:
    """CaiT/FAN tokens_norm: patches get x + gamma1 * norm1(x), are normed by norm2, then doubled."""
    torch.manual_seed(0)
    block = ClassAttentionBlock(16, 4).eval()
    with torch.no_grad():
        for param in block.parameters():
            param.add_(torch.randn_like(param) * 0.2)
        x = torch.randn(2, 5, 16)
        out = block(x)
        patches = block.norm2(x + block.gamma1 * block.norm1(x))[:, 1:]
    torch.testing.assert_close(out[:, 1:], 2 * patches)


def test_channel_processing_matches_the_reference_formulation() -> None:
    """The reference gate, computed its way: softmax over tokens of q (B, h, N, d) then transposed, keys
    softmaxed over tokens and average-pooled to (N, 1), sigmoid, times the per-head temperature."""
    torch.manual_seed(0)
    module = ChannelProcessing(16, 4, 64).eval()
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn_like(param) * 0.2)
        x = torch.randn(2, 6, 16)
        q = module.q(x).reshape(2, 6, 4, 4).permute(0, 2, 1, 3).softmax(-2).transpose(-1, -2)
        k = F.adaptive_avg_pool2d(x.reshape(2, 6, 4, 4).permute(0, 2, 1, 3).softmax(-2), (6, 1))
        gate = torch.sigmoid(q @ k) * module.temperature  # (B, h, d, 1)
        v = module.norm_v(module.mlp_v(x, (2, 3))).reshape(2, 6, 4, 4).transpose(1, 2)
        expected = (gate * v.transpose(-1, -2)).permute(0, 3, 1, 2).reshape(2, 6, 16)
        torch.testing.assert_close(module(x, (2, 3)), expected)


def _reference_layer_norm_2d(norm: ConvNeXtLayerNorm2d, x: torch.Tensor) -> torch.Tensor:
    """The reference's LayerNorm2d: F.layer_norm for a contiguous map, else var_mean (unbiased variance)."""
    if x.is_contiguous():
        return F.layer_norm(
            x.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias, norm.eps
        ).permute(0, 3, 1, 2)
    var, mean = torch.var_mean(x, dim=1, keepdim=True)
    return (x - mean) * torch.rsqrt(var + norm.eps) * norm.weight[:, None, None] + norm.bias[:, None, None]


def test_hybrid_stem_norms_follow_the_reference_memory_layout_rule() -> None:
    """The reference picks biased or unbiased variance by memory layout; on a contiguous image that is the
    stem's norm biased and every later one unbiased, which ``unbiased`` fixes per norm."""
    model = randomised("fan_tiny_8_p4_hybrid", **SMALL)  # the stem of the registered variant: (3, 3) blocks
    norms = {n: m for n, m in model.named_modules() if isinstance(m, ConvNeXtLayerNorm2d)}
    assert [n for n, m in norms.items() if not m.unbiased] == ["patch_embed.backbone.stem.1"]
    assert len(norms) == 1 + 3 + 1 + 3 and all(m.eps == 1e-6 for m in norms.values())
    x = images()
    with torch.no_grad():
        ours = model.patch_embed.backbone(x)
        with mock.patch.object(ConvNeXtLayerNorm2d, "forward", _reference_layer_norm_2d):
            reference = model.patch_embed.backbone(x)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
    unbiased = norms["patch_embed.backbone.stages.0.blocks.0.norm"]
    probe = torch.randn(1, 128, 2, 2)
    biased = F.layer_norm(probe.permute(0, 2, 3, 1), (128,), unbiased.weight, unbiased.bias, 1e-6)
    assert not torch.allclose(
        unbiased(probe), biased.permute(0, 3, 1, 2)
    )  # the quirk is real: 128 / 127 in the variance


def test_initialisation_follows_tao() -> None:
    torch.manual_seed(0)
    model = create_backbone("fan_large_16_p4_hybrid", depth=2, hybrid_depths=(1, 1), num_classes=1000)
    for block in [*model.blocks, *model.cls_attn_blocks]:
        assert (block.gamma1 == 1).all() and (block.gamma2 == 1).all()  # eta 1.0, not 1e-5
    assert (model.blocks[0].mlp.temperature == 1).all() and (model.blocks[0].mlp.mlp_v.gamma == 1).all()
    assert (model.patch_embed.backbone.stages[1].blocks[0].gamma == 1e-6).all()
    # TAO re-initialises the head after head_init_scale=0.001 scaled it: trunc-normal std 0.02, bias 0.
    assert model.head.weight.std().item() == pytest.approx(0.02, rel=0.05) and (model.head.bias == 0).all()
    fc1 = model.blocks[0].mlp.mlp_v.fc1
    assert fc1.weight.std().item() == pytest.approx(0.02, rel=0.05) and (fc1.bias == 0).all()
    dw = model.blocks[0].mlp.mlp_v.dwconv.conv1.weight  # N(0, sqrt(2 / fan_out)), fan_out = 9 * 1920 / 1920
    assert dw.std().item() == pytest.approx(math.sqrt(2 / 9), rel=0.05)


# ----------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    ("prefix", "head"),
    [
        ("model.", "model.head."),
        ("model.backbone.", "model.decoder.fc."),
        ("backbone.", "head.fc."),
        ("", "head."),
    ],
)
def test_tao_checkpoint_round_trip(prefix: str, head: str) -> None:
    """TAO 6.25 (``model.``, head ``model.head``), 6.0 (``model.backbone.``, ``model.decoder.fc``), 5.x
    (``backbone.``, ``head.fc``) and NVlabs state dicts load through the filter with identical outputs."""
    source = randomised("fan_tiny_8_p4_hybrid", **SMALL_HYBRID, num_classes=5)
    state = {
        (head + k[5:] if k.startswith("head.") else prefix + k): v for k, v in source.state_dict().items()
    }
    checkpoint = {"state_dict": state, "epoch": 3}
    target = create_backbone("fan_tiny_8_p4_hybrid", **SMALL_HYBRID, num_classes=5).eval()
    target.load_state_dict(fan_checkpoint_filter_fn(checkpoint, target))  # strict
    headless = create_backbone("fan_tiny_8_p4_hybrid", **SMALL_HYBRID).eval()
    filtered = fan_checkpoint_filter_fn(checkpoint, headless)
    assert not any(k.startswith("head") for k in filtered)
    headless.load_state_dict(filtered)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
        torch.testing.assert_close(headless(x), source.forward_features(x)["x_norm_clstoken"], rtol=0, atol=0)


def test_filter_drops_a_head_of_another_size() -> None:
    saved = {f"model.{k}": v for k, v in randomised(**SMALL, num_classes=7).state_dict().items()}
    target = create_backbone("fan_tiny_12_p16_224", **SMALL, num_classes=3)
    missing, unexpected = target.load_state_dict(fan_checkpoint_filter_fn(saved, target), strict=False)
    assert set(missing) == {"head.weight", "head.bias"} and not unexpected


# -------------------------------------------------------------------------------------- training


def test_layer_ids_cover_every_parameter() -> None:
    with torch.device("meta"):
        model = create_backbone("fan_xlarge_16_p4_hybrid", num_classes=10)
    ids = {name: model.layer_id_for_param(name) for name, _ in model.named_parameters()}
    assert set(ids.values()) == set(range(model.n_blocks + 2)) and model.n_blocks == 23 + 2
    assert ids["patch_embed.backbone.stem.0.weight"] == ids["patch_embed.proj.bias"] == 0
    assert ids["patch_embed.backbone.stages.1.blocks.6.gamma"] == 0
    assert ids["pos_embed.token_projection.weight"] == 0
    assert ids["cls_token"] == 0 and ids["blocks.0.attn.q.weight"] == 1
    assert ids["blocks.19.downsample.proj.weight"] == ids["blocks.19.gamma2"] == 20  # downsample: its block
    assert ids["cls_attn_blocks.0.attn.k.weight"] == 24 and ids["cls_attn_blocks.1.gamma2"] == 25
    assert ids["norm.weight"] == ids["head.bias"] == model.n_blocks + 1
    assert model.layer_id_for_param("backbone.blocks.3.mlp.q.weight") == 4
    assert model.layer_id_for_param("backbone.patch_embed.proj.weight") == 0
    assert model.layer_id_for_param("backbone.cls_attn_blocks.1.norm1.bias") == 25
    assert model.no_weight_decay() == {"cls_token"} | {f"blocks.{i}.mlp.temperature" for i in range(23)}
    with torch.device("meta"):
        se = create_backbone("fan_small_12_p16_224_se_attn")
    assert se.no_weight_decay() == {"cls_token"}


def test_drop_path_is_the_same_in_every_fan_block() -> None:
    model = create_backbone("fan_tiny_12_p16_224", depth=3, drop_path_rate=0.1)
    assert [getattr(b.drop_path, "drop_prob", 0.0) for b in model.blocks] == [0.1] * 3
    assert not any(hasattr(b, "drop_path") for b in model.cls_attn_blocks)  # as TAO: none there


def test_grad_checkpointing_gives_the_same_loss_and_gradients() -> None:
    torch.manual_seed(0)
    model = create_backbone("fan_tiny_8_p4_hybrid", **SMALL_HYBRID, drop_path_rate=0.2).train()
    x = images()

    plain_loss, plain = loss_and_grads(model, x, False, "x_norm_clstoken")
    loss, grads = loss_and_grads(model, x, True, "x_norm_clstoken")
    torch.testing.assert_close(loss, plain_loss)
    assert grads.keys() == plain.keys() == {n for n, _ in model.named_parameters()}
    for name, grad in plain.items():
        torch.testing.assert_close(grads[name], grad, msg=name)
