"""Hiera backbones on transformers' HieraModel: sizes, interface, numerics, TAO / timm checkpoints."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

pytest.importorskip("transformers.models.hiera")

import foveal.nn.hiera  # noqa: E402, F401  (registers the backbones)
from foveal.nn.hiera import Hiera, hiera_checkpoint_filter_fn  # noqa: E402
from foveal.nn.registry import create_backbone, list_backbones  # noqa: E402

pytestmark = pytest.mark.unit

# Hiera paper (Ryali et al., arXiv:2306.00989) Table 2 / timm, params with the 1000-class head, in
# millions, and the exact count of HF's HieraForImageClassification with the same config.
PAPER_MILLIONS = {"tiny": 28, "small": 35, "base": 52, "base_plus": 70, "large": 214, "huge": 673}
EXACT = {
    "tiny": 27_910_216,
    "small": 35_008_072,
    "base": 51_524_968,
    "base_plus": 69_896_616,
    "large": 213_739_912,
    "huge": 672_779_752,
}
EMBED_DIMS = {"tiny": 768, "small": 768, "base": 768, "base_plus": 896, "large": 1152, "huge": 2048}
N_BLOCKS = {"tiny": 12, "small": 16, "base": 24, "base_plus": 24, "large": 48, "huge": 48}
# CPU-sized: four stages of one block, 8 -> 64 channels, still at 224 px (56x56 tokens).
TINY = {"embed_dim": 8, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}


def tiny(**overrides) -> Hiera:
    torch.manual_seed(0)
    return create_backbone("hiera_tiny_224", **{**TINY, **overrides}).eval()


def images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def test_every_tao_name_is_registered() -> None:
    assert list_backbones("hiera_*") == sorted(f"hiera_{size}_224" for size in PAPER_MILLIONS)


@pytest.mark.parametrize("size", sorted(PAPER_MILLIONS))
def test_parameter_counts_match_the_paper(size: str) -> None:
    with torch.device("meta"):
        with_head = create_backbone(f"hiera_{size}_224", num_classes=1000)
        backbone = create_backbone(f"hiera_{size}_224")
    count = sum(p.numel() for p in with_head.parameters())
    assert round(count / 1e6) == PAPER_MILLIONS[size] and count == EXACT[size]
    dim = EMBED_DIMS[size]
    assert backbone.embed_dim == backbone.num_features == dim and backbone.n_blocks == N_BLOCKS[size]
    assert sum(p.numel() for p in backbone.parameters()) == count - (1000 * dim + 1000)
    assert isinstance(backbone.head, nn.Identity)


def test_only_224_inputs() -> None:
    with pytest.raises(ValueError, match=r"224x224 images only, got img_size=256.*use an input size of 224"):
        create_backbone("hiera_tiny_224", img_size=256)
    model = tiny()
    with pytest.raises(ValueError, match=r"224x224 images only, got \(192, 192\)"):
        model(torch.randn(1, 3, 192, 192))
    with pytest.raises(ValueError, match="does not support masks"):
        model.forward_features(images(), masks=torch.zeros(2, 49, dtype=torch.bool))


def test_hf_key_names() -> None:
    keys = set(create_backbone("hiera_tiny_224", num_classes=10, **TINY).state_dict())
    assert {
        "hiera.embeddings.position_embeddings",
        "hiera.embeddings.patch_embeddings.projection.weight",
        "hiera.encoder.stages.0.layers.0.attn.qkv.weight",
        "hiera.encoder.stages.1.layers.0.proj.weight",  # width change: 8 -> 16
        "hiera.encoder.stages.3.layers.0.mlp.fc2.bias",
        "hiera.pooler.layernorm.weight",
        "head.weight",
    } <= keys


def test_features_match_hugging_face_classification() -> None:
    """transformers' own forward (HieraForImageClassification) with our weights gives the same logits;
    our tokens are the last stage in raster order, as HF's reshaped hidden states."""
    from transformers import HieraForImageClassification

    model = tiny(num_classes=5)
    config = model.config
    config.num_labels = 5
    reference = HieraForImageClassification(config).eval()
    state = {re.sub(r"^head\.", "classifier.", k): v for k, v in model.state_dict().items()}
    reference.load_state_dict(state)
    x = images()
    with torch.no_grad():
        out = model.forward_features(x)
        expected = reference(x, output_hidden_states=True)
    torch.testing.assert_close(model.forward_head(out), expected.logits)
    last = expected.reshaped_hidden_states[-1]  # (B, 7, 7, 64)
    torch.testing.assert_close(out["x_prenorm"], last.permute(0, 3, 1, 2))
    torch.testing.assert_close(out["x_norm_patchtokens"], model.norm(last.flatten(1, 2)))
    torch.testing.assert_close(out["x_norm_clstoken"], model.norm(last.flatten(1, 2).mean(dim=1)))
    assert out["x_norm_patchtokens"].shape == (2, 49, 64)
    # The MAE encoder's grid: two query poolings, 14x14 tokens.
    with torch.no_grad():
        assert tiny(num_query_pool=2).forward_features(x)["x_prenorm"].shape == (2, 64, 14, 14)


def test_backward_reaches_every_parameter() -> None:
    model = tiny(num_classes=3).train()
    model(images()).logsumexp(dim=1).mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def _to_timm(state: dict[str, torch.Tensor], depths: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Our names as timm / TAO name them (the inverse of transformers' convert_hiera_to_hf.py
    renames, with timm 1.0's ``head.norm`` / ``head.fc``)."""
    starts = [sum(depths[:i]) for i in range(len(depths))]
    out = {}
    for key, value in state.items():
        match = re.match(r"^hiera\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)$", key)
        if match:
            rest = match.group(3).replace("layernorm_before.", "norm1.").replace("layernorm_after.", "norm2.")
            key = f"blocks.{starts[int(match.group(1))] + int(match.group(2))}.{rest}"
        key = key.replace("hiera.embeddings.patch_embeddings.projection.", "patch_embed.proj.")
        key = key.replace("hiera.embeddings.position_embeddings", "pos_embed")
        key = key.replace("hiera.pooler.layernorm.", "head.norm.")
        out[re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)] = value
    return out


@pytest.mark.parametrize("prefix", ["model.", "model.backbone."])
def test_tao_checkpoint_round_trip(prefix: str) -> None:
    """A TAO 6.25 (``model.``) or 6.0 (``model.backbone.``) state dict with timm's names loads
    through the filter into a fresh model and gives identical outputs; a head the model lacks is dropped."""
    depths = (1, 2, 1, 1)
    source = tiny(depths=depths, num_classes=4)
    tao = {prefix + k: v for k, v in _to_timm(source.state_dict(), depths).items()}
    assert f"{prefix}blocks.2.norm1.weight" in tao and f"{prefix}head.fc.weight" in tao
    fresh = create_backbone("hiera_tiny_224", **{**TINY, "depths": depths, "num_classes": 4}).eval()
    state = hiera_checkpoint_filter_fn({"state_dict": tao}, fresh)
    assert set(state) == set(fresh.state_dict())
    fresh.load_state_dict(state)
    x = images(1)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), source(x), rtol=0, atol=0)
    headless = create_backbone("hiera_tiny_224", **{**TINY, "depths": depths})
    assert set(hiera_checkpoint_filter_fn(tao, headless)) == set(headless.state_dict())


def test_layer_ids_and_no_weight_decay() -> None:
    model = create_backbone("hiera_tiny_224", **{**TINY, "depths": (1, 2, 3, 1)}, num_classes=2)
    ids = {name: model.layer_id_for_param(name) for name, _ in model.named_parameters()}
    assert set(ids.values()) == set(range(model.n_blocks + 2))  # 0, every block, then the top
    assert ids["hiera.embeddings.position_embeddings"] == 0
    assert ids["hiera.encoder.stages.2.layers.1.attn.qkv.weight"] == 1 + 2 + 1 + 1
    assert ids["hiera.pooler.layernorm.weight"] == ids["head.weight"] == model.n_blocks + 1
    assert model.layer_id_for_param("backbone.hiera.encoder.stages.0.layers.0.mlp.fc1.weight") == 1
    assert model.no_weight_decay() <= set(ids)


def test_grad_checkpointing_gives_the_same_loss_and_grads() -> None:
    model = tiny(num_classes=3).train()
    x = images()

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = model(x).square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_loss, plain = loss_and_grads()
    model.set_grad_checkpointing(True)
    assert all(stage.gradient_checkpointing for stage in model.hiera.encoder.stages)
    ckpt_loss, ckpt = loss_and_grads()
    model.set_grad_checkpointing(False)
    assert not any(stage.gradient_checkpointing for stage in model.hiera.encoder.stages)
    torch.testing.assert_close(ckpt_loss, plain_loss)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], msg=name)
