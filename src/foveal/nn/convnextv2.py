"""ConvNeXt V2 backbone with FCMAE's masked dense convolution.

Architecture: Woo et al., "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked
Autoencoders" (CVPR 2023, arXiv:2301.00808), built on ConvNeXt (Liu et al., "A ConvNet for the
2020s", CVPR 2022, arXiv:2201.03545): a 4x4 stride-4 stem, four stages joined by 2x2 stride-2
downsampling, and blocks of depthwise 7x7 conv -> LayerNorm -> 4x pointwise MLP with GELU and
Global Response Normalization (GRN) -> residual with stochastic depth.

Masked dense convolution. FCMAE pre-training runs the encoder as a sparse (submanifold)
ConvNet over the visible patches only. We emulate that with dense ops, no sparse-conv library:
``masks`` (B, h*w) on the stride-32 grid is upsampled to every stage, and masked positions are
zeroed after the stem and before every block's depthwise conv, and left out of GRN's spatial
norm. Every other op is per position, or (stem, downsampling) has a receptive field inside one
stride-32 patch, so values at masked positions are never read: on visible positions the result
equals a sparse conv over the visible set. GRN is taken per sample over visible positions; the
reference sparse GRN pools over the whole batch, a known mismatch with its own dense model
(facebookresearch/ConvNeXt-V2 issue #86).

Parameter names follow the reference per block (``dwconv``, ``norm``, ``pwconv1``, ``grn``,
``pwconv2``); ``convnextv2_checkpoint_filter_fn`` converts the reference's dense and sparse
(FCMAE) checkpoints.
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

# name -> (depths, dims), from the paper's Table and the reference model zoo.
CONVNEXTV2_SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (the stem's and downsamplers' norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Permuting is free for channels_last tensors and exports as one LayerNormalization.
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalization on (B, H, W, C): x + gamma * (x * N(x)) + beta.

    N(x) is each channel's L2 norm over space divided by its mean over channels. gamma and beta
    start at zero, so a new GRN is the identity.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, H, W, C); keep (B, H, W, 1) with 0 at masked positions, which the norm ignores."""
        visible = x if keep is None else x * keep
        # Sum of squares over H*W overflows fp16; accumulate in fp32.
        norm = torch.linalg.vector_norm(visible, ord=2, dim=(1, 2), keepdim=True, dtype=torch.float32)
        scale = (norm / (norm.mean(dim=-1, keepdim=True) + self.eps)).to(x.dtype)
        return x + self.gamma * (x * scale) + self.beta


class Block(nn.Module):
    """ConvNeXt V2 block on (B, C, H, W): x + drop_path(pwconv2(GRN(GELU(pwconv1(LN(dwconv(x))))))).

    Used by the backbone and, unmasked, by the FCMAE decoder.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W); keep (B, 1, H, W) float, 0 at masked positions (FCMAE) or None."""
        shortcut = x
        if keep is not None:
            x = x * keep  # masked dense conv: the 7x7 window reads zeros at masked positions
        x = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        x = self.act(self.pwconv1(self.norm(x)))
        x = self.grn(x, None if keep is None else keep.permute(0, 2, 3, 1))
        x = self.pwconv2(x).permute(0, 3, 1, 2)
        return shortcut + self.drop_path(x)


class Stage(nn.Module):
    """Optional 2x downsampling (LayerNorm2d + 2x2 stride-2 conv), then ``len(blocks)`` blocks."""

    def __init__(
        self, in_dim: int, dim: int, depth: int, drop_paths: Sequence[float], downsample: bool, eps: float
    ) -> None:
        super().__init__()
        self.downsample: nn.Module = (
            nn.Sequential(LayerNorm2d(in_dim, eps=eps), nn.Conv2d(in_dim, dim, kernel_size=2, stride=2))
            if downsample
            else nn.Identity()
        )
        self.blocks = nn.ModuleList(Block(dim, drop_paths[i], eps) for i in range(depth))


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


class ConvNeXtV2(nn.Module):
    """ConvNeXt V2 with the foveal backbone interface and FCMAE masking.

    There is no class token: ``x_norm_clstoken`` is the global average pooled, normalised
    feature (the reference's classifier input), so code written for ViT's cls token works as is.

    Args:
        img_size: nominal input size (only checked to be a multiple of ``patch_size``); any
            multiple of ``patch_size`` works at run time.
        in_chans: input channels.
        depths: blocks per stage.
        dims: channels per stage.
        drop_path_rate: stochastic depth of the last block, growing linearly from 0.
        num_classes: size of a linear head; 0 means none (``forward`` returns pooled features).
        norm_eps: LayerNorm epsilon (1e-6 in the reference).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        drop_path_rate: float = 0.0,
        num_classes: int = 0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if len(depths) != len(dims) or not depths:
            raise ValueError(f"depths {tuple(depths)} and dims {tuple(dims)} must have the same length")
        self.depths, self.dims = tuple(depths), tuple(dims)
        # Total stride: 4 (stem) * 2 per later stage; FCMAE masks live on this grid.
        self.patch_size = 4 * 2 ** (len(depths) - 1)
        height, width = _pair(img_size)
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"img_size {(height, width)} is not a multiple of the stride {self.patch_size}")
        self.img_size = (height, width)
        self.patch_grid = (height // self.patch_size, width // self.patch_size)
        self.embed_dim = self.num_features = dims[-1]
        self.grad_checkpointing = False

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=norm_eps)
        )
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.stages = nn.ModuleList(
            Stage(dims[max(i - 1, 0)], dims[i], depths[i], rates[starts[i] :], i > 0, norm_eps)
            for i in range(len(depths))
        )
        self.norm = nn.LayerNorm(dims[-1], eps=norm_eps)
        self.head: nn.Module = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @property
    def n_blocks(self) -> int:
        return sum(self.depths)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Reference initialisation: truncated normal (std 0.02) weights, zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, GRN):
                nn.init.zeros_(module.gamma)
                nn.init.zeros_(module.beta)

    # ----------------------------------------------------------------------------- forward

    def stage_keep_masks(self, masks: torch.Tensor, grid: tuple[int, int], dtype: torch.dtype) -> list:
        """Per-stage (B, 1, H_i, W_i) multipliers, 0 at masked positions, from (B, h*w) ``masks``."""
        keep = (~masks.bool()).reshape(-1, 1, *grid).to(dtype)
        out = []
        for i in range(len(self.stages)):
            scale = 2 ** (len(self.stages) - 1 - i)
            out.append(keep.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3))
        return out

    def forward_stages(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Stem and all stages, no final norm: (B, C_in, H, W) -> (B, C, H/32, W/32).

        Args:
            x: images, H and W multiples of ``patch_size``.
            masks: optional (B, h*w) on the stride-32 grid, True (or 1) = masked (FCMAE). Masked
                positions of the result are zero, as where a sparse encoder has no site.
        """
        height, width = x.shape[-2:]
        if not torch.jit.is_tracing() and (height % self.patch_size or width % self.patch_size):
            raise ValueError(
                f"input size {(height, width)} is not a multiple of patch size {self.patch_size}"
            )
        grid = (height // self.patch_size, width // self.patch_size)
        if masks is not None and masks.shape[-1] != grid[0] * grid[1]:
            raise ValueError(
                f"masks have {masks.shape[-1]} positions, the input's {grid} grid has {grid[0] * grid[1]}"
            )
        keeps = self.stage_keep_masks(masks, grid, x.dtype) if masks is not None else None
        x = self.stem(x)
        if keeps is not None:
            x = x * keeps[0]
        for i, stage in enumerate(self.stages):
            assert isinstance(stage, Stage)
            x = stage.downsample(x)
            keep = keeps[i] if keeps is not None else None
            for block in stage.blocks:
                if self.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(block, x, keep, use_reentrant=False)
                else:
                    x = block(x, keep)
        return x if keeps is None else x * keeps[-1]

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict:
        """Encode images.

        Args:
            x: (B, C_in, H, W), H and W multiples of 32.
            masks: optional (B, h*w) bool, True = masked, on the (H/32, W/32) grid (FCMAE).

        Returns:
            ``x_norm_clstoken`` (B, C): the normalised global average of the final stage (over
            visible positions when masked; there is no class token), ``x_norm_patchtokens``
            (B, h*w, C): the normalised final-stage positions, ``x_prenorm`` (B, C, h, w).
        """
        x_prenorm = self.forward_stages(x, masks)
        tokens = x_prenorm.flatten(2).transpose(1, 2)  # (B, h*w, C)
        if masks is None:
            pooled = tokens.mean(dim=1)
        else:
            keep = (~masks.bool()).to(tokens.dtype).unsqueeze(-1)
            pooled = (tokens * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
        return {
            "x_norm_clstoken": self.norm(pooled),
            "x_norm_patchtokens": self.norm(tokens),
            "x_prenorm": x_prenorm,
        }

    def forward_head(self, features: dict, pre_logits: bool = False) -> torch.Tensor:
        """The pooled feature (B, C), through the head unless ``pre_logits``."""
        pooled = features["x_norm_clstoken"]
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, num_classes) logits, or pooled (B, C) features without a head."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (e.g. for fine-tuning); ``num_classes=0`` removes it."""
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    # ----------------------------------------------------------------------------- training

    def no_weight_decay(self) -> set[str]:
        """GRN's gamma and beta, which the reference fine-tuning recipe does not decay."""
        return {name for name, _ in self.named_parameters() if re.search(r"\.grn\.(gamma|beta)$", name)}

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style regex groups: the stem, then each stage (coarse) or each downsampler and block.

        With ``coarse=False`` the final norm and head form a last group after all blocks.
        """
        if coarse:
            return {"stem": r"^stem\.", "blocks": r"^stages\.(\d+)"}
        return {
            "stem": r"^stem\.",
            "blocks": [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^(?:norm|head)\.", (99999,)),
            ],
        }

    def layer_id_for_param(self, name: str) -> int:
        """Layer index for layer-wise LR decay (the reference's "single" scheme).

        0 for the stem, ``k + 1`` for the k-th block counted across stages (a downsampler shares
        the id of its stage's first block), ``n_blocks + 1`` for the final norm, head and anything
        else. A wrapper prefix such as ``backbone.`` is allowed.
        """
        if re.search(r"(?:^|\.)stem\.", name):
            return 0
        match = re.search(r"(?:^|\.)stages\.(\d+)\.(?:blocks\.(\d+)|downsample)", name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2) or 0)
            return sum(self.depths[:stage]) + block + 1
        return self.n_blocks + 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward to save memory (non-reentrant checkpoint)."""
        self.grad_checkpointing = enable


# --------------------------------------------------------------------------------- converter



def _reference_key(key: str) -> str:
    """Reference name -> ours: ``downsample_layers.0`` is our stem, ``downsample_layers.i`` and
    ``stages.i.j`` live under our ``stages.i``; sparse layers wrap weights in ``ln.``/``linear.``."""
    key = re.sub(r"\.(?:ln|linear)\.(weight|bias)$", r".\1", key)
    key = re.sub(r"^downsample_layers\.0\.", "stem.", key)
    key = re.sub(r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", key)
    return re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", key)


def _sparse_kernel_to_dense(kernel: torch.Tensor) -> torch.Tensor:
    """A MinkowskiEngine kernel (K*K, C) depthwise or (K*K, C_in, C_out) to a Conv2d weight.

    The flattened kernel offsets are ordered with the two spatial axes swapped relative to
    Conv2d's (kh, kw), hence the final transpose (as in the reference's own key remapping).
    """
    size = math.isqrt(kernel.shape[0])
    if kernel.ndim == 2:
        return kernel.t().reshape(-1, 1, size, size).transpose(2, 3).contiguous()
    return kernel.permute(2, 1, 0).reshape(kernel.shape[2], kernel.shape[1], size, size).transpose(2, 3)


def convnextv2_checkpoint_filter_fn(state_dict: Mapping[str, Any], model: ConvNeXtV2) -> dict:
    """A foveal, reference dense or reference FCMAE (sparse) checkpoint as ``model``'s state dict.

    Unwraps ``{"model": ...}``, strips ``module.``/``encoder.``/``backbone.`` prefixes, renames
    reference keys, turns sparse kernels into conv weights and GRN's (1, 1, 1, C) or (1, C)
    parameters into (C,), and drops what the model lacks or cannot take (decoders, other heads),
    logging it. Load the result with ``strict=False`` and check ``missing_keys``.
    """
    return match_state_dict(state_dict, model.state_dict(), convert=_reference_tensor)


def _reference_tensor(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    """A reference (FCMAE / official) tensor under Foveal's name and shape."""
    if key.endswith(".kernel"):
        key, value = key[: -len("kernel")] + "weight", _sparse_kernel_to_dense(value)
    key = _reference_key(key)
    if ".grn." in key or (key.endswith(".bias") and value.ndim > 1):
        value = value.reshape(-1)
    return key, value


# --------------------------------------------------------------------------------- registry


def _register(size: str) -> None:
    depths, dims = CONVNEXTV2_SIZES[size]

    def build(**overrides: Any) -> ConvNeXtV2:
        kwargs: dict[str, Any] = {"depths": depths, "dims": dims}
        kwargs.update(overrides)
        return ConvNeXtV2(**kwargs)

    build.__doc__ = f"ConvNeXt V2-{size}: depths {depths}, dims {dims}."
    register_backbone(f"convnextv2_{size}")(build)


for _size in CONVNEXTV2_SIZES:
    _register(_size)
