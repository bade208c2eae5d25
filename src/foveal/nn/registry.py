"""Backbone registry: named ViT configurations that networks build by name.

Sizes follow the papers that released them:

* ViT (Dosovitskiy et al., arXiv:2010.11929) and DeiT (Touvron et al., arXiv:2012.12877) for
  tiny/small/base/large/huge; the ``*_patch16`` and ``vit_huge_patch14`` names are the encoders of
  MAE (He et al., "Masked Autoencoders Are Scalable Vision Learners", arXiv:2111.06377): no
  LayerScale, LayerNorm eps 1e-6.
* DINOv2 (Oquab et al., arXiv:2304.07193) for ``vit_t/s/b/l/g`` (aliases ``vit_*_patch14``): patch
  14, LayerScale 1e-5, and for ViT-g (1536 wide, 40 blocks, 24 heads) the fused SwiGLU FFN.

Every builder takes keyword overrides for any ``VisionTransformer`` argument, e.g.
``create_backbone("vit_s", patch_size=16, img_size=518, num_register_tokens=4)``.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Callable
from typing import Any

from torch import nn

from foveal.nn.vit import VisionTransformer

logger = logging.getLogger(__name__)

BackboneBuilder = Callable[..., nn.Module]
_BACKBONES: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator registering ``builder(**overrides) -> nn.Module`` under ``name``.

    A second registration under the same name replaces the first and logs a warning.
    """

    def decorator(builder: BackboneBuilder) -> BackboneBuilder:
        if name in _BACKBONES and _BACKBONES[name] is not builder:
            logger.warning("backbone %r registered twice; the later one wins", name)
        _BACKBONES[name] = builder
        return builder

    return decorator


def create_backbone(name: str, **overrides: Any) -> Any:
    """Build the registered backbone ``name`` with keyword ``overrides``: an ``nn.Module`` with the
    :class:`~foveal.nn.backbone.Backbone` interface (typed ``Any``: its concrete class varies).

    Raises:
        KeyError: unknown name; the message suggests the closest registered names.
    """
    if name not in _BACKBONES:
        close = difflib.get_close_matches(name, _BACKBONES, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(list_backbones())}"
        raise KeyError(f"unknown backbone {name!r}{hint}")
    return _BACKBONES[name](**overrides)


def list_backbones(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell-style ``pattern`` (``"vit_*14"``)."""
    names = sorted(_BACKBONES)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


# name -> (embed_dim, depth, num_heads)
_SIZES = {
    # CPU-sized (not in the papers): the demo and CI pretrain it in minutes on 2 cores.
    "micro": (128, 4, 4),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
    "giant": (1536, 40, 24),
}


def _vit(size: str, defaults: dict[str, Any], overrides: dict[str, Any]) -> VisionTransformer:
    embed_dim, depth, num_heads = _SIZES[size]
    kwargs: dict[str, Any] = {"img_size": 224, "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads}
    kwargs.update(defaults)
    kwargs.update(overrides)
    return VisionTransformer(**kwargs)


def _register_mae(name: str, size: str, patch_size: int) -> None:
    defaults = {"patch_size": patch_size, "norm_eps": 1e-6}

    def build(**overrides: Any) -> VisionTransformer:
        return _vit(size, defaults, overrides)

    build.__doc__ = f"ViT-{size} /{patch_size} as in MAE (no LayerScale)."
    register_backbone(name)(build)


def _register_dinov2(names: tuple[str, ...], size: str) -> None:
    defaults: dict[str, Any] = {"patch_size": 14, "norm_eps": 1e-6, "init_values": 1e-5}
    if size == "giant":
        defaults["ffn_layer"] = "swiglufused"

    def build(**overrides: Any) -> VisionTransformer:
        return _vit(size, defaults, overrides)

    build.__doc__ = f"ViT-{size} /14 as in DINOv2 (LayerScale 1e-5)."
    for name in names:
        register_backbone(name)(build)


for _size in ("tiny", "small", "base", "large"):
    _register_mae(f"vit_{_size}_patch16", _size, 16)
_register_mae("vit_huge_patch14", "huge", 14)
_register_mae("vit_micro_patch4", "micro", 4)

for _short, _size in (("t", "tiny"), ("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant")):
    _register_dinov2((f"vit_{_short}", f"vit_{_size}_patch14"), _size)
