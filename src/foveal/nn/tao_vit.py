"""TAO's DINOv2-style ViTs (NVDINOv2) under TAO's backbone names, on Foveal's ``VisionTransformer``.

Architecture: DINOv2 (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision",
arXiv:2304.07193) with the fused SwiGLU feed-forward (Shazeer, arXiv:2002.05202), LayerScale and, for
the giant, register tokens (Darcet et al., "Vision Transformers Need Registers", arXiv:2309.16588).
TAO (tao_pytorch_backend ``cv/backbone_v2/dino_v2.py``) builds them on timm 1.0.14's ViT; unlike
Meta's ``dinov2_vitl14`` (GELU MLP), TAO's ViT-L uses SwiGLU too.

What differs from TAO, and why it does not change the outputs:

* Key names: TAO's packed SwiGLU is ``mlp.fc1`` (D -> 2H, gate first) / ``mlp.fc2`` (H -> D); Foveal's
  is ``mlp.w12`` / ``mlp.w3`` with the same row order and ``SiLU(first half) * second half``.
  ``checkpoint_filter_fn`` renames them (as it strips ``model.`` / ``model.backbone.`` /
  ``backbone.``), so a TAO state dict loads exactly. Foveal's ``mask_token`` (masked-image modelling)
  has no TAO counterpart: load with ``strict=False`` and expect it in ``missing_keys``.
* Token order: TAO appends the registers after the patches, ``[cls, patches (N), registers (R)]``;
  Foveal puts them after cls, ``[cls, registers, patches]``. Registers carry no position embedding,
  LayerNorm and the MLP act per token, and attention without masks or positional biases is
  permutation-equivariant (softmax(QK^T)V with rows and columns permuted alike), so every token's
  output is the same whatever the order: the cls token (TAO's pooled feature) is identical.
* Position-table resampling: TAO's ``_interpolate_pos_encoding`` resizes the 37x37 table with
  ``F.interpolate(scale_factor=(g + 0.1) / 37, mode="bicubic")`` (DINO's offset trick), which samples
  at other points than Foveal's default size-based resize (``foveal.nn.pos_embed``): at 224 px
  (37 -> 16) a random table differs by up to ~1.6. :class:`TaoDinoV2` therefore resamples the
  TAO way (``interpolate_offset=0.1``; ``None`` gives Foveal's default back).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from foveal.nn.checkpoint_filter import checkpoint_filter_fn
from foveal.nn.pos_embed import resample_patch_pos_embed
from foveal.nn.registry import register_backbone
from foveal.nn.vit import VisionTransformer

logger = logging.getLogger(__name__)

# name -> (embed_dim, depth, num_heads, img_size the table is built for, registers).
# TAO's SwiGLU hidden width H (fc1 D -> 2H, fc2 H -> D) is 2736 for D=1024 and 4096 for D=1536, which is
# DINOv2's rule ((int(4D * 2/3) + 7) // 8) * 8 that Foveal's SwiGLUFFNFused applies to mlp_ratio=4.
TAO_DINOV2_CONFIGS: dict[str, tuple[int, int, int, int, int]] = {
    "vit_large_patch14_dinov2_swiglu": (1024, 24, 16, 518, 0),
    # timm's default img_size 224: a 16x16 table (257 positions).
    "vit_large_patch14_dinov2_swiglu_legacy": (1024, 24, 16, 224, 0),
    "vit_giant_patch14_reg4_dinov2_swiglu": (1536, 40, 24, 518, 4),
}


def resample_pos_embed_scale_factor(
    patch_pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], offset: float = 0.1
) -> torch.Tensor:
    """Resize a patch position table as TAO and DINOv2 do: bicubic with ``scale_factor=(g + offset) / g0``.

    PyTorch maps output pixel ``i`` to input ``(i + 0.5) / scale - 0.5`` with the given scale, so the
    sample points differ from a size-based resize (scale ``g / g0``); the offset only makes
    ``floor(g0 * scale)`` come out as ``g``. Used by TAO's DINOv2 and SigLIP-CLIPA forwards.

    Args:
        patch_pos: (1, H0*W0, D) row-major table, or (H0*W0, D).
        old_grid: (H0, W0).
        new_grid: (H1, W1).
        offset: DINO's 0.1 (github.com/facebookresearch/dino/issues/8).

    Returns:
        The table on the new grid, (1, H1*W1, D) or (H1*W1, D) like the input, in its dtype.
    """
    dim = patch_pos.shape[-1]
    grid = patch_pos.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    scale = ((new_grid[0] + offset) / old_grid[0], (new_grid[1] + offset) / old_grid[1])
    # float32 as in foveal.nn.pos_embed: TAO's tables are float32 parameters, so this is a no-op there.
    grid = F.interpolate(grid.float(), scale_factor=scale, mode="bicubic", align_corners=False)
    if tuple(grid.shape[-2:]) != tuple(new_grid):
        raise ValueError(f"resampling {old_grid} by {scale} gave {tuple(grid.shape[-2:])}, not {new_grid}")
    out = grid.to(patch_pos.dtype).permute(0, 2, 3, 1).reshape(-1, dim)
    return out.unsqueeze(0) if patch_pos.ndim == 3 else out


class TaoDinoV2(VisionTransformer):
    """Foveal's ViT resampling its position table as TAO's DINOv2 does (see the module docstring).

    Args:
        interpolate_offset: the ``(g + offset) / g0`` scale-factor resize of TAO/DINOv2 for grids other
            than the built one; ``None`` uses :class:`VisionTransformer`'s size-based resize.
        **kwargs: :class:`VisionTransformer` arguments.
    """

    def __init__(self, *, interpolate_offset: float | None = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.interpolate_offset = interpolate_offset

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's ViT init (trunc-normal Linear, cls 1e-6) with TAO's extras.

        timm leaves the patch convolution at PyTorch's default and TAO draws the registers from N(0, 1).
        """
        super().init_weights()
        self.patch_embed.proj.reset_parameters()
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1.0)

    def resample_pos_embed(
        self, patch_pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
    ) -> torch.Tensor:
        """Resize a (1, H0*W0, D) patch table to ``new_grid`` the way this model's forward does."""
        if self.interpolate_offset is None:
            return resample_patch_pos_embed(patch_pos, old_grid, new_grid, self.interpolate_antialias)
        return resample_pos_embed_scale_factor(patch_pos, old_grid, new_grid, self.interpolate_offset)

    def patch_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings of a (grid_h, grid_w) patch grid, (1, N, D), resampled as TAO does.

        The built grid uses the table as is (TAO: ``npatch == N and w == h``). Under ONNX tracing the
        grid is read as Python ints, so the exported graph is fixed to the traced input size.
        """
        if self.interpolate_offset is None:
            return super().patch_pos_embed(grid_h, grid_w)
        grid = (int(grid_h), int(grid_w))
        patch_pos = self.pos_embed[:, 1:]
        if grid == self.patch_grid:
            return patch_pos
        return resample_pos_embed_scale_factor(patch_pos, self.patch_grid, grid, self.interpolate_offset)


def tao_dinov2_checkpoint_filter_fn(
    state_dict: Mapping[str, Any], model: VisionTransformer
) -> dict[str, torch.Tensor]:
    """Load TAO DINOv2 weights: ``NV_DINOV2_518.ckpt`` (flat, timm names) or a TAO classification checkpoint.

    Delegates to :func:`foveal.nn.checkpoint_filter.checkpoint_filter_fn`, which strips ``model.``
    (TAO 6.25), ``model.backbone.`` (6.0) or ``backbone.`` (5.x), renames timm's packed SwiGLU
    ``mlp.fc1``/``mlp.fc2`` to ``mlp.w12``/``mlp.w3``, resamples ``pos_embed`` with the model's own
    resize (TAO's scale-factor one for :class:`TaoDinoV2`) and drops ``head.*`` when shapes differ or
    the model has no head.

    Args:
        state_dict: a state dict or a checkpoint holding one under ``state_dict``/``model``.
        model: the target backbone.

    Returns:
        Keys and tensors ``model.load_state_dict(..., strict=False)`` takes; ``mask_token`` is missing.
    """
    return checkpoint_filter_fn(state_dict, model)


def _register(name: str, embed_dim: int, depth: int, num_heads: int, img_size: int, registers: int) -> None:
    defaults: dict[str, Any] = {
        "img_size": img_size,
        "patch_size": 14,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": 4.0,
        "ffn_layer": "swiglufused",
        "init_values": 1e-5,
        "norm_eps": 1e-6,
        "qkv_bias": True,
        "num_register_tokens": registers,
        "global_pool": "token",
    }

    def build(**overrides: Any) -> TaoDinoV2:
        return TaoDinoV2(**{**defaults, **overrides})

    build.__doc__ = f"TAO's {name}: ViT /14, D={embed_dim}, {depth} blocks, SwiGLU, built at {img_size} px."
    register_backbone(name)(build)


for _name, _config in TAO_DINOV2_CONFIGS.items():
    _register(_name, *_config)
