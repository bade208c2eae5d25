"""Reconstruction grid of a pretraining model: one row per image, original | masked | reconstruction.

As in MAE's demo notebook: with ``norm_pix_loss`` the model predicts per-patch-normalised
pixels, which are mapped back with each target patch's own mean and std; the reconstruction shows
the prediction on masked patches and the original pixels on visible ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

GAP = 4  # pixels between panels
MASKED_GREY = 0.5


@torch.inference_mode()
def reconstruct(model: Any, images: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked pixel mask (B, 1, H, W) in {0, 1}, reconstruction (B, C, H, W)), normalised space."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _, out = model(images)
    pred, mask = out["pred"].float(), out["mask"].float()
    grid = (images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size)
    if model.norm_pix_loss:
        target = model.patchify(images.float())
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
        pred = pred * std + mean
    recon = model.unpatchify(pred, grid)
    patch_area = model.patch_size**2 * images.shape[1]
    pixel_mask = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, patch_area), grid)[:, :1]
    return pixel_mask, images * (1 - pixel_mask) + recon * pixel_mask


def _to_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(C, H, W) normalised -> (H, W, 3) uint8."""
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    pixels = (x.float() * s + m).clamp(0, 1)
    return (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_reconstruction_grid(
    model: nn.Module,
    images: torch.Tensor,
    path: str | Path,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
) -> Path:
    """Write the grid PNG for ``images`` (B, C, H, W), normalised with ``mean``/``std``."""
    pixel_mask, recon = reconstruct(model, images, seed)
    grey = torch.tensor([(MASKED_GREY - m) / s for m, s in zip(mean, std, strict=True)]).view(1, -1, 1, 1)
    masked = images * (1 - pixel_mask) + grey * pixel_mask
    b, _, h, w = images.shape
    header = 14
    canvas = Image.new("RGB", (3 * w + 2 * GAP, header + b * h + (b - 1) * GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(("original", "masked", "reconstruction")):
        draw.text((col * (w + GAP) + 1, 1), title[: max(1, w // 6)], fill="black")
    for row in range(b):
        for col, panel in enumerate((images[row], masked[row], recon[row])):
            tile = Image.fromarray(_to_uint8(panel, mean, std))
            canvas.paste(tile, (col * (w + GAP), header + row * (h + GAP)))
    path = Path(path)
    canvas.save(path)
    return path
