"""Sequence packing: crops of several sizes through one ViT pass with block-diagonal attention.

DINOv2 (and TAO's ``use_custom_attention`` with xFormers) runs the global and local crops of a
step through the student in one pass: the tokens of every image are concatenated into one
sequence and attention is restricted to each image's own tokens (a block-diagonal mask). Every
per-token layer (norms, qkv and output projections, the MLP) then runs once over all crops, in
larger matrix products with fewer kernel launches; only attention is per image.

`PackedLayout` records the groups (``B_i`` images of ``T_i`` tokens each, one group per crop
size) of a packed ``(1, sum B_i T_i, D)`` sequence. `packed_attention` computes the block-diagonal
attention by one of:

* ``"grouped"`` (default): SDPA once per group, on ``(B_i, heads, T_i, d)``: exactly the blocks,
  nothing outside them computed, and the flash / memory-efficient kernels apply on a GPU.
* ``"mask"``: SDPA over the whole sequence with a dense boolean block-diagonal mask: the
  reference formulation (memory grows with the square of the packed length; tests only).
* ``"flex"``: FlexAttention with a document mask (PyTorch >= 2.5): sparse blocks; it needs
  ``torch.compile`` to be fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

BACKENDS = ("grouped", "mask", "flex")


@dataclass
class PackedLayout:
    """Groups of equal-length sequences in one packed sequence: ``[(images, tokens per image), ...]``."""

    groups: list[tuple[int, int]]
    backend: str = "grouped"
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"packing backend must be one of {BACKENDS}, got {self.backend!r}")

    @property
    def length(self) -> int:
        return sum(b * t for b, t in self.groups)

    @property
    def num_images(self) -> int:
        return sum(b for b, _ in self.groups)

    def image_ids(self, device: torch.device) -> torch.Tensor:
        """(S,) the index of the image each packed token belongs to."""
        key = ("ids", device)
        if key not in self._cache:
            lengths = torch.tensor([t for b, t in self.groups for _ in range(b)], device=device)
            self._cache[key] = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
        return self._cache[key]

    def per_token(self, per_image: torch.Tensor) -> torch.Tensor:
        """Spread a per-image tensor (n_images, ...) over the packed tokens: (S, ...)."""
        return per_image[self.image_ids(per_image.device)]


def pack(token_groups: Sequence[torch.Tensor], backend: str = "grouped") -> tuple[torch.Tensor, PackedLayout]:
    """``[(B_i, T_i, D), ...]`` -> ``((1, sum B_i T_i, D), layout)``."""
    layout = PackedLayout([(int(t.shape[0]), int(t.shape[1])) for t in token_groups], backend)
    return torch.cat([t.reshape(1, -1, t.shape[-1]) for t in token_groups], dim=1), layout


def unpack(packed: torch.Tensor, layout: PackedLayout) -> list[torch.Tensor]:
    """Inverse of `pack`: ``(1, S, D)`` -> ``[(B_i, T_i, D), ...]``."""
    sizes = [b * t for b, t in layout.groups]
    return [part.reshape(b, t, -1) for part, (b, t) in zip(packed[0].split(sizes), layout.groups, strict=True)]


def _grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    heads, dim = q.shape[1], q.shape[-1]
    sizes = [images * tokens for images, tokens in layout.groups]
    out = []
    for qi, ki, vi, (images, tokens) in zip(q[0].split(sizes, 1), k[0].split(sizes, 1), v[0].split(sizes, 1),
                                           layout.groups, strict=True):  # fmt: skip
        # (heads, B_i T_i, d) -> (B_i, heads, T_i, d)
        qi, ki, vi = (t.reshape(heads, images, tokens, dim).transpose(0, 1) for t in (qi, ki, vi))
        part = F.scaled_dot_product_attention(qi, ki, vi)
        out.append(part.transpose(0, 1).reshape(heads, images * tokens, dim))
    return torch.cat(out, dim=1).unsqueeze(0)


def _mask(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    ids = layout.image_ids(q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=ids[:, None] == ids[None, :])


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    ids = layout.image_ids(q.device)
    key = ("flex", q.device)
    if key not in layout._cache:

        def same_image(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            return ids[q_idx] == ids[kv_idx]

        length = layout.length
        layout._cache[key] = create_block_mask(same_image, None, None, length, length, device=str(q.device))
    return flex_attention(q, k, v, block_mask=layout._cache[key])


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """Block-diagonal attention of packed ``(1, heads, S, d)`` queries, keys and values."""
    if layout.backend == "mask":
        return _mask(q, k, v, layout)
    if layout.backend == "flex":
        return _flex(q, k, v, layout)
    return _grouped(q, k, v, layout)
