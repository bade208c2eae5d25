"""The Vision Transformer backbone shared by the nvdinov2, mae and classification networks.

Architecture: Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale" (ICLR 2021, arXiv:2010.11929). Interface and extras follow DINOv2 (Oquab et
al., arXiv:2304.07193): ``forward_features`` returns a dict with ``x_norm_*`` keys, a mask token for
masked-image modelling (iBOT), LayerScale, SwiGLU for ViT-g, and register tokens (Darcet et al.,
"Vision Transformers Need Registers", ICLR 2024, arXiv:2309.16588). ``prepare_tokens`` and
``forward_blocks`` let MAE (He et al., arXiv:2111.06377) drop masked patches before the encoder.

Token layout everywhere: ``[cls, registers (R), patches (N)]`` along dim 1.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from foveal.nn.layers import Block, LayerScale, PatchEmbed
from foveal.nn.packing import PackedLayout, pack, unpack
from foveal.nn.pos_embed import build_2d_sincos_pos_embed, resample_patch_pos_embed

logger = logging.getLogger(__name__)

POS_EMBED_TYPES = ("learned", "sincos")
GLOBAL_POOLS = ("token", "avg")
STEM_PARAMS = ("cls_token", "pos_embed", "register_tokens", "mask_token", "patch_embed")

_STEM_RE = re.compile(r"(?:^|\.)(?:" + "|".join(STEM_PARAMS) + r")(?:\.|$)")
_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


class VisionTransformer(nn.Module):
    """Pre-norm ViT with a class token, optional registers, a mask token and a resizable grid.

    Args:
        img_size: size the position table is built for; other multiples of ``patch_size`` are
            handled by bicubic resampling of the table.
        patch_size: side of the square patches.
        in_chans: input channels.
        embed_dim: token width D.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width as a multiple of D (ignored when ``mlp_hidden_dim`` is set).
        mlp_hidden_dim: exact MLP width (HF ViT configs give ``intermediate_size``).
        qkv_bias: bias on the fused qkv projection.
        ffn_layer: ``"mlp"`` or ``"swiglu"``/``"swiglufused"`` (DINOv2 ViT-g).
        act_layer: MLP activation name (see ``foveal.nn.layers.make_act``).
        init_values: LayerScale initial value; ``None`` turns LayerScale off.
        drop_path_rate: stochastic-depth rate of the last block; it grows linearly from 0.
        num_register_tokens: learned tokens after cls; they get no position embedding.
        norm_eps: LayerNorm epsilon (DINOv2/MAE 1e-6, HF ViT 1e-12).
        pos_embed_type: ``"learned"`` or ``"sincos"`` (MAE's fixed table, not trained).
        interpolate_antialias: anti-aliased bicubic resampling of the position table.
        num_classes: size of a linear head; 0 means no head (``forward`` returns features).
        global_pool: what the head sees: ``"token"`` (cls) or ``"avg"`` (mean patch token).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        mlp_hidden_dim: int | None = None,
        qkv_bias: bool = True,
        ffn_layer: str = "mlp",
        act_layer: str = "gelu",
        init_values: float | None = None,
        drop_path_rate: float = 0.0,
        num_register_tokens: int = 0,
        norm_eps: float = 1e-6,
        pos_embed_type: str = "learned",
        interpolate_antialias: bool = False,
        num_classes: int = 0,
        global_pool: str = "token",
    ) -> None:
        super().__init__()
        if pos_embed_type not in POS_EMBED_TYPES:
            raise ValueError(f"pos_embed_type must be one of {POS_EMBED_TYPES}, got {pos_embed_type!r}")
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        height, width = _pair(img_size)
        if height % patch_size or width % patch_size:
            raise ValueError(f"img_size {(height, width)} is not a multiple of patch_size {patch_size}")
        self.img_size = (height, width)
        self.patch_size = patch_size
        self.patch_grid = (height // patch_size, width // patch_size)
        self.embed_dim = self.num_features = embed_dim
        self.num_register_tokens = num_register_tokens
        self.num_prefix_tokens = 1 + num_register_tokens
        self.pos_embed_type = pos_embed_type
        self.interpolate_antialias = interpolate_antialias
        self.global_pool = global_pool
        self.grad_checkpointing = False

        num_patches = self.patch_grid[0] * self.patch_grid[1]
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, 1 + num_patches, embed_dim), requires_grad=pos_embed_type == "learned"
        )
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

        hidden = mlp_hidden_dim if mlp_hidden_dim is not None else int(embed_dim * mlp_ratio)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, hidden, qkv_bias, ffn_layer, act_layer, init_values, rate, norm_eps)
            for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head: nn.Module = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def layer_id_for_param(self, name: str) -> int:
        """Layer index of a parameter for layer-wise LR decay: 0 stem, i+1 block i, n_blocks+1 rest."""
        return layer_id_for_param(name, self.n_blocks)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    # ----------------------------------------------------------------------------- init

    @torch.no_grad()
    def init_weights(self) -> None:
        """DINOv2/timm initialisation; MAE's fixed sin-cos table when ``pos_embed_type='sincos'``."""
        if self.pos_embed_type == "sincos":
            self.pos_embed.copy_(build_2d_sincos_pos_embed(*self.patch_grid, self.embed_dim))
        else:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        # Treat the patch projection like a Linear layer (MAE).
        nn.init.xavier_uniform_(self.patch_embed.proj.weight.view(self.embed_dim, -1))
        if self.patch_embed.proj.bias is not None:
            nn.init.zeros_(self.patch_embed.proj.bias)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, LayerScale):
                module.reset_parameters()

    # ----------------------------------------------------------------------------- tokens

    def patch_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings of the patch tokens for a (grid_h, grid_w) grid: (1, N, D).

        Recomputed on every call (nothing cached) so tracing and ONNX export see the resampling.
        Under ``torch.jit`` tracing (the legacy ONNX exporter) the grid arrives as tensors and the
        table is always resampled: exact at the native grid (bicubic at scale 1 is the identity)
        and the exported graph stays valid for other input sizes.
        """
        patch_pos = self.pos_embed[:, 1:]
        if not torch.jit.is_tracing() and (grid_h, grid_w) == self.patch_grid:
            return patch_pos
        return resample_patch_pos_embed(
            patch_pos, self.patch_grid, (grid_h, grid_w), antialias=self.interpolate_antialias
        )

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens with position embeddings, WITHOUT cls/register tokens.

        Args:
            x: images (B, C, H, W), H and W multiples of ``patch_size``.
            masks: optional bool (B, N); True patches are replaced by ``mask_token`` before the
                position embedding is added (iBOT/DINOv2 masked-image modelling).

        Returns:
            (B, N, D), N = (H / patch_size) * (W / patch_size), row-major.
        """
        height, width = x.shape[-2:]
        if not torch.jit.is_tracing() and (height % self.patch_size or width % self.patch_size):
            raise ValueError(
                f"input size {(height, width)} is not a multiple of patch size {self.patch_size}"
            )
        tokens = self.patch_embed(x)
        if masks is not None:
            mask_token = self.mask_token.to(tokens.dtype).unsqueeze(0)
            tokens = torch.where(masks.unsqueeze(-1), mask_token, tokens)
        grid = (height // self.patch_size, width // self.patch_size)
        return tokens + self.patch_pos_embed(*grid).to(tokens.dtype)

    def prefix_tokens(self, batch_size: int) -> torch.Tensor:
        """The cls token (with its position embedding) followed by the registers: (B, 1 + R, D)."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch_size, -1, -1)
        if self.register_tokens is None:
            return cls
        return torch.cat([cls, self.register_tokens.expand(batch_size, -1, -1)], dim=1)

    def forward_blocks(self, tokens: torch.Tensor, packing: PackedLayout | None = None) -> torch.Tensor:
        """Run all blocks on any token sequence (B, T, D) -> (B, T, D); no final norm.
        ``packing``: tokens are packed images, (1, S, D) (:mod:`foveal.nn.packing`)."""
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, packing, use_reentrant=False)
            else:
                tokens = block(tokens, packing)
        return tokens

    def _embed(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        patches = self.prepare_tokens(x, masks)
        return torch.cat([self.prefix_tokens(patches.shape[0]).to(patches.dtype), patches], dim=1)

    # ----------------------------------------------------------------------------- outputs

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict:
        """Encode images.

        Args:
            x: (B, C, H, W).
            masks: optional bool (B, N) of patches to replace by the mask token.

        Returns:
            ``x_norm_clstoken`` (B, D), ``x_norm_regtokens`` (B, R, D), ``x_norm_patchtokens``
            (B, N, D), ``x_prenorm`` (B, 1 + R + N, D) before the final norm, and ``masks``.
        """
        return self._outputs(self.forward_blocks(self._embed(x, masks)), masks)

    def _outputs(self, x_prenorm: torch.Tensor, masks: torch.Tensor | None) -> dict:
        """`forward_features`' dict from the blocks' output (B, 1 + R + N, D)."""
        x_norm = self.norm(x_prenorm)
        first_patch = self.num_prefix_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1:first_patch],
            "x_norm_patchtokens": x_norm[:, first_patch:],
            "x_prenorm": x_prenorm,
            "masks": masks,
        }

    def forward_features_list(
        self,
        xs: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor | None] | None = None,
        backend: str = "grouped",
    ) -> list[dict]:
        """`forward_features` of several image batches (e.g. global and local crops) in ONE pass:
        their tokens packed into one sequence with block-diagonal attention (DINOv2's
        ``forward_features_list``). The same outputs as separate calls, up to float rounding
        (and the draws of stochastic depth, which are per image in both).

        Args:
            xs: batches (B_i, C, H_i, W_i).
            masks: per batch, None or bool (B_i, N_i).
            backend: how attention is restricted (:data:`foveal.nn.packing.BACKENDS`).
        """
        masks = list(masks) if masks is not None else [None] * len(xs)
        if len(masks) != len(xs):
            raise ValueError(f"{len(xs)} batches but {len(masks)} masks")
        packed, layout = pack([self._embed(x, m) for x, m in zip(xs, masks, strict=True)], backend)
        prenorm = unpack(self.forward_blocks(packed, layout), layout)
        return [self._outputs(x_prenorm, mask) for x_prenorm, mask in zip(prenorm, masks, strict=True)]

    def forward_head(self, features: dict, pre_logits: bool = False) -> torch.Tensor:
        """Pool ``forward_features`` output ((B, D) cls or mean patch token) and apply the head."""
        if self.global_pool == "avg":
            pooled = features["x_norm_patchtokens"].mean(dim=1)
        else:
            pooled = features["x_norm_clstoken"]
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes) logits, or pooled (B, D) features without a head."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head (e.g. for fine-tuning); ``num_classes=0`` removes it."""
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of selected blocks, as DINOv2's ``get_intermediate_layers``.

        Args:
            x: (B, C, H, W).
            n: the last ``n`` blocks (int) or block indices (negative counts from the end).
            reshape: return patch tokens as (B, D, H/p, W/p) instead of (B, N, D).
            return_class_token: pair each output with its (B, D) cls token.
            norm: apply the final LayerNorm to each output.

        Returns:
            Tuple of patch-token tensors, or of (patch_tokens, cls_token) pairs, in block order.
        """
        wanted = self._block_indices(n)
        tokens = self._embed(x)
        outputs = []
        for i, block in enumerate(self.blocks[: max(wanted) + 1]):
            tokens = block(tokens)
            if i in wanted:
                outputs.append(self.norm(tokens) if norm else tokens)
        class_tokens = [out[:, 0] for out in outputs]
        patches = [out[:, self.num_prefix_tokens :] for out in outputs]
        if reshape:
            grid_h, grid_w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
            patches = [
                p.reshape(p.shape[0], grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous() for p in patches
            ]
        if return_class_token:
            return tuple(zip(patches, class_tokens, strict=True))
        return tuple(patches)

    def _block_indices(self, n: int | Sequence[int]) -> set[int]:
        depth = len(self.blocks)
        if isinstance(n, int):
            if not 0 < n <= depth:
                raise ValueError(f"n must be in [1, {depth}], got {n}")
            return set(range(depth - n, depth))
        if not n or any(not -depth <= i < depth for i in n):
            raise ValueError(f"block indices must be in [-{depth}, {depth}), got {list(n)}")
        return {i % depth for i in n}

    # ----------------------------------------------------------------------------- training

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay (tokens and position table)."""
        names = {"pos_embed", "cls_token", "mask_token"}
        if self.register_tokens is not None:
            names.add("register_tokens")
        return names

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style regex groups for layer-wise LR decay: the stem, then one group per block.

        With ``coarse=False`` the final norm and head form a last group after all blocks.
        """
        stem = r"^(?:" + "|".join(STEM_PARAMS) + r")(?:\.|$)"
        if coarse:
            return {"stem": stem, "blocks": r"^blocks\.(\d+)"}
        return {"stem": stem, "blocks": [(r"^blocks\.(\d+)\.", None), (r"^(?:norm|head)\.", (99999,))]}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward to save memory (non-reentrant checkpoint)."""
        self.grad_checkpointing = enable


def layer_id_for_param(name: str, num_layers: int) -> int:
    """Layer index of a parameter for layer-wise LR decay (BEiT/MAE ``get_layer_id_for_vit``).

    Args:
        name: parameter name; a wrapper prefix such as ``backbone.`` is allowed.
        num_layers: number of blocks of the backbone.

    Returns:
        0 for the stem (patch embed, tokens, position table), ``i + 1`` for ``blocks.i``, and
        ``num_layers + 1`` for everything else (final norm, heads, decoders).
    """
    match = _BLOCK_RE.search(name)
    if match:
        return int(match.group(1)) + 1
    if _STEM_RE.search(name):
        return 0
    return num_layers + 1
