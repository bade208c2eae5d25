"""Absolute position embeddings for ViT patch grids: resampling and the fixed MAE sin-cos table.

Resampling follows DINOv2 (Oquab et al., arXiv:2304.07193) and the Hugging Face ports: the patch
part of a learned table is treated as a (D, H, W) image and resized bicubically, the class-token
entry is kept as is. The sin-cos table is the one of MAE (He et al., "Masked Autoencoders Are
Scalable Vision Learners", CVPR 2022, arXiv:2111.06377).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resample_patch_pos_embed(
    patch_pos: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    antialias: bool = False,
) -> torch.Tensor:
    """Resize the patch part of a position table to another grid.

    Args:
        patch_pos: (1, H0*W0, D) embeddings in row-major grid order.
        old_grid: (H0, W0).
        new_grid: (H1, W1).
        antialias: use PyTorch's anti-aliased bicubic kernel (what HF ``Dinov2WithRegisters``
            does); off by default because it is what DINOv2/ViT/MAE use and it exports to ONNX.

    Returns:
        (1, H1*W1, D) in the dtype of ``patch_pos``.
    """
    dim = patch_pos.shape[-1]
    grid = patch_pos.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    # Bicubic in half precision visibly shifts the table, so resample in float32.
    grid = F.interpolate(
        grid.float(), size=new_grid, mode="bicubic", align_corners=False, antialias=antialias
    ).to(patch_pos.dtype)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, dim)


def grid_from_num_patches(num_patches: int) -> tuple[int, int]:
    """Square grid holding ``num_patches``; checkpoints store no grid shape, so assume square."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"cannot infer a square patch grid from {num_patches} position embeddings")
    return side, side


def build_2d_sincos_pos_embed(
    grid_h: int, grid_w: int, dim: int, cls_token: bool = True, temperature: float = 10000.0
) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table.

    The first half of the channels encodes the column (w) index and the second half the row (h)
    index, each as ``[sin | cos]``: MAE's ``np.meshgrid(grid_w, grid_h)`` puts w first, and its
    released weights (and HF ``ViTMAEModel``) rely on that order.

    Returns:
        (1, [1 +] grid_h*grid_w, dim) float32; the class-token row is zeros.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )
    out_w = cols.flatten()[:, None] * omega[None]
    out_h = rows.flatten()[:, None] * omega[None]
    table = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table], dim=0)
    return table.float().unsqueeze(0)
