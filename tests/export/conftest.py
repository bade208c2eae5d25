"""A tiny ViT with the ops that make ViT export fragile: SDPA, LayerNorm, GELU and bicubic
interpolation of position embeddings to the input's grid (as in dinov2's `interpolate_pos_encoding`).

Written here rather than imported from `foveal.nn` so the export tests stand on their own.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, D / heads) each
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Position embeddings for a 4 x 4 grid, resized bicubically to the input's grid."""

    def __init__(
        self,
        dim: int = 32,
        num_heads: int = 2,
        depth: int = 2,
        patch: int = 8,
        num_classes: int = 5,
        return_dict: bool = False,
    ):
        super().__init__()
        self.patch, self.grid, self.return_dict = patch, 4, return_dict
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.grid**2, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def interpolate_pos_encoding(self, h: int, w: int) -> torch.Tensor:
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        D = patch_pos.shape[-1]
        patch_pos = patch_pos.reshape(1, self.grid, self.grid, D).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, h * w, D)], dim=1)

    def forward(self, images: torch.Tensor):
        h, w = images.shape[-2] // self.patch, images.shape[-1] // self.patch
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x + self.interpolate_pos_encoding(h, w)))
        logits = self.head(x[:, 0])
        if self.return_dict:
            return {"logits": logits, "embedding": x[:, 0]}
        return logits


@pytest.fixture(scope="session")
def make_tiny_vit():
    """Factory: ``make_tiny_vit(return_dict=True)`` etc., seeded and in eval mode."""

    def make(**kwargs) -> TinyViT:
        torch.manual_seed(0)
        return TinyViT(**kwargs).eval()

    return make


@pytest.fixture
def tiny_vit(make_tiny_vit) -> TinyViT:
    return make_tiny_vit()


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    """(2, 3, 48, 48): a 6 x 6 patch grid, so the 4 x 4 position embeddings are interpolated."""
    return torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
