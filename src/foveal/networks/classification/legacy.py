"""Read the config stored in a checkpoint written before classification took TAO's key names.

Foveal 0.x named some classification keys its own way (``dataset.augmentation.input_size``,
``model.head.num_classes``, ``model.backbone.freeze``, ``train.optim.optimizer`` ...). Their
checkpoints still evaluate, run and export: :func:`migrate_config` maps the old keys to TAO's
and drops the augmentation keys TAO has no counterpart for (training-time only).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

# old dotted key -> new dotted key
RENAMED_KEYS = {
    "dataset.augmentation.input_size": "dataset.img_size",
    "model.head.num_classes": "dataset.num_classes",
    "model.backbone.freeze": "model.backbone.freeze_backbone",
    "dataset.augmentation.label_smoothing": "model.head.loss.label_smooth_val",
    "train.optim.optimizer": "train.optim.optim",
    "train.optim.scheduler": "train.optim.policy",
    "train.optim.milestones": "train.optim.policy_params.milestones",
    "train.optim.gamma": "train.optim.policy_params.gamma",
    "train.ema.enable": "train.enable_ema",
    "train.ema.decay": "train.ema_decay",
}
# old augmentation keys -> where TAO's schema puts the same idea (hints only: values do not map 1:1)
SUCCESSOR_KEYS = {
    "dataset.augmentation.scale": "dataset.augmentation.with_random_crop",
    "dataset.augmentation.ratio": "dataset.augmentation.with_random_crop",
    "dataset.augmentation.hflip": "dataset.augmentation.random_flip.hflip_probability",
    "dataset.augmentation.color_jitter": "dataset.augmentation.random_color",
    "dataset.augmentation.randaugment": "dataset.augmentation.random_aug.policy",
    "dataset.augmentation.mixup": "dataset.augmentation.mixup_cutmix and mixup_alpha",
    "dataset.augmentation.cutmix": "dataset.augmentation.mixup_cutmix and cutmix_alpha",
}
# old keys with no TAO counterpart (training-time augmentation): dropped
_DROPPED = (
    "dataset.augmentation.scale",
    "dataset.augmentation.ratio",
    "dataset.augmentation.hflip",
    "dataset.augmentation.color_jitter",
    "dataset.augmentation.randaugment",
    "dataset.augmentation.mixup",
    "dataset.augmentation.cutmix",
)


def _pop(data: dict[str, Any], key: str) -> tuple[bool, Any]:
    *parents, last = key.split(".")
    node: Any = data
    for part in parents:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    if isinstance(node, dict) and last in node:
        return True, node.pop(last)
    return False, None


def _put(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node.setdefault(last, value)


def migrate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's classification config in TAO's key names (unchanged when already so)."""
    data = copy.deepcopy(dict(config))
    if not _is_legacy(data):
        return data
    for old, new in RENAMED_KEYS.items():
        found, value = _pop(data, old)
        if found:
            if old == "train.optim.scheduler" and value == "step":
                value = "multistep"
            _put(data, new, value)
    for old in _DROPPED:
        _pop(data, old)
    head = data.get("model", {}).get("head", {})
    if head.get("type") in ("linear", "mlp"):
        head["type"] = "TAOLinearClsHead"
    train = data.get("train", {})
    if isinstance(train.get("ema"), dict) and not train["ema"]:
        train.pop("ema")
    return data


def _is_legacy(data: Mapping[str, Any]) -> bool:
    aug = data.get("dataset", {}).get("augmentation", {})
    return "input_size" in aug or "num_classes" in data.get("model", {}).get("head", {})
