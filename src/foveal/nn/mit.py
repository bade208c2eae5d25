"""Mix Transformer (MiT), the hierarchical encoder of SegFormer.

Architecture: Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers" (NeurIPS 2021, arXiv:2105.15203). Four stages at strides 4, 8, 16, 32; each starts
with an overlapping patch embedding (a padded strided conv: 7x7/4, then 3x3/2) and stacks pre-norm
blocks of

* efficient self-attention: keys and values come from the (B, N, C) tokens reduced by a
  ``sr x sr`` stride-``sr`` conv and a LayerNorm (sr = 8, 4, 2, 1 per stage), cutting the cost
  from N^2 to N^2 / sr^2;
* Mix-FFN: fc1 (C -> 4C), a 3x3 depthwise conv over the (H, W) map, GELU, fc2 (4C -> C); the
  conv's zero padding leaks position, so there is no positional embedding and any input size
  works (each stage rounds its size up: ceil(H/4), then ceil(./2)).

A LayerNorm closes every stage. Key names are those of NVlabs/SegFormer ``mix_transformer.py``
and TAO's ``cv/backbone_v2/mit.py`` (``patch_embed1..4``, ``block1..4``, ``norm1..4``, ``head``),
so the official ImageNet ``mit_b*.pth`` files and TAO checkpoints load. LayerNorm eps is 1e-6 in
blocks and stage norms, PyTorch's 1e-5 in the patch embeddings and the reduction norm, as there.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from foveal.nn.layers import DropPath
from foveal.nn.registry import register_backbone
from foveal.nn.state_dict import match_state_dict

logger = logging.getLogger(__name__)

# name -> (embed_dims, depths), from the paper's Table 6 / the reference model zoo.
MIT_SIZES: dict[str, tuple[tuple[int, int, int, int], tuple[int, int, int, int]]] = {
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}


class OverlapPatchEmbed(nn.Module):
    """Padded strided conv then LayerNorm: (B, C_in, H, W) -> (B, h*w, D), h = ceil(H / stride)."""

    def __init__(self, patch_size: int, stride: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)  # eps 1e-5, as in the reference

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from tokens spatially reduced by ``sr_ratio``.

    Reference names: ``q``, ``kv`` (fused K and V), ``sr`` (reduction conv), ``norm``, ``proj``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr: nn.Conv2d | None = None
        self.norm: nn.LayerNorm | None = None
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)  # eps 1e-5, as in the reference

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, N, C) tokens of an (height, width) map -> (B, N, C)."""
        batch, count, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x).reshape(batch, count, self.num_heads, head_dim).transpose(1, 2)
        source = x
        if self.sr is not None and self.norm is not None:
            reduced = self.sr(x.transpose(1, 2).reshape(batch, dim, height, width))
            source = self.norm(reduced.flatten(2).transpose(1, 2))  # (B, N / sr^2, C)
        kv = self.kv(source).reshape(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        # Scale head_dim ** -0.5, as the reference.
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, count, dim)))


class DWConv(nn.Module):
    """3x3 depthwise conv on (B, N, C) tokens seen as a (B, C, H, W) map (reference name ``dwconv``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, dim = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(batch, dim, height, width))
        return x.flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """fc1 -> depthwise 3x3 conv -> GELU -> fc2, on (B, N, C)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x), height, width)))
        return self.drop(self.fc2(x))


class Block(nn.Module):
    """x + drop_path(attn(norm1(x))), then x + drop_path(mlp(norm2(x))); no LayerScale."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class MixTransformer(nn.Module):
    """MiT encoder with the foveal backbone interface.

    ``forward_features`` returns ``x_norm_patchtokens`` (B, h*w, C): the stage-4 tokens after
    ``norm4`` (h = ceil(H/32)), and ``x_norm_clstoken`` (B, C): their mean (TAO's pre-logits).

    Args:
        img_size: nominal input size (kept for the interface; any size works).
        in_chans: input channels.
        num_classes: size of the linear ``head``; 0 means none (``forward`` returns the pooled feature).
        embed_dims: channels per stage.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        mlp_ratios: Mix-FFN expansion per stage.
        sr_ratios: spatial reduction of keys/values per stage.
        qkv_bias: bias in ``q`` and ``kv``.
        drop_rate: dropout after the attention projection and in the Mix-FFN.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth of the last block, growing linearly from 0 over all blocks.
        norm_eps: eps of the block and stage LayerNorms (1e-6).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 0,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 4, 6, 3),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        settings = (embed_dims, depths, num_heads, mlp_ratios, sr_ratios)
        if any(len(s) != 4 for s in settings):
            raise ValueError("embed_dims, depths, num_heads, mlp_ratios and sr_ratios need 4 entries each")
        self.embed_dims, self.depths = tuple(embed_dims), tuple(depths)
        self.img_size = img_size
        self.embed_dim = self.num_features = self.embed_dims[-1]
        self.grad_checkpointing = False

        total = sum(self.depths)
        # torch.linspace(0, drop_path_rate, total), as the reference
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        start = 0
        for s in range(4):
            source = in_chans if s == 0 else self.embed_dims[s - 1]
            patch, stride = (7, 4) if s == 0 else (3, 2)
            self.add_module(
                f"patch_embed{s + 1}", OverlapPatchEmbed(patch, stride, source, self.embed_dims[s])
            )
            blocks = [
                Block(
                    self.embed_dims[s],
                    num_heads[s],
                    mlp_ratios[s],
                    sr_ratios[s],
                    qkv_bias=qkv_bias,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rates[start + j],
                    norm_eps=norm_eps,
                )
                for j in range(self.depths[s])
            ]
            self.add_module(f"block{s + 1}", nn.ModuleList(blocks))
            self.add_module(f"norm{s + 1}", nn.LayerNorm(self.embed_dims[s], eps=norm_eps))
            start += self.depths[s]
        self.head: nn.Module = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @property
    def n_blocks(self) -> int:
        return sum(self.depths)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The reference's: Linear truncated normal (std 0.02), bias 0; LayerNorm 1, 0; Conv2d normal
        with std sqrt(2 / fan_out), fan_out = k * k * C_out / groups, bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ----------------------------------------------------------------------------- forward

    def _stage(self, s: int, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Stage s (0-based): (B, C_in, H, W) -> normed (B, h*w, C_s) tokens and (h, w)."""
        tokens, height, width = getattr(self, f"patch_embed{s + 1}")(x)
        for block in getattr(self, f"block{s + 1}"):
            if self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, height, width, use_reentrant=False)
            else:
                tokens = block(tokens, height, width)
        return getattr(self, f"norm{s + 1}")(tokens), height, width

    def forward_feature_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four normed stage maps (B, C_s, H/s, W/s) at strides s = 4, 8, 16, 32 (SegFormer's input)."""
        maps = []
        for s in range(4):
            tokens, height, width = self._stage(s, x)
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)
            maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Encode images.

        Args:
            x: (B, C_in, H, W), any size.
            masks: not supported (must be None).

        Returns:
            ``x_norm_clstoken`` (B, C): mean of the stage-4 tokens after ``norm4``;
            ``x_norm_patchtokens`` (B, h*w, C): those tokens, h = ceil(H/32).
        """
        if masks is not None:
            raise ValueError("MixTransformer does not support masks")
        tokens = self.forward_feature_pyramid(x)[-1].flatten(2).transpose(1, 2)
        return {"x_norm_clstoken": tokens.mean(dim=1), "x_norm_patchtokens": tokens}

    def forward_head(self, features: dict[str, torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        """The pooled feature (B, C), through ``head`` unless ``pre_logits``."""
        pooled = features["x_norm_clstoken"]
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, num_classes) logits, or the pooled (B, C) feature without a head."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``head`` (truncated normal std 0.02, bias 0); ``num_classes=0`` removes it."""
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    # ----------------------------------------------------------------------------- training

    def no_weight_decay(self) -> set[str]:
        """Empty: MiT has no position tables or tokens (the reference's list names none that exist)."""
        return set()

    def layer_id_for_param(self, name: str) -> int:
        """Layer index for layer-wise LR decay.

        0 for ``patch_embed1``; ``k + 1`` for the k-th block over all stages; ``patch_embed2..4``
        (the downsamplers) share the id of their stage's first block and ``norm1..3`` that of
        their stage's last block; ``n_blocks + 1`` for ``norm4``, ``head`` and anything else. A
        wrapper prefix such as ``backbone.`` is allowed.
        """
        match = re.search(r"(?:^|\.)block([1-4])\.(\d+)\.", name)
        if match:
            stage, block = int(match.group(1)) - 1, int(match.group(2))
            return sum(self.depths[:stage]) + block + 1
        match = re.search(r"(?:^|\.)patch_embed([1-4])\.", name)
        if match:
            stage = int(match.group(1)) - 1
            return 0 if stage == 0 else sum(self.depths[:stage]) + 1
        match = re.search(r"(?:^|\.)norm([1-3])\.", name)
        if match:
            return sum(self.depths[: int(match.group(1))])
        return self.n_blocks + 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward (non-reentrant checkpoint).

        TAO raises NotImplementedError here; the recomputation is exact, so we allow it.
        """
        self.grad_checkpointing = enable


# --------------------------------------------------------------------------------- checkpoints


def mit_checkpoint_filter_fn(state_dict: Mapping[str, Any], model: MixTransformer) -> dict[str, torch.Tensor]:
    """A TAO, NVlabs/SegFormer or mmseg MiT checkpoint as ``model``'s state dict.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}``, strips the TAO prefixes ``model.``,
    ``model.backbone.``, ``backbone.`` (and DDP's ``module.``), drops ``head.*`` when the model
    has no head or one of another size, drops what the model lacks (decode heads) and keeps only
    keys whose name and shape match.

    Args:
        state_dict: a state dict or a training checkpoint holding one.
        model: the target (only its state dict's names and shapes are read).

    Returns:
        The filtered state dict.
    """
    return match_state_dict(state_dict, model.state_dict(), head_prefixes=("head.",))


# --------------------------------------------------------------------------------- registry


def _register(size: str) -> None:
    embed_dims, depths = MIT_SIZES[size]

    def build(**overrides: Any) -> MixTransformer:
        return MixTransformer(**{"embed_dims": embed_dims, "depths": depths, **overrides})

    build.__doc__ = f"MiT-{size.upper()}: embed_dims {embed_dims}, depths {depths}, drop_path_rate 0.1."
    register_backbone(f"mit_{size}")(build)


for _size in MIT_SIZES:
    _register(_size)
