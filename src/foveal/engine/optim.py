"""Optimizer parameter groups: one weight-decay rule and one layer-wise decay for every network.

No weight decay (MAE, DINOv2, BEiT, timm alike) on

* every tensor of at most one dimension: biases, norm weights, LayerScale gammas;
* every name a module declares in its ``no_weight_decay()`` (tokens, position tables, GRN's
  gamma/beta...), collected from every module of the model with its path prefixed, so an
  encoder's tokens keep their exemption inside a MAE or a classifier.

Layer-wise learning-rate decay (BEiT): a parameter of the backbone gets
``layer_decay ** (n_blocks + 1 - layer_id)`` from the backbone's own ``layer_id_for_param``
(0 stem, k for block k-1, n_blocks + 1 for the final norm); everything outside the backbone
(heads, decoders) is at the top, scale 1.

Each group carries ``lr_scale`` and ``wd_scale`` (0 or 1) besides ``params`` and
``weight_decay``; a loop that sets lr/wd per step multiplies its scheduled values by them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from torch import nn


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names every module of ``model`` excludes from weight decay."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        declared = getattr(module, "no_weight_decay", None)
        if callable(declared):
            names |= {f"{prefix}.{n}" if prefix else n for n in declared()}
    return names


def _backbone(model: nn.Module, path: str | None) -> Any:
    if not path:
        return None
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def param_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    layer_decay: float = 1.0,
    backbone: str | None = "backbone",
    lr_multipliers: Mapping[str, float] | None = None,
    tag: Callable[[str], Hashable] | None = None,
    skip_names: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """AdamW/SGD parameter groups of the trainable parameters of ``model``.

    Args:
        model: the module the optimizer trains.
        weight_decay: the decay of the groups that decay (``wd_scale`` 1).
        layer_decay: layer-wise LR decay through the backbone's blocks; 1.0 = off.
        backbone: dotted path of the backbone inside ``model`` (for layer ids).
        lr_multipliers: extra LR factors for parameters whose name contains a key (DINOv2's
            ``{"patch_embed": 0.2}``).
        tag: a function of the parameter name whose value splits groups further and is stored
            under ``"tag"`` (nvdinov2 marks the DINO head's last layer).
        skip_names: no weight decay on parameters whose name contains one of these (TAO's
            ``train.optim.skip_names``), besides the rule above.

    Returns:
        ``[{"params", "weight_decay", "lr_scale", "wd_scale", "tag"}, ...]``, parameters in
        model order within each group.
    """
    no_decay = no_weight_decay_names(model)
    body = _backbone(model, backbone) if layer_decay < 1.0 else None
    if layer_decay < 1.0 and (body is None or not hasattr(body, "layer_id_for_param")):
        raise ValueError(f"layer-wise decay needs a backbone at {backbone!r} with layer_id_for_param()")
    prefix = f"{backbone}."
    top = body.n_blocks + 1 if body is not None else 0
    groups: dict[tuple[float, float, Hashable], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skipped = any(part in name for part in skip_names)
        wd_scale = 0.0 if param.ndim <= 1 or name in no_decay or skipped else 1.0
        lr_scale = 1.0
        if body is not None and name.startswith(prefix):
            lr_scale = layer_decay ** (top - body.layer_id_for_param(name[len(prefix) :]))
        for part, factor in (lr_multipliers or {}).items():
            if part in name:
                lr_scale *= factor
        label = tag(name) if tag is not None else None
        key = (lr_scale, wd_scale, label)
        group = groups.setdefault(
            key,
            {
                "params": [],
                "weight_decay": weight_decay * wd_scale,
                "lr_scale": lr_scale,
                "wd_scale": wd_scale,
                "tag": label,
            },
        )
        group["params"].append(param)
    return list(groups.values())
