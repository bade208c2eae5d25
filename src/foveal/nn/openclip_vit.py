"""SigLIP-CLIPA image towers (TAO's "NV-CLIP" backbones): open_clip's ``VisionTransformer``, natively.

Training recipe: Zhai et al., "Sigmoid Loss for Language Image Pre-Training" (SigLIP, arXiv:2303.15343)
and Li et al., "An Inverse Scaling Law for CLIP Training" (CLIPA, arXiv:2305.07017). Architecture: a
pre-norm ViT (Dosovitskiy et al., arXiv:2010.11929) as open_clip 2.30 builds it for TAO's configs
(tao_pytorch_backend ``cv/backbone_v2/open_clip.py``): bias-free patch conv, a class embedding, the
fixed 2-D sin-cos table of MAE (He et al., arXiv:2111.06377) with a zero class row, no ``ln_pre``,
exact GELU, LayerNorm eps 1e-5, mean of the patch tokens (class token excluded), ``ln_post`` on the
pooled vector and a bias-free projection to ``output_dim``.

Key names are open_clip's under ``visual.`` (``visual.conv1.weight``,
``visual.transformer.resblocks.{i}.attn.in_proj_weight``, ``visual.proj``, ...), and ``head`` is TAO's
classifier, so TAO and open_clip checkpoints load through :func:`openclip_vit_checkpoint_filter_fn`.
Attention uses ``F.scaled_dot_product_attention`` on ``nn.MultiheadAttention``'s parameter layout.

Inputs of another size than the built one resample the table as TAO does (bicubic,
``scale_factor=(g' + 0.1) / g``); TAO's own SigLIP forward is square-only, this one is not.

Not reproduced: TAO 6.25's replacement forward transposes the tokens to (N, B, D) before open_clip
2.30's batch-first transformer, so its attention mixes the samples of a batch at each position
instead of the tokens of an image. This module computes what open_clip's own ``encode_image`` does.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from foveal.nn.layers import DropPath
from foveal.nn.pos_embed import build_2d_sincos_pos_embed, grid_from_num_patches
from foveal.nn.registry import register_backbone
from foveal.nn.state_dict import report_unloaded, unwrap_state_dict
from foveal.nn.tao_vit import resample_pos_embed_scale_factor

logger = logging.getLogger(__name__)

_STEM_RE = re.compile(r"(?:^|\.)visual\.(?:conv1|class_embedding|positional_embedding)(?:\.|$)")
_BLOCK_RE = re.compile(r"(?:^|\.)visual\.transformer\.resblocks\.(\d+)\.")

# TAO name -> (img_size, width, depth, heads, output_dim); patch 14, MLP ratio 4 for all three.
SIGLIP_CLIPA_CONFIGS: dict[str, tuple[int, int, int, int, int]] = {
    "vit_l_14_siglip_clipa_224": (224, 1024, 24, 16, 768),
    "vit_l_14_siglip_clipa_336": (336, 1024, 24, 16, 768),
    "vit_h_14_siglip_clipa_224": (224, 1280, 32, 16, 1024),
}


class MultiheadSelfAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s parameters (``in_proj_weight`` rows q, k, v)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def reset_parameters(self) -> None:
        """``nn.MultiheadAttention``'s init: Xavier-uniform in-projection, zero biases, default out_proj."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, W) -> (B, N, W)."""
        b, n, w = x.shape
        # (B, N, 3W) -> (3, B, heads, N, W/heads): each of q, k, v is head-major, as in MHA.
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, w // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class ResidualAttentionBlock(nn.Module):
    """open_clip's pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); no LayerScale."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = MultiheadSelfAttention(width, num_heads)
        self.ln_2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", nn.GELU()),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )
        # Stochastic depth is a Foveal fine-tuning option (off by default, as open_clip has none).
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, W) -> (B, N, W)."""
        x = x + self.drop_path(self.attn(self.ln_1(x)))
        return x + self.drop_path(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """The stack of blocks (``resblocks``), with optional activation checkpointing."""

    def __init__(
        self, width: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float, norm_eps: float
    ) -> None:
        super().__init__()
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, num_heads, mlp_ratio, rate, norm_eps) for rate in rates
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, W) -> (B, N, W)."""
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class VisualTower(nn.Module):
    """open_clip's image tower for TAO's configs; parameters named as open_clip names them."""

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        in_chans: int,
        width: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        output_dim: int,
        drop_path_rate: float,
        norm_eps: float,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.conv1 = nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        # Fixed sin-cos table: a Parameter that is not trained but is saved, as open_clip stores it.
        self.positional_embedding = nn.Parameter(
            torch.zeros(1 + self.grid[0] * self.grid[1], width), requires_grad=False
        )
        self.transformer = Transformer(width, depth, num_heads, mlp_ratio, drop_path_rate, norm_eps)
        self.ln_post = nn.LayerNorm(width, eps=norm_eps)
        self.proj = nn.Parameter(torch.empty(width, output_dim))

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The (1 + gh*gw, W) table for a patch grid: as built, or resampled the TAO way."""
        if grid == self.grid:
            return self.positional_embedding
        patch_pos = resample_pos_embed_scale_factor(self.positional_embedding[1:], self.grid, grid)
        return torch.cat([self.positional_embedding[:1], patch_pos], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> tokens after the last block, (B, 1 + N, W) with the class token first."""
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"input size {(height, width)} is not a multiple of patch size {self.patch_size}"
            )
        patches = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        grid = (int(height) // self.patch_size, int(width) // self.patch_size)
        tokens = torch.cat([cls, patches], dim=1) + self.pos_embed_for(grid).to(patches.dtype)
        return self.transformer(tokens)


class SigLIPCLIPAViT(nn.Module):
    """SigLIP-CLIPA ViT backbone with the Foveal interface; the image tower lives in ``visual``.

    ``embed_dim`` is the projected width ``output_dim`` (what TAO's head reads), while the patch
    tokens keep the transformer width ``width``: open_clip projects only the pooled vector.

    Args:
        img_size: side of the square input the fixed table is built for.
        patch_size: side of the square patches.
        in_chans: input channels (open_clip and TAO: 3).
        width: transformer width W.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width as a multiple of W.
        output_dim: projected feature width (``visual.proj`` is (W, output_dim)).
        num_classes: size of TAO's linear ``head`` on the projected feature; 0 means none.
        drop_path_rate: stochastic depth of the last block (Foveal option; open_clip has none).
        norm_eps: LayerNorm epsilon (open_clip: 1e-5).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 14,
        in_chans: int = 3,
        width: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        output_dim: int = 768,
        num_classes: int = 0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.visual = VisualTower(
            img_size,
            patch_size,
            in_chans,
            width,
            depth,
            num_heads,
            mlp_ratio,
            output_dim,
            drop_path_rate,
            norm_eps,
        )
        self.img_size = (img_size, img_size)
        self.patch_size = patch_size
        self.width = width
        self.embed_dim = self.num_features = output_dim
        self.head: nn.Module = nn.Linear(output_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @property
    def n_blocks(self) -> int:
        return len(self.visual.transformer.resblocks)

    @torch.no_grad()
    def init_weights(self) -> None:
        """open_clip's init: PyTorch defaults, MHA's Xavier in-projection, N(0, W^-1/2) class token and
        projection, and the fixed sin-cos table (class row zeros, column half then row half)."""
        visual = self.visual
        scale = self.width**-0.5
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.LayerNorm)):
                module.reset_parameters()
        for module in self.modules():
            if isinstance(module, MultiheadSelfAttention):
                module.reset_parameters()
        nn.init.normal_(visual.class_embedding, std=scale)
        nn.init.normal_(visual.proj, std=scale)
        visual.positional_embedding.copy_(build_2d_sincos_pos_embed(*visual.grid, self.width)[0])

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Encode images.

        Args:
            x: (B, C, H, W), H and W multiples of ``patch_size``.
            masks: unsupported; must be None.

        Returns:
            ``x_norm_clstoken`` (B, output_dim): ``ln_post(mean of patch tokens) @ proj``, TAO's feature;
            ``x_norm_patchtokens`` (B, N, W): ``ln_post`` of each patch token, not projected;
            ``x_prenorm`` (B, 1 + N, W): the tokens after the last block, class token first.
        """
        if masks is not None:
            raise ValueError("SigLIPCLIPAViT does not support masks")
        tokens = self.visual(x)
        patches = tokens[:, 1:]
        pooled = self.visual.ln_post(patches.mean(dim=1)) @ self.visual.proj
        return {
            "x_norm_clstoken": pooled,
            "x_norm_patchtokens": self.visual.ln_post(patches),
            "x_prenorm": tokens,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes) logits, or the (B, output_dim) feature without a head."""
        return self.head(self.forward_features(x)["x_norm_clstoken"])

    def no_weight_decay(self) -> set[str]:
        """The class embedding and the (frozen) table, as open_clip's ``no_weight_decay``."""
        return {"visual.class_embedding", "visual.positional_embedding"}

    def layer_id_for_param(self, name: str) -> int:
        """0 for conv1/class/table, i+1 for ``resblocks.i``, ``n_blocks + 1`` for ln_post, proj, head."""
        match = _BLOCK_RE.search(name)
        if match:
            return int(match.group(1)) + 1
        if _STEM_RE.search(name):
            return 0
        return self.n_blocks + 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (non-reentrant checkpoint)."""
        self.visual.transformer.grad_checkpointing = enable


def _unwrap(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict inside a training checkpoint (``{"state_dict": ...}`` or ``{"model": ...}``)."""
    return unwrap_state_dict(checkpoint)


def _tower_prefix(state: Mapping[str, torch.Tensor]) -> str:
    """Prefix of the image tower's keys, found by ``class_embedding`` (only open_clip's tower has it)."""
    prefixes = sorted(
        (
            k[: -len("class_embedding")]
            for k in state
            if k == "class_embedding" or k.endswith(".class_embedding")
        ),
        key=len,
    )
    if not prefixes:
        raise ValueError("no open_clip image tower (class_embedding) found in the checkpoint")
    if len(prefixes) > 1:
        logger.info("checkpoint holds %d image towers; using prefix %r", len(prefixes), prefixes[0])
    return prefixes[0]


def openclip_vit_checkpoint_filter_fn(
    state_dict: Mapping[str, Any], model: SigLIPCLIPAViT
) -> dict[str, torch.Tensor]:
    """Map an open_clip / TAO SigLIP-CLIPA checkpoint onto :class:`SigLIPCLIPAViT`.

    Accepted layouts (training checkpoints are unwrapped from ``state_dict``/``model`` first):

    * an open_clip CLIP state dict: ``visual.*`` plus the text tower (``transformer.*``,
      ``token_embedding``, ``positional_embedding``, ``ln_final``, ``text_projection``, ``logit_*``),
      which is dropped (debug log);
    * TAO's module (``model.visual.*``, ``head.*``) and a TAO 6.25 checkpoint (``model.model.visual.*``,
      ``model.head.*``); ``head`` is kept when the model has one of the same shape;
    * a bare image-tower state dict (``conv1.weight``, ``class_embedding``, ...).

    A table of another grid is resampled to the model's with TAO's forward-time resize.

    Args:
        state_dict: the checkpoint.
        model: the target backbone (only its keys, shapes and grid are read).

    Returns:
        Keys and tensors that ``model.load_state_dict`` takes.
    """
    state = _unwrap(state_dict)
    tower = _tower_prefix(state)
    outer = tower.removesuffix("visual.")
    # TAO's module keeps open_clip's CLIP in ``model`` and its head beside it, one level up.
    head_prefix = outer.removesuffix("model.")
    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if key.startswith(head_prefix + "head."):
            renamed[key[len(head_prefix) :]] = value
        elif key.startswith(tower):
            renamed["visual." + key[len(tower) :]] = value
        else:
            dropped.append(key)
    if dropped:
        logger.debug(
            "dropped %d keys outside the image tower (text tower, logit scale): %s", len(dropped), dropped[:8]
        )

    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    absent, mismatched = [], []
    for key, value in renamed.items():
        if key == "visual.positional_embedding" and key in expected and value.shape != expected[key].shape:
            value = _resize_table(value, model.visual.grid)
        if key not in expected:
            absent.append(key)
        elif value.shape != expected[key].shape:
            mismatched.append(key)
        else:
            out[key] = value
    report_unloaded(absent, mismatched)
    return out


def _resize_table(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample a (1 + g0*g0, W) table to ``grid`` as the checkpoint's model would at that input size."""
    old_grid = grid_from_num_patches(table.shape[0] - 1)
    logger.info("resampling positional_embedding from grid %s to %s", old_grid, grid)
    return torch.cat([table[:1], resample_pos_embed_scale_factor(table[1:], old_grid, grid)], dim=0)


def _register(name: str, img_size: int, width: int, depth: int, num_heads: int, output_dim: int) -> None:
    defaults: dict[str, Any] = {
        "img_size": img_size,
        "width": width,
        "depth": depth,
        "num_heads": num_heads,
        "output_dim": output_dim,
    }

    def build(**overrides: Any) -> SigLIPCLIPAViT:
        return SigLIPCLIPAViT(**{**defaults, **overrides})

    build.__doc__ = f"TAO's {name}: open_clip ViT /14, W={width}, {depth} blocks, {output_dim}-d feature."
    register_backbone(name)(build)


for _name, _config in SIGLIP_CLIPA_CONFIGS.items():
    _register(_name, *_config)
