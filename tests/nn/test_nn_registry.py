"""The backbone registry: names, overrides, duplicates and errors."""

from __future__ import annotations

import logging

import pytest
import torch

from foveal.nn import VisionTransformer, create_backbone, list_backbones, register_backbone
from foveal.nn import registry as registry_module

pytestmark = pytest.mark.unit

EXPECTED = {
    # name: (embed_dim, depth, num_heads, patch_size)
    "vit_tiny_patch16": (192, 12, 3, 16),
    "vit_small_patch16": (384, 12, 6, 16),
    "vit_base_patch16": (768, 12, 12, 16),
    "vit_large_patch16": (1024, 24, 16, 16),
    "vit_huge_patch14": (1280, 32, 16, 14),
    "vit_micro_patch4": (128, 4, 4, 4),
    "vit_t": (192, 12, 3, 14),
    "vit_s": (384, 12, 6, 14),
    "vit_b": (768, 12, 12, 14),
    "vit_l": (1024, 24, 16, 14),
    "vit_g": (1536, 40, 24, 14),
    "vit_tiny_patch14": (192, 12, 3, 14),
    "vit_small_patch14": (384, 12, 6, 14),
    "vit_base_patch14": (768, 12, 12, 14),
    "vit_large_patch14": (1024, 24, 16, 14),
    "vit_giant_patch14": (1536, 40, 24, 14),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered_sizes(name: str) -> None:
    with torch.device("meta"):
        model = create_backbone(name)
    embed_dim, depth, num_heads, patch_size = EXPECTED[name]
    assert isinstance(model, VisionTransformer)
    assert (model.embed_dim, model.n_blocks, model.blocks[0].attn.num_heads) == (embed_dim, depth, num_heads)
    assert model.patch_size == patch_size
    assert model.img_size == (224, 224)
    assert model.blocks[0].norm1.eps == 1e-6


def test_list_backbones_is_sorted_and_filterable() -> None:
    names = list_backbones()
    assert set(EXPECTED) <= set(names)
    assert names == sorted(names)
    assert list_backbones("vit_*_patch16") == [
        "vit_base_patch16",
        "vit_large_patch16",
        "vit_small_patch16",
        "vit_tiny_patch16",
    ]


def test_overrides_reach_the_model() -> None:
    model = create_backbone("vit_s", patch_size=16, img_size=64, depth=1, num_register_tokens=2)
    assert model.patch_size == 16 and model.patch_grid == (4, 4)
    assert model.register_tokens.shape == (1, 2, 384)
    assert create_backbone("vit_t", depth=1, img_size=(28, 42)).patch_grid == (2, 3)


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(KeyError, match="vit_small_patch16"):
        create_backbone("vit_smal_patch16")


def test_duplicate_registration_warns_and_replaces(caplog: pytest.LogCaptureFixture) -> None:
    name = "test_only_backbone"

    def first(**overrides):
        return "first"

    def second(**overrides):
        return "second"

    try:
        register_backbone(name)(first)
        with caplog.at_level(logging.WARNING, logger="foveal.nn.registry"):
            register_backbone(name)(second)
        assert "registered twice" in caplog.text
        assert create_backbone(name) == "second"
    finally:
        registry_module._BACKBONES.pop(name, None)
