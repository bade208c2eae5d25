"""Cross-field checks and derived values of the classification spec (its ``resolve`` step)."""

from __future__ import annotations

import copy
import difflib
import re

from foveal.errors import SpecError, SpecIssue
from foveal.networks.classification.config import (
    AugmentationConfig,
    ClassificationConfig,
    ClassificationTrainConfig,
)
from foveal.spec.common import check_sections

CONVNEXT_STRIDE = 32  # ConvNeXt V2 downsamples by 32 overall
HIERA_INPUT = 224  # Hiera's learned position table is not resampled (TAO neither)
# TAO names Foveal does not build (yet): one line saying so, with what exists.
TAO_FAMILIES_NOT_BUILT = (
    "faster_vit_",
    "fan_swin_",
    "efficientvit_",
    "convnext_",
    "swin_",
    "gc_vit_",
    "edgenext_",
    "c_radio_",
)
_METRIC_ALIASES = {"val_acc": "val_top", "train_acc": "train_top", "val_accuracy": "val_top"}


def input_stride(backbone: str) -> int | None:
    """The side the input must be a multiple of, when the name tells it (None: any size)."""
    if backbone.startswith("fan_xlarge"):
        return 32
    if backbone.startswith("fan_"):
        return 16
    match = re.search(r"patch(\d+)|_(14)_siglip", backbone)
    if match:
        return int(match.group(1) or match.group(2))
    if re.fullmatch(r"vit_[tsblg]", backbone):
        return 14
    if backbone.startswith("convnextv2_"):
        return CONVNEXT_STRIDE
    return None


def monitor_metric(name: str) -> tuple[str, str]:
    """TAO's ``monitor_name`` as Foveal's metric and mode: ``val_acc_1`` -> (``val_top1``, max)."""
    metric = name.strip()
    for tao, ours in _METRIC_ALIASES.items():
        match = re.fullmatch(rf"{tao}_?(\d+)", metric)
        if match:
            metric = f"{ours}{match.group(1)}"
    return metric, "min" if "loss" in metric else "max"


def _check_backbone_name(issues: list[SpecIssue], name: str) -> None:
    """An unknown backbone is one spec error naming what exists (ported ones included)."""
    from foveal.nn import list_backbones

    known = list_backbones()
    if name in known:
        return
    if name.startswith(TAO_FAMILIES_NOT_BUILT):
        problem = f"TAO's backbone {name!r} is not available in Foveal"
    else:
        problem = f"unknown backbone {name!r}"
    near = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {near[0]}? " if near else ""
    issues.append(SpecIssue("model.backbone.type", problem, f"{hint}available: {', '.join(known)}"))


def _check_pair(issues: list[SpecIssue], key: str, values: list[float]) -> None:
    if len(values) != 2 or values[0] > values[1]:
        issues.append(SpecIssue(key, f"expected [min, max] with min <= max, got {values}"))


def _check_model(issues: list[SpecIssue], cfg: ClassificationConfig) -> None:
    backbone = cfg.model.backbone.type
    if backbone.startswith("convnextv2_") and cfg.model.global_pool == "cls":
        issues.append(
            SpecIssue("model.global_pool", f"{backbone} has no class token", "use avg or leave it empty")
        )
    size = cfg.dataset.img_size
    stride = input_stride(backbone)
    patch = cfg.model.backbone.patch_size
    if patch is not None:
        if not re.fullmatch(r"vit_[a-z]+(_patch\d+)?", backbone):
            issues.append(
                SpecIssue(
                    "model.backbone.patch_size",
                    f"only Foveal's ViTs take a patch size, not {backbone}",
                    "leave it empty",
                )
            )
        else:
            stride = patch
    if backbone.startswith("hiera_") and size != HIERA_INPUT:
        issues.append(
            SpecIssue("dataset.img_size", f"{backbone} takes {HIERA_INPUT} x {HIERA_INPUT} images only", "use 224")
        )
    elif stride and size % stride:
        lower = size - size % stride
        issues.append(
            SpecIssue(
                "dataset.img_size",
                f"{size} is not a multiple of {stride}, which {backbone} needs",
                f"use {lower or stride} or {lower + stride}",
            )
        )
    if cfg.dataset.num_classes == 1:
        issues.append(
            SpecIssue("dataset.num_classes", "1 class cannot be classified", "use 2 for a binary task")
        )
    blocks = cfg.model.backbone.freeze_blocks
    if len(set(blocks)) != len(blocks):
        issues.append(SpecIssue("model.backbone.freeze_blocks", f"repeats a block index: {blocks}"))


def _check_data(issues: list[SpecIssue], aug: AugmentationConfig) -> None:
    key = "dataset.augmentation"
    if aug.with_scale_random_crop.enable:
        _check_pair(issues, f"{key}.with_scale_random_crop.scale_range", aug.with_scale_random_crop.scale_range)
        if aug.with_scale_random_crop.scale_range[:1] and aug.with_scale_random_crop.scale_range[0] <= 0:
            issues.append(SpecIssue(f"{key}.with_scale_random_crop.scale_range", "factors must be > 0"))
    if aug.random_rotate.enable and not aug.random_rotate.angle_list:
        issues.append(
            SpecIssue(f"{key}.random_rotate.angle_list", "is empty", "list angles or set random_rotate.enable=false")
        )
    if aug.cutmix_minmax:
        _check_pair(issues, f"{key}.cutmix_minmax", aug.cutmix_minmax)
    if aug.random_aug.enable:
        from foveal.data.randaugment import parse_policy

        try:
            parse_policy(aug.random_aug.policy)
        except ValueError as exc:
            issues.append(SpecIssue(f"{key}.random_aug.policy", str(exc)))
    for name in ("mean", "std"):
        values = getattr(aug, name)
        if len(values) != 3:
            issues.append(SpecIssue(f"{key}.{name}", f"expected 3 values (RGB), got {len(values)}"))
    if any(v <= 0 for v in aug.std):
        issues.append(SpecIssue(f"{key}.std", f"values must be > 0, got {aug.std}"))


def _check_train(issues: list[SpecIssue], train: ClassificationTrainConfig) -> None:
    optim = train.optim
    if train.enable_ema and train.ema_decay >= 1.0:
        issues.append(SpecIssue("train.ema_decay", "1.0 never updates the average", "use e.g. 0.998"))
    if optim.warmup_epochs and optim.warmup_epochs >= train.num_epochs:
        issues.append(
            SpecIssue(
                "train.optim.warmup_epochs",
                f"{optim.warmup_epochs} warm-up epochs leave none of train.num_epochs={train.num_epochs}",
                "lower warmup_epochs or raise num_epochs",
            )
        )
    milestones = optim.policy_params.milestones
    if optim.policy == "multistep" and milestones != sorted(set(milestones)):
        issues.append(
            SpecIssue("train.optim.policy_params.milestones", f"must be strictly increasing, got {milestones}")
        )
    if len(optim.betas) != 2:
        issues.append(SpecIssue("train.optim.betas", f"expected [beta1, beta2], got {optim.betas}"))
    metric, _ = monitor_metric(optim.monitor_name)
    if not re.fullmatch(r"(val|train)_(loss|top\d+)", metric):
        issues.append(
            SpecIssue(
                "train.optim.monitor_name",
                f"{optim.monitor_name!r} is not a metric classification reports",
                "use val_loss, val_top1 (val_acc_1), train_loss or train_top1",
            )
        )


def _check_tao_only(issues: list[SpecIssue], cfg: ClassificationConfig, action: str | None) -> None:
    """Options only TAO's quantize / xdl exports produce: refused for the action that reads them."""
    section = getattr(cfg, action, None) if action in ("evaluate", "inference", "export") else None
    if section is not None and getattr(section, "is_quantized", False):
        issues.append(
            SpecIssue(
                f"{action}.is_quantized",
                "a quantized model comes from TAO's quantize action, which Foveal does not implement",
                f"set {action}.is_quantized=false and pass a trained checkpoint",
            )
        )
    if action == "export" and cfg.export.format != "onnx":
        issues.append(SpecIssue("export.format", f"{cfg.export.format!r} export is not supported", "use onnx"))


def resolve(cfg: ClassificationConfig, action: str | None = None) -> ClassificationConfig:
    """Check cross-field rules and fill derived values (``model.global_pool``).

    Returns a copy of ``cfg``; raises :class:`SpecError` listing every problem found.
    """
    issues: list[SpecIssue] = check_sections(cfg, action)
    _check_backbone_name(issues, cfg.model.backbone.type)
    if (
        action in (None, "train")
        and cfg.model.backbone.pretrained_backbone_path
        and cfg.train.pretrained_model_path
    ):
        issues.append(
            SpecIssue(
                "train.pretrained_model_path",
                "is set together with model.backbone.pretrained_backbone_path",
                "keep one: the first loads a whole classifier, the second a backbone",
            )
        )
    _check_model(issues, cfg)
    _check_data(issues, cfg.dataset.augmentation)
    _check_train(issues, cfg.train)
    _check_tao_only(issues, cfg, action)
    data = cfg.dataset
    if action == "evaluate" and not (data.val_dataset.images_dir or data.test_dataset.images_dir):
        issues.append(
            SpecIssue(
                "dataset.val_dataset.images_dir",
                "required for evaluate but not set",
                "set dataset.val_dataset.images_dir=... (TAO-Deploy's dataset.test_dataset.images_dir also works)",
            )
        )
    if issues:
        raise SpecError(issues)
    out = copy.deepcopy(cfg)
    if out.model.global_pool is None:
        out.model.global_pool = "avg" if out.model.backbone.type.startswith("convnextv2_") else "cls"
    return out
