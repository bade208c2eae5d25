"""Adapt foreign ViT checkpoints (foveal, MAE, DINOv2, timm, Hugging Face) to a ``VisionTransformer``.

The backbone is located by its patch-embedding weight, whatever wraps it (``module.``,
``backbone.``, ``model.``, ``encoder.``, ``teacher.backbone.``, ...); position tables are resampled
to the model's grid as in DINOv2 (Oquab et al., arXiv:2304.07193) and MAE fine-tuning (He et al.,
arXiv:2111.06377).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from foveal.nn.convert_hf import convert_hf_state_dict
from foveal.nn.pos_embed import grid_from_num_patches, resample_patch_pos_embed
from foveal.nn.state_dict import report_unloaded, unwrap_state_dict
from foveal.nn.vit import VisionTransformer

logger = logging.getLogger(__name__)

COMMON_PREFIXES = ("module.", "backbone.", "model.", "encoder.", "student.backbone.", "teacher.backbone.")
# Training checkpoints nest the weights; the first of these keys that holds a dict is used.
_WRAPPER_KEYS = ("state_dict", "model", "teacher", "module", "network")
_ANCHORS = {"patch_embed.proj.weight": "foveal", "embeddings.patch_embeddings.projection.weight": "hf"}
# DINOv2 with block_chunks > 0 stores blocks.<chunk>.<index>.
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
# timm's packed SwiGLU (GluMlp, TAO's NVDINOv2): fc1 = [gate; value] (D -> 2H), fc2 (H -> D); the same
# tensors as DINOv2's w12 / w3. Renamed only for models whose blocks hold w12, so plain MLPs keep fc1/fc2.
_TIMM_SWIGLU = re.compile(r"^(blocks\.\d+\.mlp\.)fc([12])\.")


def _unwrap(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    return unwrap_state_dict(checkpoint, _WRAPPER_KEYS)


def _find_backbone_prefix(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """(prefix, layout) of the backbone; the EMA teacher wins over the student, then the shortest."""
    candidates = []
    for key in state_dict:
        for anchor, layout in _ANCHORS.items():
            if key.endswith(anchor) and (len(key) == len(anchor) or key[-len(anchor) - 1] == "."):
                candidates.append((key[: -len(anchor)], layout))
    if not candidates:
        raise ValueError("no ViT patch embedding (patch_embed.proj.weight) found in the checkpoint")
    candidates.sort(key=lambda c: ("teacher" not in c[0], len(c[0])))
    if len(candidates) > 1:
        logger.info("checkpoint holds %d backbones; using prefix %r", len(candidates), candidates[0][0])
    return candidates[0]


def _resize_pos_embed(pos: torch.Tensor, model: VisionTransformer) -> torch.Tensor:
    """Resample a (1, [1 +] N0, D) table to the model's (1, 1 + N, D) grid."""
    target = model.pos_embed.shape
    if pos.shape == target:
        return pos
    pos = pos.reshape(1, -1, pos.shape[-1])
    count = pos.shape[1]
    if math.isqrt(count - 1) ** 2 == count - 1:
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
    else:  # tables without a class entry (timm no_embed_class)
        cls_pos, patch_pos = torch.zeros_like(pos[:, :1]), pos
    old_grid = grid_from_num_patches(patch_pos.shape[1])
    if old_grid != model.patch_grid:
        logger.info("resampling pos_embed from grid %s to %s", old_grid, model.patch_grid)
        # A model whose reference resizes its table differently (TAO's DINOv2) brings its own resize.
        resample = getattr(model, "resample_pos_embed", None)
        if resample is not None:
            patch_pos = resample(patch_pos, old_grid, model.patch_grid)
        else:
            patch_pos = resample_patch_pos_embed(
                patch_pos, old_grid, model.patch_grid, model.interpolate_antialias
            )
    return torch.cat([cls_pos, patch_pos], dim=1)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Turn a foreign checkpoint into a state dict that ``model.load_state_dict`` accepts.

    Steps: unwrap training checkpoints (``{"model": ...}``, ``{"state_dict": ...}``); find the
    backbone under any prefix (teacher preferred); convert HF layouts; un-chunk DINOv2 blocks;
    rename timm's packed SwiGLU (``mlp.fc1``/``mlp.fc2``, TAO's NVDINOv2) to ``mlp.w12``/``mlp.w3``;
    reshape a (1, 1, D) mask token; resample ``pos_embed`` to the model's grid (with the model's own
    ``resample_pos_embed`` if it has one); drop what the model lacks or cannot take (decoders,
    heads of another size), logging it.

    Args:
        state_dict: a state dict or a training checkpoint containing one.
        model: the target backbone (only its shapes and grid are read).

    Returns:
        Filtered state dict; load it with ``strict=False`` if the checkpoint may miss keys
        (e.g. ``mask_token`` of an MAE encoder) and check ``missing_keys``.
    """
    state = _unwrap(state_dict)
    prefix, layout = _find_backbone_prefix(state)
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if layout == "hf":
        state = convert_hf_state_dict(state, "dinov2" if "embeddings.mask_token" in state else "vit")
    state = {_CHUNKED_BLOCK.sub(r"blocks.\1.", k): v for k, v in state.items()}

    expected = model.state_dict()
    if "blocks.0.mlp.w12.weight" in expected:
        state = {_TIMM_SWIGLU.sub(_swiglu_name, k): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    absent, mismatched = [], []
    for key, value in state.items():
        if key == "mask_token" and value.ndim == 3:
            value = value.reshape(1, -1)
        if key == "pos_embed":
            value = _resize_pos_embed(value, model)
        if key not in expected:
            absent.append(key)  # e.g. heads, decoders, a norm the model replaced: expected
        elif value.shape != expected[key].shape:
            mismatched.append(key)
        else:
            out[key] = value
    report_unloaded(absent, mismatched)
    return out


def _swiglu_name(match: re.Match[str]) -> str:
    return match.group(1) + ("w12." if match.group(2) == "1" else "w3.")


__all__ = ["checkpoint_filter_fn", "report_unloaded"]
