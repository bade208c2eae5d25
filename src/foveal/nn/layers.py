"""Transformer building blocks shared by the ViT backbones.

The block follows the pre-norm ViT of Dosovitskiy et al., "An Image is Worth 16x16 Words"
(ICLR 2021, arXiv:2010.11929), with the additions DINOv2 uses (Oquab et al., "DINOv2: Learning
Robust Visual Features without Supervision", arXiv:2304.07193): LayerScale (Touvron et al.,
"Going deeper with Image Transformers", arXiv:2103.17239), stochastic depth (Huang et al.,
arXiv:1603.09382) and the fused SwiGLU feed-forward of the giant model (Shazeer, "GLU Variants
Improve Transformer", arXiv:2002.05202).

Parameter names follow DINOv2 / timm (``attn.qkv``, ``ls1.gamma``, ``mlp.w12``) so that their
checkpoints load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from foveal.nn.packing import PackedLayout, packed_attention

FFN_LAYERS = ("mlp", "swiglu", "swiglufused")
ACT_LAYERS = ("gelu", "gelu_tanh", "quick_gelu", "silu", "relu")


def make_act(name: str) -> nn.Module:
    """Activation module by name; ``gelu`` is the exact (erf) GELU that ViT, MAE and DINOv2 use."""
    if name == "gelu":
        return nn.GELU()
    if name in ("gelu_tanh", "gelu_new", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return _QuickGELU()
    if name == "silu":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; expected one of {ACT_LAYERS}")


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided convolution: (B, C, H, W) -> (B, N, D)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    ``fused`` (default): PyTorch's SDPA, which picks the flash / memory-efficient kernel where
    the device has one. Off: the same product written out (``softmax(q k^T / sqrt(d)) v``), the
    reference path that materialises the (N, N) attention matrix.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.fused = True
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor, packing: PackedLayout | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D); with ``packing``, x is (1, S, D) of packed images and each
        attends to its own tokens only (:mod:`foveal.nn.packing`)."""
        b, n, d = x.shape
        # (B, N, 3*D) -> (3, B, heads, N, D/heads)
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if packing is not None:
            x = packed_attention(q, k, v, packing)
        elif self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, heads, N, N)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


def set_fused_attention(model: nn.Module, enable: bool) -> int:
    """Switch every :class:`Attention` of ``model`` between SDPA and the written-out product;
    returns how many were switched."""
    count = 0
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused = enable
            count += 1
    return count


class Mlp(nn.Module):
    """Two-layer feed-forward network: fc1 -> activation -> fc2."""

    def __init__(self, dim: int, hidden_dim: int, act: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = make_act(act)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFNFused(nn.Module):
    """SwiGLU with gate and value in one matmul (``w12``), as in DINOv2's ViT-g.

    The hidden width is two thirds of the MLP width rounded up to a multiple of 8, which keeps the
    parameter count of a plain MLP with the same ``mlp_ratio`` (DINOv2 ``SwiGLUFFNFused``).
    """

    def __init__(self, dim: int, hidden_dim: int, bias: bool = True) -> None:
        super().__init__()
        hidden_dim = (int(hidden_dim * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.w3 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class LayerScale(nn.Module):
    """Per-channel residual-branch scale, initialised small so deep models start near identity."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample, rescaling the survivors."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor, packing: PackedLayout | None = None) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        if packing is not None:  # per packed image, spread over its tokens
            mask = packing.per_token(x.new_empty(packing.num_images).bernoulli_(keep)).view(1, -1, 1)
            return x * mask / keep
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(ffn(norm2(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden_dim: int,
        qkv_bias: bool = True,
        ffn_layer: str = "mlp",
        act: str = "gelu",
        init_values: float | None = None,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        if ffn_layer == "mlp":
            self.mlp: nn.Module = Mlp(dim, mlp_hidden_dim, act=act)
        elif ffn_layer in ("swiglu", "swiglufused"):
            # DINOv2 maps both names to the fused variant; so do we, to load its checkpoints.
            self.mlp = SwiGLUFFNFused(dim, mlp_hidden_dim)
        else:
            raise ValueError(f"unknown ffn_layer {ffn_layer!r}; expected one of {FFN_LAYERS}")
        self.ls2 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, packing: PackedLayout | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D); ``packing``: x holds packed images (see :class:`Attention`)."""
        if packing is None:
            x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        x = x + _drop(self.drop_path1, self.ls1(self.attn(self.norm1(x), packing)), packing)
        return x + _drop(self.drop_path2, self.ls2(self.mlp(self.norm2(x))), packing)


def _drop(drop_path: nn.Module, x: torch.Tensor, packing: PackedLayout) -> torch.Tensor:
    return drop_path(x, packing) if isinstance(drop_path, DropPath) else x
