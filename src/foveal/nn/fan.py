"""FAN (Fully Attentional Networks) backbones, as TAO's classification_pyt builds them.

Zhou et al., "Understanding The Robustness in Vision Transformers" (ICML 2022, arXiv:2204.12451);
reference code NVlabs/FAN ``models/fan.py``, and TAO ``nvidia_tao_pytorch/cv/backbone_v2/fan.py``
with ``convnext_utils.py``, whose registered names, variants and state-dict keys this module
reproduces (the ``fan_swin_*`` names are not built here).

Forward pass, token tensors (B, N, C):

1. stem, total stride 16: four 3x3 stride-2 conv+BN layers (``*_p16_224``), or the first two
   ConvNeXt stages plus a 2x2 stride-2 conv (``*_p4_hybrid``);
2. the XCiT Fourier position encoding of the (H/16, W/16) grid, recomputed for every input size
   (nothing to interpolate), added once;
3. ``depth`` FAN blocks (:class:`~foveal.nn.fan_layers.FANBlock`); FAN-XLarge's block 19 ends with
   a stride-2 downsample from 528 to 768 channels, so its output grid is (H/32, W/32);
4. a ``cls_token`` is prepended and two class-attention blocks run on all tokens;
5. final LayerNorm (eps 1e-6): its cls token is the pooled feature TAO's head receives.

Reference details kept on purpose: LayerScale gammas start at 1.0 (not 1e-5); no activation
after the channel MLP's fc1; ``norm_v`` and the downsample norm use eps 1e-5, every other
LayerNorm 1e-6; the class-attention blocks' odd patch-token updates; in the hybrids' ConvNeXt,
every channel norm after the stem's uses the unbiased variance (the reference's ``LayerNorm2d`` on
channels-last maps, see :class:`~foveal.nn.fan_layers.ConvNeXtLayerNorm2d`); TAO's init, under
which ``head_init_scale`` has no effect (the head is re-initialised after it is scaled).

Differences from TAO: ``drop_path_rate`` (stochastic depth) is the same in every FAN block, as in
TAO (no linear ramp), but like TAO it is not applied to the class-attention blocks or the hybrid
ConvNeXt stem; dropout rates other than stochastic depth are not exposed (TAO's default 0); the
hybrids' ConvNeXt takes ``in_chans`` (TAO always builds it for 3 channels); gradient
checkpointing is non-reentrant.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from foveal.nn.fan_layers import (
    ClassAttentionBlock,
    ConvPatchEmbed,
    FANBlock,
    HybridEmbed,
    PositionalEncodingFourier,
    Size,
)
from foveal.nn.registry import register_backbone
from foveal.nn.state_dict import match_state_dict

logger = logging.getLogger(__name__)

PATCH_STRIDE = 16

_STEM_RE = re.compile(r"(?:^|\.)(?:patch_embed|pos_embed|cls_token)(?:\.|$)")
_CLS_BLOCK_RE = re.compile(r"(?:^|\.)cls_attn_blocks\.(\d+)\.")
_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _per_block(value: int | Sequence[int], depth: int, name: str) -> tuple[int, ...]:
    values = (value,) * depth if isinstance(value, int) else tuple(value)
    if len(values) != depth:
        raise ValueError(f"{name} has {len(values)} entries for depth {depth}")
    return values


class FAN(nn.Module):
    """Fully Attentional Network with the foveal backbone interface and TAO's state-dict keys.

    Top-level modules, in TAO's order: ``patch_embed``, ``pos_embed``, ``blocks``,
    ``cls_token``, ``cls_attn_blocks``, ``norm``, ``head``.

    Args:
        img_size: nominal input size, only checked to be a multiple of the stride (16, or 32
            with a downsampling block); any such size works at run time.
        in_chans: input channels.
        num_classes: size of a linear ``head`` on the pooled feature; 0 means none.
        embed_dim: token width of the stem and of the first block.
        depth: number of FAN blocks.
        num_heads: attention heads, one value or one per block; the class-attention blocks use
            the last block's.
        channel_dims: width of every block (default ``embed_dim`` throughout); where it changes
            between blocks i and i+1, block i ends with a stride-2 downsample.
        mlp_ratio: hidden width of every MLP as a multiple of the block width.
        se_mlp: squeeze-excite MLP instead of channel attention in the blocks.
        hybrid_depths: ConvNeXt blocks in the hybrid stem's two stages; ``None`` for the conv stem.
        drop_path_rate: stochastic-depth rate of every FAN block (the same for all, as in TAO).
        cls_attn_layers: number of class-attention blocks.
        eta: initial LayerScale value.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 0,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int | Sequence[int] = 8,
        channel_dims: Sequence[int] | None = None,
        mlp_ratio: float = 4.0,
        se_mlp: bool = False,
        hybrid_depths: tuple[int, int] | None = None,
        drop_path_rate: float = 0.0,
        cls_attn_layers: int = 2,
        eta: float = 1.0,
    ) -> None:
        super().__init__()
        dims = _per_block(embed_dim if channel_dims is None else channel_dims, depth, "channel_dims")
        heads = _per_block(num_heads, depth, "num_heads")
        if dims[0] != embed_dim:
            raise ValueError(f"channel_dims[0] = {dims[0]} must equal embed_dim = {embed_dim}")
        out_dims = [dims[i + 1] if i + 1 < depth else dims[i] for i in range(depth)]
        self.depth = depth
        self.stride = PATCH_STRIDE * 2 ** sum(out != dim for out, dim in zip(out_dims, dims, strict=True))
        height, width = _pair(img_size)
        self._check_size(height, width, "img_size")
        self.img_size = (height, width)
        self.patch_size = PATCH_STRIDE
        self.embed_dim = self.num_features = dims[-1]
        self.grad_checkpointing = False

        self.patch_embed: nn.Module = (
            ConvPatchEmbed(in_chans, embed_dim)
            if hybrid_depths is None
            else HybridEmbed(in_chans, embed_dim, hybrid_depths)
        )
        self.pos_embed = PositionalEncodingFourier(embed_dim)
        self.blocks = nn.ModuleList(
            FANBlock(dims[i], heads[i], mlp_ratio, drop_path_rate, eta, se_mlp, out_dims[i]) for i in range(depth)
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims[-1]))
        self.cls_attn_blocks = nn.ModuleList(
            ClassAttentionBlock(dims[-1], heads[-1], mlp_ratio, eta) for _ in range(cls_attn_layers)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head: nn.Module = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def _check_size(self, height: int, width: int, what: str) -> None:
        if height % self.stride or width % self.stride:
            why = "the stride-16 stem" + (" and stride-2 downsampling" if self.stride > PATCH_STRIDE else "")
            raise ValueError(
                f"FAN {what} height and width must be multiples of {self.stride} ({why}), got {height}x{width}"
            )

    @property
    def n_blocks(self) -> int:
        """FAN blocks plus class-attention blocks (both get their own layer id)."""
        return len(self.blocks) + len(self.cls_attn_blocks)

    @torch.no_grad()
    def init_weights(self) -> None:
        """TAO's initialisation: trunc-normal(0.02) Linear weights (head included) and
        ``cls_token``, zero biases, LayerScale at ``eta``; N(0, sqrt(2/fan_out)) convs in the
        blocks; trunc-normal(0.02) convs and LayerScale 1e-6 in the ConvNeXt stem; PyTorch's
        default for the conv stem, the hybrid projection and the position-encoding projection."""
        self.patch_embed.init_weights()  # type: ignore[operator]
        self.pos_embed.init_weights()
        for block in self.blocks:
            block.init_weights()  # type: ignore[operator]
        for cls_block in self.cls_attn_blocks:
            cls_block.init_weights()  # type: ignore[operator]
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    # ----------------------------------------------------------------------------- forward

    def _run(self, block: nn.Module, *args: Any) -> Any:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward_blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, Size]:
        """Stem, position encoding and FAN blocks: (B, C_in, H, W) -> tokens (B, N, C) and grid."""
        height, width = x.shape[-2:]
        if not torch.jit.is_tracing():
            self._check_size(int(height), int(width), "input")
        tokens, size = self.patch_embed(x)
        tokens = tokens + self.pos_embed(*size).to(tokens.dtype)
        for block in self.blocks:
            tokens, size = self._run(block, tokens, size)
        return tokens, size

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict:
        """Encode images.

        Args:
            x: (B, C_in, H, W), H and W multiples of ``stride`` (16; 32 for FAN-XLarge).
            masks: not supported (FAN has no mask token); must be ``None``.

        Returns:
            ``x_norm_clstoken`` (B, C): the final norm of the cls token, TAO's
            ``forward_pre_logits``; ``x_norm_patchtokens`` (B, N, C): the final-normed patch
            tokens after the class-attention blocks, N = (H/stride) * (W/stride);
            ``x_prenorm`` (B, 1 + N, C) before the final norm.
        """
        if masks is not None:
            raise ValueError("FAN does not support masks")
        tokens, _ = self.forward_blocks(x)
        x_cls = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        for block in self.cls_attn_blocks:
            x_cls = self._run(block, x_cls)
        x_norm = self.norm(x_cls)
        return {"x_norm_clstoken": x_norm[:, 0], "x_norm_patchtokens": x_norm[:, 1:], "x_prenorm": x_cls}

    def forward_head(self, features: dict, pre_logits: bool = False) -> torch.Tensor:
        """The pooled feature (B, C), through the head unless ``pre_logits``."""
        pooled = features["x_norm_clstoken"]
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, num_classes) logits, or the pooled (B, C) feature without a head."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (e.g. for fine-tuning); ``num_classes=0`` removes it."""
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    # ----------------------------------------------------------------------------- training

    def no_weight_decay(self) -> set[str]:
        """``cls_token`` and the channel-attention temperatures."""
        names = {name for name, _ in self.named_parameters() if name.endswith(".temperature")}
        return names | {"cls_token"}

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style regex groups (as timm's XCiT): stem and tokens, FAN blocks, class-attention
        blocks, then the final norm and head."""
        stem = r"^(?:cls_token|pos_embed|patch_embed)"
        if coarse:
            return {"stem": stem, "blocks": r"^blocks\.(\d+)", "cls_attn_blocks": r"^cls_attn_blocks\.(\d+)"}
        return {
            "stem": stem,
            "blocks": r"^blocks\.(\d+)",
            "cls_attn_blocks": [(r"^cls_attn_blocks\.(\d+)", None), (r"^(?:norm|head)\.", (99999,))],
        }

    def layer_id_for_param(self, name: str) -> int:
        """Layer index for layer-wise LR decay.

        0 for ``patch_embed`` (hybrid ConvNeXt included), ``pos_embed`` and ``cls_token``;
        ``i + 1`` for ``blocks.i`` (FAN-XLarge's downsample lives in, and shares the id of,
        block 19, as in TAO's freezing); ``depth + j + 1`` for ``cls_attn_blocks.j``;
        ``n_blocks + 1`` for the final norm, head and anything else. A wrapper prefix such as
        ``backbone.`` is allowed.
        """
        if _STEM_RE.search(name):
            return 0
        match = _CLS_BLOCK_RE.search(name)
        if match:
            return len(self.blocks) + int(match.group(1)) + 1
        match = _BLOCK_RE.search(name)
        if match:
            return int(match.group(1)) + 1
        return self.n_blocks + 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward to save memory (non-reentrant checkpoint)."""
        self.grad_checkpointing = enable


# --------------------------------------------------------------------------------- checkpoints

# TAO 6.0 (``model.backbone.``), 6.25 (``model.``), 5.x (``backbone.``), DDP (``module.``).
# Older TAO classifier heads: 6.0 ``decoder.fc`` (TAOLinearClsHead), 5.x ``head.fc``.
_OLD_HEAD_RE = re.compile(r"^(?:decoder\.fc|head\.fc)\.")


def fan_checkpoint_filter_fn(state_dict: Mapping[str, Any], model: FAN) -> dict[str, torch.Tensor]:
    """A TAO FAN checkpoint (any generation) as ``model``'s state dict.

    Unwraps a Lightning/training checkpoint (``{"state_dict": ...}`` or ``{"model": ...}``),
    strips the prefixes of TAO 6.25 (``model.``), 6.0 (``model.backbone.``), 5.x (``backbone.``)
    and DDP (``module.``), maps the 6.0/5.x classifier (``decoder.fc.*``, ``head.fc.*``) onto
    ``head.*``, and keeps only tensors whose key and shape the model has: a classifier head is
    dropped when the model has none or one of another size (logged at debug level).

    Args:
        state_dict: a state dict or a training checkpoint containing one (not encrypted).
        model: the target backbone (only its state-dict keys and shapes are read).

    Returns:
        The filtered state dict; ``model.load_state_dict(out)`` then reports as missing only
        what the checkpoint lacked.
    """
    expected = model.state_dict()

    def old_head(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
        return (key if key in expected else _OLD_HEAD_RE.sub("head.", key)), value

    return match_state_dict(state_dict, expected, convert=old_head, head_prefixes=("head.",))


# ------------------------------------------------------------------------------------ registry

# name -> FAN arguments, from TAO's registered builders (= NVlabs/FAN's model definitions).
_XLARGE_DIMS = (528,) * 20 + (768,) * 3
FAN_VARIANTS: dict[str, dict[str, Any]] = {
    "fan_tiny_12_p16_224": {"embed_dim": 192, "depth": 12, "num_heads": 4},
    "fan_small_12_p16_224_se_attn": {"embed_dim": 384, "depth": 12, "num_heads": 8, "se_mlp": True},
    "fan_small_12_p16_224": {"embed_dim": 384, "depth": 12, "num_heads": 8},
    "fan_base_18_p16_224": {"embed_dim": 448, "depth": 18, "num_heads": 8},
    "fan_large_24_p16_224": {"embed_dim": 480, "depth": 24, "num_heads": 10},
    "fan_tiny_8_p4_hybrid": {"embed_dim": 192, "depth": 8, "num_heads": 8, "hybrid_depths": (3, 3)},
    # TAO's "small_12" hybrid has 10 blocks.
    "fan_small_12_p4_hybrid": {"embed_dim": 384, "depth": 10, "num_heads": 8, "hybrid_depths": (3, 3)},
    "fan_base_16_p4_hybrid": {"embed_dim": 448, "depth": 16, "num_heads": 8, "hybrid_depths": (3, 3)},
    # TAO's "large_16" hybrid has 22 blocks.
    "fan_large_16_p4_hybrid": {"embed_dim": 480, "depth": 22, "num_heads": 10, "hybrid_depths": (3, 5)},
    "fan_xlarge_16_p4_hybrid": {
        "embed_dim": 528,
        "depth": 23,
        "channel_dims": _XLARGE_DIMS,
        "num_heads": (11,) * 20 + (16,) * 3,
        "hybrid_depths": (3, 7),
    },
}


def _register(name: str) -> None:
    defaults = FAN_VARIANTS[name]

    def build(**overrides: Any) -> FAN:
        return FAN(**{**defaults, **overrides})

    build.__doc__ = f"TAO's {name}: {defaults}."
    register_backbone(name)(build)


for _name in FAN_VARIANTS:
    _register(_name)
