"""SigLIP-CLIPA ViTs (open_clip image tower, TAO's NV-CLIP names): sizes, keys, forward, checkpoints."""

from __future__ import annotations

import importlib
import logging
import math
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from foveal.nn.registry import create_backbone, list_backbones

pytestmark = pytest.mark.unit

# The module is imported when the tests run, not at collection: test_nn_vit.py collects every
# registered "vit_*" name and would otherwise pick these up (they are not Foveal ViTs).
NAMES = ["vit_h_14_siglip_clipa_224", "vit_l_14_siglip_clipa_224", "vit_l_14_siglip_clipa_336"]
# Vision-tower parameters incl. the fixed table, no head: research report §6.1 (303.96 M, 304.29 M,
# 632.07 M), checked by hand: L/224 = conv 602_112 + cls 1_024 + table 257*1_024 + 24 blocks of
# 12_596_224 + ln_post 2_048 + proj 1_024*768; /336 has a 577-row table; H = 16 heads of 80, W 1280.
FULL_SIZE = {
    "vit_l_14_siglip_clipa_224": (303_964_160, 303.96, 768, 1024, (257, 1024)),
    "vit_l_14_siglip_clipa_336": (304_291_840, 304.29, 768, 1024, (577, 1024)),
    "vit_h_14_siglip_clipa_224": (632_074_240, 632.07, 1024, 1280, (257, 1280)),
}
TINY = {"width": 64, "depth": 2, "num_heads": 4, "output_dim": 32, "img_size": 56}


def oc() -> ModuleType:
    return importlib.import_module("foveal.nn.openclip_vit")


def tiny(seed: int = 0, **overrides: Any) -> Any:
    """The L/224 config shrunk (W 64, 2 blocks, 4x4 grid at 56 px), LayerNorms and biases randomised."""
    torch.manual_seed(seed)
    model = create_backbone("vit_l_14_siglip_clipa_224", **{**TINY, **overrides})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("bias", "ln_1.weight", "ln_2.weight", "ln_post.weight")):
                param.normal_(0.5 if name.endswith("weight") else 0.0, 0.2)
    return model.eval()


def images(size: int = 56, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tao_table(table: torch.Tensor, grid: int) -> torch.Tensor:
    """TAO's ``interpolate_pos_encoding`` written out: (1 + N, W) table for a grid x grid input."""
    n = table.shape[0] - 1
    if grid * grid == n:
        return table
    side = int(math.sqrt(n))
    patch = table[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    scale = (grid + 0.1) / math.sqrt(n)
    patch = F.interpolate(patch, scale_factor=(scale, scale), mode="bicubic")
    return torch.cat([table[:1], patch.permute(0, 2, 3, 1).reshape(grid * grid, -1)], dim=0)


def open_clip_reference(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> torch.Tensor:
    """open_clip 2.30's image tower for TAO's config, from open_clip-named weights, with torch's MHA."""
    width = state["conv1.weight"].shape[0]
    tokens = F.conv2d(x, state["conv1.weight"], stride=state["conv1.weight"].shape[-1]).flatten(2).transpose(1, 2)
    cls = state["class_embedding"].expand(x.shape[0], 1, -1)
    tokens = torch.cat([cls, tokens], 1) + tao_table(state["positional_embedding"], x.shape[-1] // 14)
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks."))
    for i in range(layers):
        p = {k.removeprefix(f"transformer.resblocks.{i}."): v for k, v in state.items()}
        mha = nn.MultiheadAttention(width, heads, batch_first=True)
        mha.load_state_dict({k.removeprefix("attn."): p[k] for k in p if k.startswith("attn.")})

        def ln(t: torch.Tensor, name: str, p: dict[str, torch.Tensor] = p) -> torch.Tensor:
            return F.layer_norm(t, (width,), p[f"{name}.weight"], p[f"{name}.bias"], eps=1e-5)

        h = ln(tokens, "ln_1")
        tokens = tokens + mha(h, h, h, need_weights=False)[0]
        h = F.gelu(F.linear(ln(tokens, "ln_2"), p["mlp.c_fc.weight"], p["mlp.c_fc.bias"]))
        tokens = tokens + F.linear(h, p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])
    pooled = tokens[:, 1:].mean(1)
    pooled = F.layer_norm(pooled, (width,), state["ln_post.weight"], state["ln_post.bias"], eps=1e-5)
    return pooled @ state["proj"]


def visual_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k.removeprefix("visual."): v for k, v in model.state_dict().items() if k.startswith("visual.")}


def test_every_tao_name_is_registered() -> None:
    oc()
    assert list_backbones("vit_*_siglip_clipa_*") == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_full_size_parameter_counts_and_keys(name: str) -> None:
    count, millions, embed_dim, width, table = FULL_SIZE[name]
    oc()
    with torch.device("meta"):
        model = create_backbone(name)
    assert sum(p.numel() for p in model.parameters()) == count
    assert round(count / 1e6, 2) == millions
    assert model.embed_dim == model.num_features == embed_dim
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["visual.conv1.weight"] == (width, 3, 14, 14) and "visual.conv1.bias" not in shapes
    assert shapes["visual.class_embedding"] == (width,)
    assert shapes["visual.positional_embedding"] == table
    assert shapes["visual.transformer.resblocks.0.attn.in_proj_weight"] == (3 * width, width)
    assert shapes["visual.transformer.resblocks.0.attn.in_proj_bias"] == (3 * width,)
    assert shapes["visual.transformer.resblocks.0.attn.out_proj.weight"] == (width, width)
    assert shapes["visual.transformer.resblocks.0.mlp.c_fc.weight"] == (4 * width, width)
    assert shapes["visual.transformer.resblocks.0.mlp.c_proj.weight"] == (width, 4 * width)
    assert shapes["visual.ln_post.weight"] == (width,) and shapes["visual.proj"] == (width, embed_dim)
    assert not any("ln_pre" in k for k in shapes)
    assert model.visual.transformer.resblocks[0].ln_1.eps == 1e-5
    assert not model.visual.positional_embedding.requires_grad


def test_fixed_sincos_table_layout() -> None:
    table = tiny().visual.positional_embedding  # 4x4 grid, W 64: halves of 32, quarters of 16
    assert torch.equal(table[0], torch.zeros(64))
    omega = 1.0 / 10000 ** (torch.arange(16, dtype=torch.float64) / 16)
    for row, col in [(0, 1), (2, 3), (3, 0)]:
        expected = torch.cat([(col * omega).sin(), (col * omega).cos(), (row * omega).sin(), (row * omega).cos()])
        torch.testing.assert_close(table[1 + 4 * row + col], expected.float())


def test_forward_shapes_head_and_masks() -> None:
    model = tiny()
    x = images()
    with torch.no_grad():
        out = model.forward_features(x)
        pooled = model(x)
    assert out["x_norm_clstoken"].shape == (2, 32)
    assert out["x_norm_patchtokens"].shape == (2, 16, 64)  # transformer width, not projected
    assert out["x_prenorm"].shape == (2, 17, 64)
    torch.testing.assert_close(pooled, out["x_norm_clstoken"])
    torch.testing.assert_close(out["x_norm_patchtokens"], model.visual.ln_post(out["x_prenorm"][:, 1:]))
    with pytest.raises(ValueError, match="does not support masks"):
        model.forward_features(x, masks=torch.zeros(2, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiple of patch size"):
        model(images(50))
    headed = tiny(num_classes=5)
    assert headed(x).shape == (2, 5)
    with pytest.raises(TypeError):
        create_backbone("vit_l_14_siglip_clipa_224", not_an_option=1)


@pytest.mark.parametrize("size", [56, 28, 84])
def test_matches_open_clip_reference_at_built_and_other_sizes(size: int) -> None:
    model = tiny()
    x = images(size)
    with torch.no_grad():
        expected = open_clip_reference(visual_state(model), x, heads=4)
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_backward_reaches_every_trainable_parameter() -> None:
    model = tiny().train()
    model(images()).square().mean().backward()
    for name, param in model.named_parameters():
        if name == "visual.positional_embedding":
            assert not param.requires_grad and param.grad is None
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_tao_625_checkpoint_round_trip(caplog: pytest.LogCaptureFixture) -> None:
    source = tiny(num_classes=5)
    module_state = {f"model.visual.{k}": v for k, v in visual_state(source).items()}
    # TAO's module also holds open_clip's text tower and the CLIP temperature/bias beside ``visual``.
    module_state |= {
        "model.transformer.resblocks.0.attn.in_proj_weight": torch.randn(96, 32),
        "model.token_embedding.weight": torch.randn(10, 32),
        "model.positional_embedding": torch.randn(77, 32),
        "model.logit_scale": torch.ones(()),
        "model.logit_bias": torch.ones(()),
        "head.weight": source.head.weight.detach(),
        "head.bias": source.head.bias.detach(),
    }
    checkpoint = {"state_dict": {f"model.{k}": v for k, v in module_state.items()}, "tao_model": "classification"}
    x = images()
    filter_fn = oc().openclip_vit_checkpoint_filter_fn
    for state in (checkpoint, module_state):
        target = tiny(seed=7, num_classes=5)
        with caplog.at_level(logging.DEBUG, logger="foveal.nn.openclip_vit"):
            target.load_state_dict(filter_fn(state, target))  # strict: every key matched
        assert "token_embedding" in caplog.text
        with torch.no_grad():
            torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
    headless = tiny(seed=7)
    headless.load_state_dict(filter_fn(checkpoint, headless))
    with torch.no_grad():
        torch.testing.assert_close(headless(x), source.forward_features(x)["x_norm_clstoken"], rtol=0, atol=0)


def test_open_clip_and_bare_tower_state_dicts_load() -> None:
    source = tiny()
    clip = {f"visual.{k}": v for k, v in visual_state(source).items()}
    clip |= {"transformer.resblocks.0.ln_1.weight": torch.ones(32), "text_projection": torch.randn(32, 32)}
    filter_fn = oc().openclip_vit_checkpoint_filter_fn
    x = images()
    for state in (clip, visual_state(source), {f"module.{k}": v for k, v in clip.items()}):
        target = tiny(seed=3)
        target.load_state_dict(filter_fn(state, target))
        with torch.no_grad():
            torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="class_embedding"):
        filter_fn({"conv1.weight": torch.zeros(1)}, tiny())


def test_table_of_another_grid_is_resampled_as_the_source_would_run() -> None:
    source = tiny()  # 4x4 grid
    target = tiny(seed=3, img_size=28)  # 2x2 grid
    target.load_state_dict(oc().openclip_vit_checkpoint_filter_fn(source.state_dict(), target))
    x = images(28)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_layer_ids_weight_decay_and_grad_checkpointing() -> None:
    model = tiny().train()
    ids = {name: model.layer_id_for_param(f"backbone.{name}") for name, _ in model.named_parameters()}
    assert set(ids.values()) == {0, 1, 2, 3} and model.n_blocks == 2
    assert ids["visual.conv1.weight"] == ids["visual.class_embedding"] == 0
    assert ids["visual.transformer.resblocks.1.mlp.c_fc.weight"] == 2
    assert ids["visual.proj"] == ids["visual.ln_post.bias"] == 3
    assert model.no_weight_decay() <= set(ids)
    x = images()

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = model(x).square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = run()
    model.set_grad_checkpointing(True)
    ckpt_loss, ckpt_grads = run()
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=0, atol=0)
    assert plain_grads.keys() == ckpt_grads.keys()
    for key, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[key], grad, rtol=1e-5, atol=1e-7)
