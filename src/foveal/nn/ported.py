"""Backbones of ported Hugging Face models, registered by name from a plain description.

A port (``foveal port hf``) writes one of two descriptions; this module turns it into a
builder in :mod:`foveal.nn.registry` so that ``create_backbone(name)`` works like for the
built-in ViTs. It knows nothing of workspaces: every path it receives is absolute.

* ``{"kind": "native_vit", "vit_kwargs": {...}, "weights": "/abs/backbone.safetensors"}``: a
  :class:`~foveal.nn.vit.VisionTransformer` with converted weights (ViT, DINOv2, ViT-MAE); no
  ``transformers`` at run time.
* ``{"kind": "hf", "folder": "/abs/hf", "task": "image-classification", "image_size": 224}``:
  the Hugging Face model behind :class:`~foveal.nn.hf_backbone.HFBackbone`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import nn

from foveal.nn.registry import _BACKBONES, register_backbone

logger = logging.getLogger(__name__)

PORTED_KINDS = ("native_vit", "hf")


def build_native_vit(spec: Mapping[str, Any], drop_path_rate: float = 0.0) -> nn.Module:
    """The converted ViT of ``spec`` with its weights loaded (built at its own image size; other
    sizes resample the position table on the fly)."""
    from safetensors.torch import load_file

    from foveal.nn.vit import VisionTransformer

    kwargs = dict(spec["vit_kwargs"])
    kwargs["drop_path_rate"] = drop_path_rate
    model = VisionTransformer(**kwargs)
    state = load_file(spec["weights"], device="cpu")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k != "mask_token"]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{spec['weights']}: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model


def build_hf(spec: Mapping[str, Any], drop_path_rate: float = 0.0) -> nn.Module:
    """The HF model of ``spec`` (weights from its folder) behind the backbone interface."""
    import json
    from pathlib import Path

    from foveal.nn.hf_backbone import HFBackbone, load_hf_model

    config = json.loads((Path(spec["folder"]) / "config.json").read_text())
    overrides = {"drop_path_rate": drop_path_rate} if isinstance(config.get("drop_path_rate"), float) else {}
    model = load_hf_model(spec["folder"], spec["task"], **overrides)
    # Like any freshly built module it starts in training mode: Lightning keeps the modes it finds,
    # and an eval-mode backbone would fine-tune with frozen BatchNorm statistics and no dropout.
    return HFBackbone(model, spec["task"], spec.get("image_size")).train()


def register_ported_backbone(name: str, spec: Mapping[str, Any]) -> None:
    """Register ``create_backbone(name, img_size=..., drop_path_rate=...)`` for a ported model.

    ``img_size`` is accepted for the classification network's sake and not used: both kinds run
    at any size their architecture allows.
    """
    kind = spec.get("kind")
    if kind not in PORTED_KINDS:
        raise ValueError(f"backbone {name!r}: unknown ported kind {kind!r}; expected one of {PORTED_KINDS}")
    frozen = dict(spec)
    build = build_native_vit if kind == "native_vit" else build_hf

    def builder(img_size: Any = None, drop_path_rate: float = 0.0, **_: Any) -> nn.Module:
        return build(frozen, drop_path_rate=drop_path_rate)

    builder.__doc__ = f"ported {kind} backbone {name!r}"
    builder.ported_spec = frozen  # type: ignore[attr-defined]
    previous = _BACKBONES.get(name)
    if previous is not None and getattr(previous, "ported_spec", None) == frozen:
        return  # the same port registered again (a second command in one process): nothing to do
    if previous is not None and getattr(previous, "ported_spec", None) is not None:
        del _BACKBONES[name]  # a re-ported model replaces its older self without a warning
    register_backbone(name)(builder)


def unregister_ported_backbone(name: str) -> None:
    """Forget a ported backbone (built-in backbones are never removed)."""
    if getattr(_BACKBONES.get(name), "ported_spec", None) is not None:
        del _BACKBONES[name]
