"""TAO's DINOv2 ViTs (NVDINOv2 names): sizes, TAO keys, TAO's forward written out, TAO checkpoints."""

from __future__ import annotations

import logging
import math
import re

import pytest
import torch
import torch.nn.functional as F
from backbone_checks import key_digest, loss_and_grads

import foveal.nn.tao_vit  # noqa: F401  (registers the backbones)
from foveal.nn.backbone import Backbone
from foveal.nn.registry import create_backbone, list_backbones
from foveal.nn.tao_vit import TAO_DINOV2_CONFIGS, TaoDinoV2, tao_dinov2_checkpoint_filter_fn

pytestmark = pytest.mark.unit

NAMES = sorted(TAO_DINOV2_CONFIGS)
# Parameters with a 1000-class head. Exact: ``param_count`` below for TAO's configs (patch 14, SwiGLU
# fc1 D -> 2H / fc2 H -> D with H = 2736 for D = 1024 and 4096 for D = 1536, LayerScale, tables of 37^2 or
# 16^2 patches + cls, 4 registers for the giant). Foveal's ViT holds one more D-vector than TAO's, the
# ``mask_token`` (masked-image modelling); TAO 6.25.10's own builders (built off-line, timm 1.0.14) give
# exactly these counts minus D, and their keys and shapes hash to TAO_KEYS.
WITH_HEAD = {
    "vit_large_patch14_dinov2_swiglu": 305_819_880,
    "vit_large_patch14_dinov2_swiglu_legacy": 304_680_168,
    "vit_giant_patch14_reg4_dinov2_swiglu": 1_138_023_912,
}
# Meta's DINOv2 (arXiv:2304.07193: ViT-L/14 "300M", ViT-g/14 "1.1B") without head, at 518 px, mask token
# included (tests/nn/test_nn_vit.py): ViT-L/14 uses a GELU MLP of 4096, ViT-g/14 the same SwiGLU and no
# registers. TAO's ViT-L is Meta's plus 24 x (SwiGLU - GELU MLP) = 24 x 17,760; its ViT-g is Meta's plus
# 4 register tokens.
META_DINOV2 = {"vit_l": 304_368_640, "vit_g": 1_136_480_768}
# (number of state-dict entries, sha256[:16] of the sorted "key:shape" lines) of TAO's models with a head.
TAO_KEYS = {
    "vit_large_patch14_dinov2_swiglu": (344, "7f925701d15cbc8f"),
    "vit_large_patch14_dinov2_swiglu_legacy": (344, "b390f85525426c5f"),
    "vit_giant_patch14_reg4_dinov2_swiglu": (569, "13ff7bb078d2b643"),
}
# TAO's giant at CPU size: D 64 (4 heads), 2 blocks, a 4x4 grid at 56 px, 4 registers.
TINY = {"embed_dim": 64, "depth": 2, "num_heads": 4, "img_size": 56}
_CACHE: dict[str, TaoDinoV2] = {}


def swiglu_hidden(dim: int) -> int:
    """DINOv2's SwiGLUFFNFused width for mlp_ratio 4, which TAO passes as mlp_ratio = 2H / D."""
    return (int(4 * dim * 2 / 3) + 7) // 8 * 8


def param_count(dim: int, depth: int, grid: int, registers: int, num_classes: int) -> int:
    hidden = swiglu_hidden(dim)
    block = 4 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + 2 * dim  # norms, qkv, proj, ls1/ls2
    block += (dim * 2 * hidden + 2 * hidden) + (hidden * dim + dim)  # fc1 (gate, value), fc2
    # patch conv, cls token, table, mask token, registers
    stem = (3 * 14 * 14 * dim + dim) + dim + (1 + grid * grid) * dim + dim + registers * dim
    return stem + depth * block + 2 * dim + (dim * num_classes + num_classes if num_classes else 0)


def to_tao_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Foveal -> TAO keys: the packed SwiGLU is ``mlp.fc1``/``mlp.fc2`` there, and TAO has no mask token."""
    renamed = {
        re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", k)): v
        for k, v in state.items()
    }
    return {k: v for k, v in renamed.items() if k != "mask_token"}


def build(registers: int = 4, seed: int = 0, **overrides) -> TaoDinoV2:
    """The giant's config shrunk, with random tokens, LayerScales, norms and biases (init: ~0, 1e-5, 1/0)."""
    torch.manual_seed(seed)
    model = create_backbone(
        "vit_giant_patch14_reg4_dinov2_swiglu", **{**TINY, "num_register_tokens": registers, **overrides}
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 or name.endswith(("_token", "tokens")):
                param.add_(torch.randn_like(param) * 0.3)
    return model.eval()


def tiny(registers: int = 4, seed: int = 0, **overrides) -> TaoDinoV2:
    """:func:`build`, shared between tests (they must not change its weights)."""
    key = f"{registers}-{seed}-{sorted(overrides.items())}"
    if key not in _CACHE:
        _CACHE[key] = build(registers, seed, **overrides)
    return _CACHE[key]


def images(size: int = 56, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _layer_norm(tokens: torch.Tensor, params: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
    return F.layer_norm(tokens, weight.shape, weight, bias, eps=1e-6)


def tao_reference(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> torch.Tensor:
    """TAO's DINOV2.forward_pre_logits written out from TAO-named weights: cls + table (the 37x37-style
    grid bicubic-resized with ``scale_factor = (g + 0.1) / g0`` when the input grid differs), registers
    appended AFTER the patches, pre-norm blocks with packed SwiGLU (gate = first half), final norm, cls."""
    dim = state["cls_token"].shape[-1]
    tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=14)
    grid = tokens.shape[-1]
    tokens = torch.cat([state["cls_token"].expand(x.shape[0], -1, -1), tokens.flatten(2).transpose(1, 2)], 1)
    table = state["pos_embed"]
    old = math.isqrt(table.shape[1] - 1)
    if old != grid:
        patch = table[:, 1:].reshape(1, old, old, dim).permute(0, 3, 1, 2)
        scale = (grid + 0.1) / old
        patch = F.interpolate(patch, scale_factor=(scale, scale), mode="bicubic", align_corners=False)
        table = torch.cat([table[:, :1], patch.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)], 1)
    tokens = tokens + table
    if "register_tokens" in state:
        tokens = torch.cat([tokens, state["register_tokens"].expand(x.shape[0], -1, -1)], 1)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        p = {k.removeprefix(f"blocks.{i}."): v for k, v in state.items() if k.startswith(f"blocks.{i}.")}

        b, n, _ = tokens.shape
        q, k, v = (
            F.linear(_layer_norm(tokens, p, "norm1"), p["attn.qkv.weight"], p["attn.qkv.bias"])
            .reshape(b, n, 3, heads, dim // heads)
            .permute(2, 0, 3, 1, 4)
        )
        attn = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        attn = F.linear(attn.transpose(1, 2).reshape(b, n, dim), p["attn.proj.weight"], p["attn.proj.bias"])
        tokens = tokens + p["ls1.gamma"] * attn
        gate, value = F.linear(_layer_norm(tokens, p, "norm2"), p["mlp.fc1.weight"], p["mlp.fc1.bias"]).chunk(
            2, dim=-1
        )
        tokens = tokens + p["ls2.gamma"] * F.linear(
            F.silu(gate) * value, p["mlp.fc2.weight"], p["mlp.fc2.bias"]
        )
    return F.layer_norm(tokens, (dim,), state["norm.weight"], state["norm.bias"], eps=1e-6)[:, 0]


def test_every_tao_name_is_registered() -> None:
    assert list_backbones("vit_*_dinov2_swiglu*") == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_and_keys_match_the_references(name: str) -> None:
    dim, depth, heads, img_size, registers = TAO_DINOV2_CONFIGS[name]
    grid = img_size // 14
    with torch.device("meta"):
        with_head = create_backbone(name, num_classes=1000)
        backbone = create_backbone(name)
    count = sum(p.numel() for p in with_head.parameters())
    assert count == WITH_HEAD[name] == param_count(dim, depth, grid, registers, 1000)
    no_head = sum(p.numel() for p in backbone.parameters())
    assert no_head == param_count(dim, depth, grid, registers, 0) == count - 1000 * dim - 1000
    if name == "vit_large_patch14_dinov2_swiglu":  # SwiGLU (3DH + 2H + D) vs GELU MLP (8D^2 + 5D) weights
        swiglu_minus_mlp = 3 * dim * swiglu_hidden(dim) + 2 * swiglu_hidden(dim) - 8 * dim * dim - 4 * dim
        assert swiglu_minus_mlp == 17_760 and no_head == META_DINOV2["vit_l"] + depth * swiglu_minus_mlp
    if name == "vit_giant_patch14_reg4_dinov2_swiglu":
        assert no_head == META_DINOV2["vit_g"] + 4 * dim
    assert key_digest(to_tao_names(with_head.state_dict())) == TAO_KEYS[name]
    shapes = {k: tuple(v.shape) for k, v in with_head.state_dict().items()}
    assert shapes["pos_embed"] == (1, 1 + grid * grid, dim) and shapes["cls_token"] == (1, 1, dim)
    assert shapes["patch_embed.proj.weight"] == (dim, 3, 14, 14) and "patch_embed.proj.bias" in shapes
    assert shapes["blocks.0.mlp.w12.weight"] == (2 * swiglu_hidden(dim), dim)
    assert 2 * swiglu_hidden(dim) == (5472 if dim == 1024 else 8192)  # TAO's mlp_ratio 5472/1024, 8192/1536
    assert shapes["blocks.0.mlp.w3.weight"] == (dim, swiglu_hidden(dim))
    assert shapes["blocks.0.attn.qkv.weight"] == (3 * dim, dim) and shapes["blocks.0.ls2.gamma"] == (dim,)
    assert shapes.get("register_tokens") == ((1, 4, dim) if registers else None)
    assert backbone.embed_dim == backbone.num_features == dim and backbone.n_blocks == depth
    assert backbone.blocks[0].attn.num_heads == heads and backbone.blocks[0].norm1.eps == 1e-6
    assert isinstance(backbone, Backbone) and isinstance(backbone, TaoDinoV2)


def test_forward_shapes_head_and_sizes() -> None:
    model = tiny()
    x = images()
    with torch.no_grad():
        out = model.forward_features(x)
        pooled = model(x)
        masked = model.forward_features(x, masks=torch.ones(2, 16, dtype=torch.bool))
    assert out["x_norm_clstoken"].shape == (2, 64)
    assert out["x_norm_regtokens"].shape == (2, 4, 64)
    assert out["x_norm_patchtokens"].shape == (2, 4 * 4, 64)
    assert out["x_prenorm"].shape == (2, 1 + 4 + 16, 64)
    torch.testing.assert_close(pooled, out["x_norm_clstoken"])  # TAO's global_pool='token'
    assert not torch.allclose(masked["x_norm_clstoken"], out["x_norm_clstoken"])  # the mask token is used
    with torch.no_grad():
        assert model.forward_features(images(28))["x_norm_patchtokens"].shape == (2, 2 * 2, 64)
    with pytest.raises(ValueError, match="multiple of patch size"):
        model(images(50))
    assert tiny(num_classes=5)(x).shape == (2, 5)
    with pytest.raises(TypeError):
        create_backbone("vit_large_patch14_dinov2_swiglu", not_an_argument=1)


@pytest.mark.parametrize("registers", [0, 4])
@pytest.mark.parametrize("size", [56, 28, 84])
def test_matches_tao_forward_at_the_built_and_other_sizes(registers: int, size: int) -> None:
    """Registers after cls (Foveal) or after the patches (TAO) give the same cls token; other grids resize
    the table TAO's way (scale factor with DINO's +0.1), not Foveal's default size-based resize."""
    model = tiny(registers)
    x = images(size)
    with torch.no_grad():
        expected = tao_reference(to_tao_names(model.state_dict()), x, heads=4)
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_backward_reaches_every_parameter_but_the_mask_token() -> None:
    model = build(seed=1, num_classes=3).train()
    model(images()).logsumexp(dim=1).mean().backward()
    for name, param in model.named_parameters():
        if name == "mask_token":
            assert param.grad is None  # only masked-image modelling uses it
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_initialisation_follows_tao() -> None:
    torch.manual_seed(0)
    model = create_backbone("vit_giant_patch14_reg4_dinov2_swiglu", **{**TINY, "embed_dim": 256})
    assert model.register_tokens.std().item() == pytest.approx(1.0, rel=0.1)  # TAO: torch.randn
    assert model.cls_token.abs().max() < 1e-4 and (model.blocks[1].ls2.gamma == 1e-5).all()
    assert model.blocks[0].mlp.w12.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert (model.blocks[0].mlp.w12.bias == 0).all() and model.interpolate_offset == 0.1


# ----------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("prefix", ["model.", "model.backbone.", ""])
def test_tao_checkpoint_round_trip(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """TAO 6.25 (``model.``), 6.0 (``model.backbone.``) and flat NV_DINOV2 state dicts, with TAO's
    ``mlp.fc1``/``mlp.fc2`` names and no mask token, load through the filter with identical outputs."""
    source = tiny(num_classes=5)
    state = {prefix + k: v for k, v in to_tao_names(source.state_dict()).items()}
    checkpoint = {"state_dict": state, "epoch": 3, "tao_model": "classification"}
    target = build(seed=7, num_classes=5)
    missing, unexpected = target.load_state_dict(
        tao_dinov2_checkpoint_filter_fn(checkpoint, target), strict=False
    )
    assert missing == ["mask_token"] and not unexpected
    headless = build(seed=7)
    with caplog.at_level(logging.DEBUG, logger="foveal"):
        filtered = tao_dinov2_checkpoint_filter_fn(checkpoint, headless)
    assert "head.weight" in caplog.text and not any(k.startswith("head.") for k in filtered)
    headless.load_state_dict(filtered, strict=False)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
        torch.testing.assert_close(headless(x), source.forward_features(x)["x_norm_clstoken"], rtol=0, atol=0)


def test_table_of_another_grid_is_resampled_as_tao_runs_it() -> None:
    """A 518-px (37x37) checkpoint in the 224-px legacy model: the filter resizes the table once, the way
    TAO's forward resizes it at every step, so both give the same features at the legacy size."""
    source = tiny()  # 4x4 grid
    target = build(seed=3, img_size=28)  # 2x2 grid
    target.load_state_dict(
        tao_dinov2_checkpoint_filter_fn(to_tao_names(source.state_dict()), target), strict=False
    )
    assert target.pos_embed.shape == (1, 1 + 4, 64)
    x = images(28)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


# -------------------------------------------------------------------------------------- training


def test_layer_ids_weight_decay_and_grad_checkpointing() -> None:
    with torch.device("meta"):
        giant = create_backbone("vit_giant_patch14_reg4_dinov2_swiglu", num_classes=10)
    ids = {name: giant.layer_id_for_param(f"backbone.{name}") for name, _ in giant.named_parameters()}
    assert set(ids.values()) == set(range(giant.n_blocks + 2)) and giant.n_blocks == 40
    assert (
        ids["patch_embed.proj.weight"] == ids["register_tokens"] == ids["pos_embed"] == ids["mask_token"] == 0
    )
    assert ids["blocks.0.mlp.w12.weight"] == 1 and ids["blocks.39.ls2.gamma"] == 40
    assert ids["norm.weight"] == ids["head.bias"] == 41
    assert giant.no_weight_decay() == {"pos_embed", "cls_token", "mask_token", "register_tokens"}

    model = build(seed=2, drop_path_rate=0.2).train()
    x = images()

    plain_loss, plain = loss_and_grads(model, x, False, "x_norm_patchtokens")
    loss, grads = loss_and_grads(model, x, True, "x_norm_patchtokens")
    torch.testing.assert_close(loss, plain_loss)
    assert grads.keys() == plain.keys() and len(plain) == len(list(model.parameters())) - 1  # not mask_token
    for name, grad in plain.items():
        torch.testing.assert_close(grads[name], grad, msg=name)
