"""Hiera backbone on Hugging Face ``transformers``' implementation.

Architecture: Ryali et al., "Hiera: A Hierarchical Vision Transformer without the
Bells-and-Whistles" (ICML 2023, arXiv:2306.00989). A 7x7 stride-4 patch embedding with a learned
absolute position table (56 x 56 tokens at 224 px), four stages whose width and heads double at
each stage change, query max-pooling (2x2) at the first ``num_query_pool`` stage changes, and
mask-unit (8x8-token window) attention in stages 1-2, global attention in stages 3-4. The
classifier input is the mean of the final tokens through a LayerNorm.

The blocks are ``transformers``' ``HieraModel`` (the same architecture as timm's ``Hiera``,
which TAO subclasses; the HF converter checks both against the original code). This module adds
the Foveal backbone interface around it and runs the embedding / unroll / encoder steps itself,
so that MAE pretraining (:mod:`foveal.networks.mae.mae_hiera`) can drop whole mask units
(:meth:`Hiera.forward_stages`) with the same weights.

The absolute position table is not resampled (TAO's Hiera does not do it either), so the input
is 224 x 224 only. ``transformers`` (``pip install 'foveal[hf]'``) is imported when a model is
built, never at import time.

Parameter names are HF's (``hiera.embeddings...``, ``hiera.encoder.stages.S.layers.L...``,
``hiera.pooler.layernorm``) plus ``head``; :func:`hiera_checkpoint_filter_fn` also reads
TAO / timm / original-repo checkpoints (``blocks.N...``, ``patch_embed``, ``pos_embed``,
``norm`` or ``head.norm``, ``head.fc`` or ``head.projection``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import torch
from torch import nn

from foveal.nn.registry import register_backbone
from foveal.nn.state_dict import match_state_dict

logger = logging.getLogger(__name__)

IMG_SIZE = 224  # the only input size: the absolute position table is not resampled
# name -> (embed_dim, depths, heads per stage): Hiera paper Table 2; TAO / timm / HF alike.
HIERA_SIZES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "tiny": (96, (1, 2, 7, 2), (1, 2, 4, 8)),
    "small": (96, (1, 2, 11, 2), (1, 2, 4, 8)),
    "base": (96, (2, 3, 16, 3), (1, 2, 4, 8)),
    "base_plus": (112, (2, 3, 16, 3), (2, 4, 8, 16)),
    "large": (144, (2, 6, 36, 4), (2, 4, 8, 16)),
    "huge": (256, (2, 6, 36, 4), (4, 8, 16, 32)),
}


def modeling_hiera() -> ModuleType:
    """``transformers.models.hiera.modeling_hiera``, or an ImportError that says what to install."""
    try:
        from transformers.models.hiera import modeling_hiera as module
    except ImportError as exc:
        raise ImportError(
            f"Hiera needs Hugging Face transformers >= 4.42 (pip install 'foveal[hf]'): {exc}"
        ) from None
    return module


def check_img_size(img_size: int | Sequence[int]) -> None:
    """Raise ValueError unless ``img_size`` is 224 (or (224, 224))."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if size != (IMG_SIZE, IMG_SIZE):
        raise ValueError(
            f"Hiera takes {IMG_SIZE}x{IMG_SIZE} images only, got img_size={img_size}: its absolute position "
            f"table is not resampled (as in TAO); use an input size of {IMG_SIZE}"
        )


class Hiera(nn.Module):
    """Hiera with the Foveal backbone interface.

    Args:
        img_size: must be 224 (see the module docstring).
        in_chans: input channels.
        num_classes: size of a linear ``head`` on the pooled feature; 0 means none.
        drop_path_rate: stochastic depth of the last block, growing linearly from 0 (timm's and
            TAO's default 0).
        embed_dim: width of stage 1; it doubles at each stage change.
        depths: blocks per stage (four stages).
        num_heads: attention heads per stage.
        num_query_pool: stage changes with 2x2 query pooling: 3 for classification (final grid
            7x7), 2 for MAE pretraining (final grid 14x14). Parameter-free, so weights transfer.
        mlp_ratio: MLP width over block width.
        layer_norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = IMG_SIZE,
        in_chans: int = 3,
        num_classes: int = 0,
        drop_path_rate: float = 0.0,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 3, 16, 3),
        num_heads: Sequence[int] = (1, 2, 4, 8),
        num_query_pool: int = 3,
        mlp_ratio: float = 4.0,
        layer_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        check_img_size(img_size)
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(
                f"Hiera has four stages: got depths {tuple(depths)}, num_heads {tuple(num_heads)}"
            )
        hf = modeling_hiera()
        self.config = hf.HieraConfig(
            embed_dim=embed_dim,
            image_size=[IMG_SIZE, IMG_SIZE],
            depths=list(depths),
            num_heads=list(num_heads),
            num_query_pool=int(num_query_pool),
            drop_path_rate=float(drop_path_rate),
            num_channels=int(in_chans),
            mlp_ratio=float(mlp_ratio),
            layer_norm_eps=float(layer_norm_eps),
        )
        self.depths = tuple(depths)
        # HF's weights initialisation (the reference's: truncated normal 0.02, biases 0.02) runs here.
        self.hiera: Any = hf.HieraModel(self.config, add_pooling_layer=True, is_mae=False)
        self.embed_dim = self.num_features = int(self.hiera.num_features)
        self.mask_unit_area = self.config.masked_unit_size[0] * self.config.masked_unit_size[1]
        self.head: nn.Module = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.hiera._init_weights(self.head)

    @property
    def n_blocks(self) -> int:
        return sum(self.depths)

    @property
    def norm(self) -> nn.LayerNorm:
        """The final LayerNorm (HF's pooler norm; timm's ``head.norm``)."""
        return self.hiera.pooler.layernorm

    @torch.no_grad()
    def init_weights(self) -> None:
        """The reference initialisation (HF ``HieraPreTrainedModel._init_weights``): truncated
        normal (std 0.02) weights and position table, biases 0.02, unit LayerNorm weights."""
        for module in self.modules():
            self.hiera._init_weights(module)

    # ----------------------------------------------------------------------------- forward

    def _check_input(self, x: torch.Tensor) -> None:
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != (IMG_SIZE, IMG_SIZE):
            raise ValueError(
                f"Hiera takes {IMG_SIZE}x{IMG_SIZE} images only, got {tuple(x.shape[-2:])}: its absolute "
                "position table is not resampled"
            )

    def embed(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embedding + position table, unrolled: (B, C, 224, 224) -> (B, N, D).

        Args:
            x: images.
            keep: optional (B, num_mask_units) bool, True = visible (HF's convention). Masked
                units are zeroed before the overlapping conv (no leakage) and their tokens dropped.
        """
        self._check_input(x)
        embeddings = self.hiera.embeddings
        tokens = embeddings.patch_embeddings.masked_conv(x, keep).flatten(2).transpose(1, 2)
        tokens = tokens + embeddings.position_embeddings
        tokens = modeling_hiera().unroll(
            tokens,
            image_shape=(x.shape[-2], x.shape[-1]),
            patch_stride=self.config.patch_stride,
            schedule=self.hiera.unroll_schedule,
        )
        if keep is None:
            return tokens
        batch, _, dim = tokens.shape
        positions = keep.unsqueeze(-1).tile(1, self.mask_unit_area, dim)
        return tokens[positions].view(batch, -1, dim)

    def forward_stages(self, x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Sparse encoding of the visible mask units (MAE): the embedding and every stage's
        output as (B, units kept, unit height, unit width, C_stage)."""
        out = self.hiera.encoder(self.embed(x, keep), bool_masked_pos=keep, output_hidden_states=True)
        return tuple(out.reshaped_hidden_states)

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Encode images.

        Args:
            x: (B, C_in, 224, 224).
            masks: not supported (MAE masks whole mask units through :meth:`forward_stages`).

        Returns:
            ``x_norm_clstoken`` (B, D): mean of the final tokens, then the final LayerNorm (TAO's
            ``forward_pre_logits``); ``x_norm_patchtokens`` (B, h*w, D): the final tokens in
            raster order through the same LayerNorm; ``x_prenorm`` (B, D, h, w) (h = w = 7, or
            14 with ``num_query_pool=2``).
        """
        if masks is not None:
            raise ValueError("the Hiera backbone does not support masks; Hiera MAE drops whole mask units")
        tokens = self.hiera.encoder(self.embed(x)).last_hidden_state
        grid = self.hiera.encoder.reroll(tokens, stage_idx=len(self.depths) - 1)  # (B, h, w, D)
        tokens = grid.flatten(1, 2)
        return {
            "x_norm_clstoken": self.hiera.pooler(tokens),
            "x_norm_patchtokens": self.norm(tokens),
            "x_prenorm": grid.permute(0, 3, 1, 2),
        }

    def forward_head(self, features: dict[str, torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        """The pooled feature (B, D), through the head unless ``pre_logits``."""
        pooled = features["x_norm_clstoken"]
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, 224, 224) -> (B, num_classes) logits, or pooled (B, D) features without a head."""
        return self.forward_head(self.forward_features(x))

    # ----------------------------------------------------------------------------- training

    def no_weight_decay(self) -> set[str]:
        """The position table (timm's ``pos_embed``)."""
        return {"hiera.embeddings.position_embeddings"}

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style regex groups: the embedding, then each stage (coarse) or each block."""
        if coarse:
            return {"stem": r"^hiera\.embeddings\.", "blocks": r"^hiera\.encoder\.stages\.(\d+)"}
        return {
            "stem": r"^hiera\.embeddings\.",
            "blocks": [
                (r"^hiera\.encoder\.stages\.(\d+)\.layers\.(\d+)", None),
                (r"^(?:hiera\.pooler|head)\.", (99999,)),
            ],
        }

    def layer_id_for_param(self, name: str) -> int:
        """0 for the patch embedding and position table, ``k + 1`` for the k-th block over the
        whole network, ``n_blocks + 1`` for the final norm, head and anything else. A wrapper
        prefix such as ``backbone.`` is allowed."""
        if re.search(r"(?:^|\.)hiera\.embeddings\.", name):
            return 0
        match = re.search(r"(?:^|\.)hiera\.encoder\.stages\.(\d+)\.layers\.(\d+)\.", name)
        if match:
            return sum(self.depths[: int(match.group(1))]) + int(match.group(2)) + 1
        return self.n_blocks + 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in backward (HF's per-stage, non-reentrant checkpoint)."""
        model = self.hiera
        if enable:
            turn_on = (
                getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            )
            turn_on({"use_reentrant": False})
        else:
            turn_off = (
                getattr(model, "activation_checkpointing_disable", None)
                or model.gradient_checkpointing_disable
            )
            turn_off()


# --------------------------------------------------------------------------------- converter

_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(.*)$")
_TIMM_BLOCK_PARTS = {"norm1.": "layernorm_before.", "norm2.": "layernorm_after."}
_TIMM_TOP = (
    ("patch_embed.proj.", "hiera.embeddings.patch_embeddings.projection."),
    ("head.norm.", "hiera.pooler.layernorm."),
    ("norm.", "hiera.pooler.layernorm."),
    ("head.fc.", "head."),
    ("head.projection.", "head."),
    ("classifier.", "head."),
)


def _our_key(key: str, depths: Sequence[int]) -> str:
    """A TAO / timm / original-repo or HF classification key as ours (others unchanged)."""
    if key == "pos_embed":
        return "hiera.embeddings.position_embeddings"
    match = _TIMM_BLOCK.match(key)
    if match:
        index, rest = int(match.group(1)), match.group(2)
        stage = 0
        while stage < len(depths) - 1 and index >= depths[stage]:
            index -= depths[stage]
            stage += 1
        for old, new in _TIMM_BLOCK_PARTS.items():
            if rest.startswith(old):
                rest = new + rest[len(old) :]
        return f"hiera.encoder.stages.{stage}.layers.{index}.{rest}"
    for old, new in _TIMM_TOP:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def hiera_checkpoint_filter_fn(state_dict: Mapping[str, Any], model: Hiera) -> dict[str, torch.Tensor]:
    """A Foveal, Hugging Face, TAO / timm or original-repo Hiera checkpoint as ``model``'s state dict.

    Unwraps ``{"model": ...}``-style wrappers, strips ``module.``/``model.``/``backbone.``/
    ``encoder.`` prefixes (TAO 6.25 ``model.``, TAO 6.0 ``model.backbone.``, a Foveal MAE
    checkpoint's ``model.encoder.``), renames timm's ``blocks.N`` (numbered over the whole
    network) into HF's ``stages.S.layers.L`` and the heads' names, and drops what the model lacks
    or cannot take (MAE decoders, another head), logging it. Load with ``strict=False``.
    """
    # MAE decoders, fusion heads or a head the model lacks are reported as absent
    return match_state_dict(
        state_dict, model.state_dict(), convert=lambda key, value: (_our_key(key, model.depths), value)
    )


# --------------------------------------------------------------------------------- registry


def _register(size: str) -> None:
    embed_dim, depths, num_heads = HIERA_SIZES[size]

    def build(**overrides: Any) -> Hiera:
        kwargs: dict[str, Any] = {"embed_dim": embed_dim, "depths": depths, "num_heads": num_heads}
        kwargs.update(overrides)
        return Hiera(**kwargs)

    build.__doc__ = f"Hiera-{size} 224: embed_dim {embed_dim}, depths {depths}, heads {num_heads}."
    register_backbone(f"hiera_{size}_224")(build)


for _size in HIERA_SIZES:
    _register(_size)
