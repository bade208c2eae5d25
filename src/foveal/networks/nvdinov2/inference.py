"""nvdinov2 inference: a feature vector for every image, and a PCA picture of patch features.

Outputs in the job's results folder:

- ``inference.csv``: TAO's layout, columns ``input_path`` and ``features`` (the CLS token
  ``x_norm_clstoken`` as a JSON list), one row per image;
- ``features.npy``: the same CLS features as an (N, D) float32 matrix, rows in the order of
  ``features_paths.txt`` (one path per line);
- ``pca.png``: for the first image of every ``inference.vis_after_n_batches``-th batch (4 at
  most), the input beside its patch features mapped to colour as in
  DINOv2's figures (Oquab et al., arXiv:2304.07193, fig. 1): a first PCA over all their patch
  tokens separates foreground from background, a second PCA over the foreground patches gives
  three components shown as RGB (background black).

Unlike TAO (one image per step, crashes with ``workers: 0``) images are batched by
``inference.batch_size`` (-1: ``dataset.batch_size``) and ``dataset.workers: 0`` loads in the
main process. Images are resized (shorter side) and centre-cropped to the square size the
backbone was trained on, ``dataset.transform.global_crops_size`` of the checkpoint (a multiple
of the patch size by validation): batching needs one size, and that is the resolution the
features were learned at.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from foveal.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ImageFolderDataset,
    build_eval_transform,
    make_loader,
)
from foveal.networks.nvdinov2.checkpoints import NETWORK, LoadedBackbone, load_backbone_file
from foveal.networks.nvdinov2.config import NVDINOv2Config
from foveal.networks.registry import ActionContext, ActionResult
from foveal.spec import SpecError, SpecIssue, required
from foveal.spec.common import run_batch_size

logger = logging.getLogger(__name__)
PCA_IMAGES = 4  # rows of pca.png
PCA_TILE = 128  # pixels per tile side in pca.png


@dataclass
class EngineLoaded:
    """A TensorRT engine of an exported backbone, standing in for `LoadedBackbone` in evaluate and
    inference (``<action>.trt_engine``); ``backbone.agreement()`` reports how far it is from the
    checkpoint when one is given beside it."""

    backbone: Any  # an EngineBackbone: forward_features, patch_size
    kind: str
    arch: str
    path: Path
    side: int

    @property
    def description(self) -> str:
        return f"TensorRT engine {self.path} ({self.kind} {self.arch} backbone)"


def input_size(loaded: LoadedBackbone | EngineLoaded) -> int:
    """Square input side for inference/evaluate: the checkpoint's global crop size, or the engine's."""
    if isinstance(loaded, EngineLoaded):
        return loaded.side
    return int(loaded.cfg.dataset.transform.global_crops_size)


def load_for(cfg: NVDINOv2Config, action: str) -> LoadedBackbone | EngineLoaded:
    """What ``evaluate`` / ``inference`` embed images with: ``<action>.checkpoint``'s backbone, or
    ``<action>.trt_engine`` (with the checkpoint too: compared on the class token)."""
    from foveal.export.trt_runtime import EngineBackbone, meta_value
    from foveal.networks.trt import open_engine

    section = getattr(cfg, action)
    engine = open_engine(section, action, NETWORK)
    loaded = None
    if section.checkpoint or engine is None:
        loaded = load_backbone_file(required(section.checkpoint, f"{action}.checkpoint"), key=f"{action}.checkpoint")
    if engine is None:
        assert loaded is not None
        return loaded
    meta = engine.metadata
    declared = engine.input_shapes.get("input") or [-1, 3, -1, -1]
    height, width = meta_value(meta, "input_size") or declared[2:]
    if int(height) != int(width) or int(height) <= 0:
        raise SpecError(
            SpecIssue(f"{action}.trt_engine", f"takes {width}x{height} images; evaluate and inference embed square ones",
                      "build the engine from an export with a square export.input_height / input_width")  # fmt: skip
        )
    patch = int(meta_value(meta, "patch_size") or (loaded.backbone.patch_size if loaded else cfg.model.backbone.patch_size))
    backbone = EngineBackbone(
        engine,
        {"cls_token": "x_norm_clstoken", "patch_tokens": "x_norm_patchtokens"},
        patch_size=patch,
        has_class_token=True,
        reference=loaded.backbone if loaded is not None else None,
    )
    kind = str(meta_value(meta, "kind") or (loaded.kind if loaded else "exported"))
    arch = str(meta_value(meta, "arch") or (loaded.arch if loaded else cfg.model.backbone.teacher_type))
    return EngineLoaded(backbone, kind, arch, engine.engine_file, int(height))


def eval_transform(loaded: LoadedBackbone | EngineLoaded) -> Any:
    """Resize the shorter side and centre-crop to :func:`input_size`, then ImageNet-normalise."""
    return build_eval_transform(input_size(loaded), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, crop_pct=1.0)


# ------------------------------------------------------------------------------ PCA picture


def _pca(x: torch.Tensor, components: int) -> torch.Tensor:
    """Projections (M, components) of the rows of ``x`` (M, D) on their top principal axes."""
    centred = x - x.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(centred.double(), full_matrices=False)
    proj = centred.double() @ v[:components].T
    # Fix each axis' sign (SVD's is arbitrary) so the picture is reproducible.
    signs = torch.sign(proj.sum(dim=0))
    return (proj * torch.where(signs == 0, 1.0, signs)).float()


def _minmax(x: torch.Tensor) -> torch.Tensor:
    low, high = x.min(dim=0).values, x.max(dim=0).values
    return (x - low) / (high - low).clamp_min(1e-8)


def pca_colours(patch_tokens: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] per patch (B, N, 3) from patch tokens (B, N, D), as DINOv2's figures.

    The first principal component over all patches splits foreground from background at the
    middle of its range; the smaller side is taken as foreground (objects rarely fill the frame;
    the sign of a component carries no meaning). Background is black.
    """
    batch, count, dim = patch_tokens.shape
    flat = patch_tokens.reshape(-1, dim).float()
    first = _minmax(_pca(flat, 1))[:, 0]
    foreground = first > 0.5
    if foreground.sum() * 2 > foreground.numel():
        foreground = ~foreground
    if int(foreground.sum()) < 3:  # too few to run a 3-component PCA: colour everything
        foreground = torch.ones_like(foreground)
    colours = torch.zeros(flat.shape[0], 3)
    fg = flat[foreground]
    rgb = _pca(fg, min(3, fg.shape[0], dim))
    colours[foreground, : rgb.shape[1]] = _minmax(rgb)
    return colours.reshape(batch, count, 3)


def pca_picks(num_images: int, batch: int, every: int) -> list[int]:
    """Rows of pca.png (TAO's ``vis_after_n_batches``): the first image of every ``every``-th
    batch, then the next images of those batches while fewer than ``PCA_IMAGES`` are drawn."""
    starts = list(range(0, num_images, batch * every))
    picks = starts[:PCA_IMAGES]
    for start in starts:
        for i in range(start + 1, min(start + batch, num_images)):
            if len(picks) >= PCA_IMAGES:
                return sorted(picks)
            picks.append(i)
    return sorted(picks)


def save_pca_figure(loaded: LoadedBackbone | EngineLoaded, images: torch.Tensor, out: Path) -> Path:
    """Write ``out``: each row an input image (B, 3, H, W, normalised) beside its PCA colours."""
    with torch.inference_mode():
        tokens = loaded.backbone.forward_features(images)["x_norm_patchtokens"]
    patch = loaded.backbone.patch_size
    grid_h, grid_w = images.shape[-2] // patch, images.shape[-1] // patch
    colours = pca_colours(tokens).reshape(len(images), grid_h, grid_w, 3)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    canvas = Image.new("RGB", (2 * PCA_TILE, PCA_TILE * len(images)))
    for row, (image, colour) in enumerate(zip(images, colours, strict=True)):
        pixels = ((image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        left = Image.fromarray(pixels).resize((PCA_TILE, PCA_TILE), Image.Resampling.BILINEAR)
        right = Image.fromarray((colour.numpy() * 255).astype(np.uint8))
        right = right.resize((PCA_TILE, PCA_TILE), Image.Resampling.NEAREST)  # one block per patch
        canvas.paste(left, (0, row * PCA_TILE))
        canvas.paste(right, (PCA_TILE, row * PCA_TILE))
    canvas.save(out)
    return out


# ------------------------------------------------------------------------------ action


def _write_features(loaded: LoadedBackbone | EngineLoaded, loader: DataLoader, results_dir: Path) -> tuple[int, int, dict]:
    """Stream batches into inference.csv; returns (rows, feature dim, artifacts)."""
    csv_path = results_dir / "inference.csv"
    features: list[np.ndarray] = []
    paths: list[str] = []
    with csv_path.open("w", newline="") as handle, torch.inference_mode():
        writer = csv.writer(handle)
        writer.writerow(["input_path", "features"])
        for images, batch_paths in loader:
            cls = loaded.backbone.forward_features(images)["x_norm_clstoken"].float().cpu().numpy()
            for path, row in zip(batch_paths, cls, strict=True):
                writer.writerow([path, json.dumps(row.tolist())])
            features.append(cls)
            paths.extend(batch_paths)
    matrix = np.concatenate(features).astype(np.float32)
    npy_path, list_path = results_dir / "features.npy", results_dir / "features_paths.txt"
    np.save(npy_path, matrix)
    list_path.write_text("".join(f"{p}\n" for p in paths))
    artifacts = {"inference_csv": str(csv_path), "features": str(npy_path), "features_paths": str(list_path)}
    return matrix.shape[0], matrix.shape[1], artifacts


def inference(cfg: NVDINOv2Config, ctx: ActionContext) -> ActionResult:
    """Embed every image of ``dataset.test_dataset.images_dir`` (recursive) with the backbone, or
    the TensorRT engine of ``inference.trt_engine`` (with a checkpoint too: ``tensorrt_vs_pytorch.json``)."""
    from foveal.data import resolve_dataset
    from foveal.networks.trt import agreement_artifacts, agreement_kpis

    loaded = load_for(cfg, "inference")
    root = resolve_dataset(
        required(cfg.dataset.test_dataset.images_dir, "dataset.test_dataset.images_dir"), ctx.cache_dir
    )
    dataset = ImageFolderDataset(root, transform=eval_transform(loaded), recursive=True, return_path=True)
    batch = run_batch_size(cfg.inference, cfg.dataset.batch_size)
    logger.info(
        "inference: %d images from %s at %d px, batch %d, %d workers",
        len(dataset),
        root,
        input_size(loaded),
        batch,
        cfg.dataset.workers,
    )
    loader = make_loader(dataset, batch, cfg.dataset.workers, train=False, persistent=False)
    rows, dim, artifacts = _write_features(loaded, loader, ctx.results_dir)
    sample = torch.stack([dataset[i][0] for i in pca_picks(len(dataset), batch, cfg.inference.vis_after_n_batches)])
    artifacts["pca"] = str(save_pca_figure(loaded, sample, ctx.results_dir / "pca.png"))
    trt = loaded.backbone.agreement() if isinstance(loaded, EngineLoaded) else None
    artifacts.update(agreement_artifacts(trt, ctx.results_dir))
    return ActionResult(
        kpis={"num_images": float(rows), "feature_dim": float(dim), **agreement_kpis(trt)},
        artifacts=artifacts,
        message=f"{rows} images -> inference.csv, features.npy ({rows} x {dim} CLS features), pca.png "
        f"({loaded.kind} {loaded.arch} backbone)",
    )
