"""Smoke and behaviour tests of every registered backbone at capped size (2 blocks, tiny images)."""

from __future__ import annotations

import re

import pytest
import torch

from foveal.nn import VisionTransformer, create_backbone, layer_id_for_param, list_backbones

pytestmark = pytest.mark.unit

# Foveal's own ViTs; ConvNeXt V2 and TAO's named ViTs (DINOv2 SwiGLU, SigLIP) have their own tests
# (test_nn_convnextv2.py, test_nn_tao_vit.py, test_nn_openclip_vit.py)
BACKBONES = [n for n in list_backbones("vit_*") if "dinov2" not in n and "siglip" not in n]
_CACHE: dict[str, VisionTransformer] = {}


def capped(name: str) -> VisionTransformer:
    """A backbone at capped size, built once per session and shared by the tests.

    Capped: 2 blocks, a 2x2 patch grid and 16 channels per head (the head count, patch size, FFN
    type and LayerScale stay those of the registered config; full sizes are checked on the meta
    device in ``test_full_size_parameter_counts``). Tests restore what they change.
    """
    if name not in _CACHE:
        with torch.device("meta"):
            full = create_backbone(name, depth=1)
        num_heads = full.blocks[0].attn.num_heads
        torch.manual_seed(0)
        model = create_backbone(name, depth=2, img_size=2 * full.patch_size, embed_dim=16 * num_heads)
        # Random tokens and LayerScale so that the tests see their effect (init is ~0 / 1e-5).
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if param_name.endswith(("mask_token", "cls_token", "gamma")):
                    param.normal_(0, 0.5)
        _CACHE[name] = model.eval()
    return _CACHE[name]


def images(model: VisionTransformer, grid: tuple[int, int] | None = None, batch: int = 2) -> torch.Tensor:
    grid_h, grid_w = grid or model.patch_grid
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, grid_h * model.patch_size, grid_w * model.patch_size, generator=generator)


@pytest.mark.parametrize("name", BACKBONES)
def test_forward_shapes(name: str) -> None:
    model = capped(name)
    x = images(model)
    n, d = 4, model.embed_dim
    with torch.no_grad():
        out = model.forward_features(x)
        pooled = model(x)
    assert out["x_norm_clstoken"].shape == (2, d)
    assert out["x_norm_regtokens"].shape == (2, 0, d)
    assert out["x_norm_patchtokens"].shape == (2, n, d)
    assert out["x_prenorm"].shape == (2, 1 + n, d)
    assert out["masks"] is None
    torch.testing.assert_close(pooled, out["x_norm_clstoken"])
    torch.testing.assert_close(model.norm(out["x_prenorm"])[:, 1:], out["x_norm_patchtokens"])
    assert torch.isfinite(out["x_prenorm"]).all()


@pytest.mark.parametrize("name", BACKBONES)
def test_backward_reaches_every_parameter(name: str) -> None:
    model = capped(name)
    masks = torch.tensor([[True, False, False, True], [False, False, False, False]])
    try:
        out = model.forward_features(images(model), masks=masks)
        (out["x_norm_clstoken"].pow(2).mean() + out["x_norm_patchtokens"].pow(2).mean()).backward()
        for param_name, param in model.named_parameters():
            if param.requires_grad:
                assert param.grad is not None, param_name
                assert torch.isfinite(param.grad).all(), param_name
        assert model.mask_token.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", BACKBONES)
def test_mask_token_replaces_masked_patches_only(name: str) -> None:
    model = capped(name)
    x = images(model)
    masks = torch.tensor([[True, False, False, True], [False, True, False, False]])
    with torch.no_grad():
        plain = model.prepare_tokens(x)
        masked = model.prepare_tokens(x, masks)
        pos = model.pos_embed[0, 1:]
        expected = (model.mask_token + pos).expand(2, -1, -1)
        torch.testing.assert_close(masked[masks], expected[masks])
        torch.testing.assert_close(masked[~masks], plain[~masks])
        out = model.forward_features(x, masks=masks)
    assert out["masks"] is masks
    assert not torch.allclose(out["x_norm_clstoken"], model.forward_features(x)["x_norm_clstoken"])


@pytest.mark.parametrize("name", BACKBONES)
def test_other_resolution_resamples_position_table(name: str) -> None:
    model = capped(name)
    torch.testing.assert_close(model.patch_pos_embed(*model.patch_grid), model.pos_embed[:, 1:])
    resampled = model.patch_pos_embed(3, 5)
    assert resampled.shape == (1, 15, model.embed_dim)
    with torch.no_grad():
        out = model.forward_features(images(model, grid=(3, 5)))
    assert out["x_norm_patchtokens"].shape == (2, 15, model.embed_dim)
    with pytest.raises(ValueError, match="multiple of patch size"):
        model.forward_features(torch.randn(1, 3, model.patch_size + 1, model.patch_size))


@pytest.mark.parametrize("name", BACKBONES)
def test_get_intermediate_layers(name: str) -> None:
    model = capped(name)
    x = images(model)
    with torch.no_grad():
        final = model.forward_features(x)
        last_two = model.get_intermediate_layers(x, n=2)
        by_index = model.get_intermediate_layers(x, n=[0, -1], return_class_token=True)
        spatial = model.get_intermediate_layers(x, n=1, reshape=True)
        raw = model.get_intermediate_layers(x, n=[1], norm=False)
    assert len(last_two) == 2 and all(t.shape == (2, 4, model.embed_dim) for t in last_two)
    torch.testing.assert_close(last_two[1], final["x_norm_patchtokens"])
    torch.testing.assert_close(by_index[0][0], last_two[0])
    torch.testing.assert_close(by_index[1][1], final["x_norm_clstoken"])
    assert spatial[0].shape == (2, model.embed_dim, 2, 2)
    torch.testing.assert_close(spatial[0].flatten(2).transpose(1, 2), final["x_norm_patchtokens"])
    torch.testing.assert_close(raw[0], final["x_prenorm"][:, 1:])
    with pytest.raises(ValueError):
        model.get_intermediate_layers(x, n=[5])


@pytest.mark.parametrize("name", BACKBONES)
def test_group_matcher_and_layer_ids_cover_all_params(name: str) -> None:
    model = capped(name)
    model.reset_classifier(3)
    try:
        matcher = model.group_matcher()
        stem = re.compile(matcher["stem"])
        block_patterns = [(re.compile(p), fixed) for p, fixed in matcher["blocks"]]
        for param_name, _ in model.named_parameters():
            layer_id = layer_id_for_param(param_name, model.n_blocks)
            if stem.match(param_name):
                assert layer_id == 0, param_name
                continue
            hits = [(p.match(param_name), fixed) for p, fixed in block_patterns if p.match(param_name)]
            assert len(hits) == 1, param_name
            match, fixed = hits[0]
            group = fixed[0] if fixed else int(match.group(1))
            assert layer_id == (model.n_blocks + 1 if fixed else group + 1), param_name
        coarse = model.group_matcher(coarse=True)
        assert re.match(coarse["blocks"], "blocks.1.attn.qkv.weight").group(1) == "1"
        assert model.no_weight_decay() <= {n for n, _ in model.named_parameters()}
    finally:
        model.reset_classifier(0)


@pytest.mark.parametrize("name", BACKBONES)
def test_grad_checkpointing_gives_identical_outputs_and_grads(name: str) -> None:
    model = capped(name)
    x = images(model)

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        out = model.forward_features(x)["x_norm_patchtokens"]
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    try:
        plain_out, plain_grads = run()
        model.set_grad_checkpointing(True)
        ckpt_out, ckpt_grads = run()
    finally:
        model.set_grad_checkpointing(False)
        model.zero_grad(set_to_none=True)
    torch.testing.assert_close(ckpt_out, plain_out, rtol=0, atol=0)
    assert plain_grads.keys() == ckpt_grads.keys()
    for key, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[key], grad, rtol=1e-5, atol=1e-6)


def test_registers_sit_after_cls_without_position_embedding() -> None:
    model = create_backbone("vit_t", depth=1, img_size=28, num_register_tokens=4).eval()
    with torch.no_grad():
        prefix = model.prefix_tokens(2)
        out = model.forward_features(torch.randn(2, 3, 28, 28))
    assert prefix.shape == (2, 5, model.embed_dim)
    torch.testing.assert_close(prefix[0, 0], (model.cls_token + model.pos_embed[:, 0])[0, 0])
    torch.testing.assert_close(prefix[:, 1:], model.register_tokens.expand(2, -1, -1))
    assert out["x_norm_regtokens"].shape == (2, 4, model.embed_dim)
    assert out["x_norm_patchtokens"].shape == (2, 4, model.embed_dim)
    assert out["x_prenorm"].shape == (2, 9, model.embed_dim)
    assert "register_tokens" in model.no_weight_decay()


def test_prepare_tokens_and_forward_blocks_compose_to_forward_features() -> None:
    """The MAE path: the encoder can run on any subset of patch tokens."""
    model = create_backbone("vit_tiny_patch16", depth=2, img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        patches = model.prepare_tokens(x)
        tokens = torch.cat([model.prefix_tokens(2), patches], dim=1)
        torch.testing.assert_close(
            model.norm(model.forward_blocks(tokens)), model.norm(model.forward_features(x)["x_prenorm"])
        )
        kept = model.forward_blocks(torch.cat([model.prefix_tokens(2), patches[:, :1]], dim=1))
    assert kept.shape == (2, 2, model.embed_dim)


def test_head_and_pooling() -> None:
    model = create_backbone("vit_t", depth=1, img_size=28, num_classes=5).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        feats = model.forward_features(x)
        torch.testing.assert_close(model(x), model.head(feats["x_norm_clstoken"]))
        model.reset_classifier(7, global_pool="avg")
        assert model(x).shape == (2, 7)
        torch.testing.assert_close(
            model.forward_head(feats, pre_logits=True), feats["x_norm_patchtokens"].mean(1)
        )


def test_stochastic_depth_grows_linearly_and_is_off_in_eval() -> None:
    model = create_backbone("vit_t", depth=3, img_size=28, drop_path_rate=0.2)
    rates = [
        block.drop_path1.drop_prob if hasattr(block.drop_path1, "drop_prob") else 0.0
        for block in model.blocks
    ]
    assert rates == pytest.approx([0.0, 0.1, 0.2])
    x = torch.randn(8, 3, 28, 28)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        torch.manual_seed(0)
        first = model(x)
        torch.manual_seed(1)
        assert not torch.allclose(first, model(x))


def test_layerscale_and_swiglu_options() -> None:
    plain = create_backbone("vit_tiny_patch16", depth=1, img_size=32)
    assert isinstance(plain.blocks[0].ls1, torch.nn.Identity)
    dinov2 = create_backbone("vit_t", depth=1, img_size=28)
    assert torch.all(dinov2.blocks[0].ls1.gamma == 1e-5)
    with torch.device("meta"):
        giant = create_backbone("vit_g", depth=1)
    assert giant.blocks[0].mlp.w12.out_features == 2 * 4096  # DINOv2 ViT-g: SwiGLU hidden 4096
    swiglu = create_backbone("vit_t", depth=1, img_size=28, ffn_layer="swiglu")
    assert swiglu.blocks[0].mlp.w3.in_features == 512  # (int(768 * 2 / 3) + 7) // 8 * 8


def test_sincos_position_table_is_frozen() -> None:
    model = create_backbone("vit_tiny_patch16", depth=1, img_size=32, pos_embed_type="sincos")
    assert not model.pos_embed.requires_grad
    assert torch.all(model.pos_embed[0, 0] == 0)
    assert model.pos_embed[0, 1:, 0].abs().max() <= 1  # sin of the column index


# Parameter counts without a head. The DINOv2 rows are the released hub models (518 px):
# ViT-S/14 22.1M, B/14 86.6M, L/14 304.4M, g/14 1136.5M. The MAE rows (224 px) are timm's
# encoders with num_classes=0 plus our mask token (D parameters).
FULL_SIZE = {
    "vit_t": (518, 5_719_872),  # no released model: the same formula at D=192
    "vit_s": (518, 22_056_576),
    "vit_b": (518, 86_580_480),
    "vit_l": (518, 304_368_640),
    "vit_g": (518, 1_136_480_768),
    "vit_tiny_patch16": (224, 5_524_416 + 192),
    "vit_small_patch16": (224, 21_665_664 + 384),
    "vit_base_patch16": (224, 85_798_656 + 768),
    "vit_large_patch16": (224, 303_301_632 + 1024),
    "vit_huge_patch14": (224, 630_764_800 + 1280),
    # By hand: patch embed 3*4*4*128+128, cls 128, pos (1+56*56)*128, 4 blocks of 198_272, norm 256,
    # + D as the MAE-style sizes above.
    "vit_micro_patch4": (224, 6_272 + 128 + 401_536 + 4 * 198_272 + 256 + 128),
}
ALIASES = {f"vit_{size}_patch14": f"vit_{size[0]}" for size in ("tiny", "small", "base", "large", "giant")}


@pytest.mark.parametrize("name", BACKBONES)
def test_full_size_parameter_counts(name: str) -> None:
    img_size, expected = FULL_SIZE[ALIASES.get(name, name)]
    with torch.device("meta"):
        model = create_backbone(name, img_size=img_size)
    assert sum(p.numel() for p in model.parameters()) == expected
