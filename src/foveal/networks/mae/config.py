"""MAE spec: masked autoencoder pretraining and fine-tuning (He et al., 2022, "Masked Autoencoders
Are Scalable Vision Learners"; ConvNeXt V2's FCMAE, Woo et al., 2023; Hiera-MAE, Ryali et al., 2023).

Keys, nesting and defaults follow TAO's ``mae`` experiment spec so that a TAO user's file loads
unchanged. ``train.stage`` picks pretraining (reconstruct masked patches, no labels) or
fine-tuning (classify, labels from class subfolders).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import ClassVar

from foveal.errors import SpecError, SpecIssue
from foveal.spec.common import (
    EvaluateConfig,
    ExperimentConfig,
    ExportConfig,
    GenTrtEngineConfig,
    InferenceConfig,
    SpeedOptions,
    TensorRTConfig,
    TrainConfig,
    check_sections,
    trt_data_type,
)
from foveal.spec.fields import field, section

VIT_ARCHS = (
    "vit_tiny_patch16",
    "vit_small_patch16",
    "vit_base_patch16",
    "vit_large_patch16",
    "vit_huge_patch14",
    "vit_micro_patch4",  # CPU-sized (128 wide, 4 deep): the demo's encoder, not a paper model
)
CONVNEXTV2_ARCHS = tuple(
    f"convnextv2_{size}" for size in ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")
)
# TAO's MAE list (hiera_base_plus_224 is a registered backbone, but TAO's MAE does not accept it).
HIERA_ARCHS = tuple(f"hiera_{size}_224" for size in ("tiny", "small", "base", "large", "huge"))
ARCHS = VIT_ARCHS + CONVNEXTV2_ARCHS + HIERA_ARCHS
# FCMAE masks on the stride-32 grid of ConvNeXt V2's last stage.
CONVNEXT_STRIDE = 32
# Hiera masks 32x32-pixel units; its absolute position table fixes the input at 224 (as in TAO).
HIERA_UNIT = 32
HIERA_INPUT_SIZE = 224
DEFAULT_BACKBONE_MULTIPLIER = 0.1  # TAO's default


# ---------------------------------------------------------------------------------------- model


@dataclass
class ModelConfig:
    arch: str = field(
        "convnextv2_base",
        valid_options=ARCHS,
        popular=True,
        display_name="Architecture",
        description="Encoder: a ViT (MAE), a ConvNeXt V2 (FCMAE) or a Hiera (Hiera-MAE; 224x224 input only).",
    )
    num_classes: int | None = field(
        None,
        valid_min=1,
        description="Classes of the fine-tuning head (finetune stage only). Empty: the number of class "
        "folders in dataset.train_data_sources; when set it must match them.",
    )
    drop_path_rate: float = field(0.1, valid_min=0.0, valid_max=0.9, description="Stochastic depth rate.")
    global_pool: bool = field(
        True, description="Fine-tuning ViT: average patch tokens (true) or use the class token (false)."
    )
    decoder_depth: int = field(
        1, valid_min=1, valid_max=16, description="Decoder blocks (pretrain). The MAE paper's ViTs used 8."
    )
    decoder_embed_dim: int = field(512, valid_min=1, description="Decoder width (pretrain).")


# -------------------------------------------------------------------------------------- dataset


@dataclass
class AugmentationConfig:
    input_size: int = field(
        224, valid_min=32, popular=True, description="Training and evaluation image side in pixels."
    )
    mean: list[float] = field(
        default_factory=lambda: [0.485, 0.456, 0.406],
        description="Per-channel normalisation mean (0-1 scale).",
    )
    std: list[float] = field(
        default_factory=lambda: [0.229, 0.224, 0.225],
        description="Per-channel normalisation standard deviation (0-1 scale).",
    )
    min_scale: float = field(
        0.1,
        valid_min=0.0,
        valid_max=1.0,
        description="Random resized crop: smallest sampled area, as a fraction of the image area (> 0).",
    )
    max_scale: float = field(
        2.0,
        valid_min=0.0,
        valid_max=2.0,
        description="Random resized crop: largest sampled area, as a fraction of the image area (TAO's "
        "default 2.0). torchvision's sampler: an area uniform in [min_scale, max_scale] and a log-uniform "
        "aspect ratio are kept only if the crop fits in the image, up to 10 tries, else a centre crop of "
        "the whole image (aspect ratio clamped to [min_ratio, max_ratio]). Areas above 1 never fit, so "
        "they are redrawn, not zoomed out: 2.0 behaves like 1.0 with about 1% more whole-image crops.",
    )
    min_ratio: float = field(
        0.75, valid_min=0.0, description="Random resized crop: smallest aspect ratio (w/h)."
    )
    max_ratio: float = field(
        1.33, valid_min=0.0, description="Random resized crop: largest aspect ratio (w/h)."
    )
    hflip: float = field(0.5, valid_min=0.0, valid_max=1.0, description="Horizontal flip probability.")
    re_prob: float = field(
        0.0,
        valid_min=0.0,
        valid_max=1.0,
        description="Random erasing probability (finetune): one rectangle of per-pixel noise, as MAE's recipe.",
    )
    interpolation: str = field(
        "bilinear",
        valid_options=("bilinear", "bicubic", "random"),
        description="Resize interpolation for fine-tuning (pretraining uses bicubic).",
    )
    smoothing: float = field(
        0.1, valid_min=0.0, valid_max=0.5, description="Label smoothing (finetune); 0 = plain cross-entropy."
    )
    color_jitter: float = field(
        0.0, valid_min=0.0, valid_max=1.0, description="Colour jitter strength (finetune)."
    )
    auto_aug: str | None = field(
        "rand-m9-mstd0.5-inc1",
        description="timm RandAugment policy string for fine-tuning; empty = no auto-augment.",
    )
    mixup: float = field(0.8, valid_min=0.0, description="Mixup alpha (finetune); 0 = off.")
    cutmix: float = field(1.0, valid_min=0.0, description="CutMix alpha (finetune); 0 = off.")
    cutmix_minmax: list[float] | None = field(
        None,
        valid_min=0.0,
        valid_max=1.0,
        description="CutMix [min, max] box area fraction; when set it replaces the cutmix alpha.",
    )
    mixup_prob: float = field(
        1.0, valid_min=0.0, valid_max=1.0, description="Probability of applying mixup or CutMix to a batch."
    )
    mixup_switch_prob: float = field(
        0.5,
        valid_min=0.0,
        valid_max=1.0,
        description="Probability of CutMix instead of mixup when both are on.",
    )
    mixup_mode: str = field(
        "batch",
        valid_options=("batch", "pair", "elem"),
        description="Mix per batch, per pair or per element.",
    )


@dataclass
class DatasetConfig:
    batch_size: int = field(16, valid_min=1, popular=True, description="Images per device per step.")
    train_data_sources: str | None = field(
        None,
        required=("train",),
        popular=True,
        description="Training images: a folder or archive (path or URI). Pretrain: any images, searched "
        "recursively. Finetune: one subfolder per class.",
    )
    val_data_sources: str | None = field(
        None,
        required=("evaluate",),
        description="Validation images, same layout as training. Empty during train: no validation.",
    )
    test_data_sources: str | None = field(
        None, required=("inference",), description="Images to run inference on: a folder or archive."
    )
    num_workers_per_gpu: int = field(
        2, valid_min=0, description="Data loader workers per device; 0 = main process."
    )
    augmentation: AugmentationConfig = section(
        AugmentationConfig, description="Augmentation and normalisation."
    )


# ---------------------------------------------------------------------------------------- train


@dataclass
class OptimConfig:
    type: str = field(
        "AdamW",
        valid_options=("AdamW", "SGD"),
        description="Optimizer. AdamW uses betas (0.9, 0.95) for pretraining (MAE) and (0.9, 0.999) for "
        "fine-tuning.",
    )
    monitor_name: str = field(
        "train_loss",
        valid_options=("train_loss", "val_loss"),
        description="Pretrain: the metric that picks the best checkpoint (val_loss needs "
        "dataset.val_data_sources). Fine-tuning picks by val_top1 when there is a validation set.",
    )
    lr: float = field(
        2e-4,
        valid_min=1e-6,
        valid_max=0.1,
        automl_enabled=True,
        math_cond="> 0",
        popular=True,
        display_name="Learning rate",
        description="Peak learning rate (after warm-up); not rescaled by batch size.",
    )
    momentum: float = field(0.9, valid_min=0.0, valid_max=1.0, description="SGD momentum (SGD only).")
    weight_decay: float = field(
        0.05,
        valid_min=0.0,
        valid_max=0.5,
        automl_enabled=True,
        description="Decoupled weight decay coefficient.",
    )
    backbone_multiplier: float = field(
        DEFAULT_BACKBONE_MULTIPLIER,
        valid_min=0.0,
        valid_max=1.0,
        description="Fine-tuning: the backbone's learning rate is lr x backbone_multiplier (times the "
        "layer decay); the classification head keeps lr. TAO lists this key (default 0.1) but its MAE code "
        "does not apply it: set 1.0 to train as TAO does. Not used when pretraining.",
    )
    layer_decay: float = field(
        0.75,
        valid_min=0.4,
        valid_max=1.0,
        automl_enabled=True,
        description="Fine-tuning: layer-wise learning rate decay from the top block down; 1.0 = off.",
    )
    lr_scheduler: str = field(
        "MultiStep",
        valid_options=("MultiStep", "cosine"),
        description="MultiStep: multiply by gamma at each milestone. cosine: warm-up then cosine to 0.",
    )
    milestones: list[int] = field(
        default_factory=lambda: [88, 96],
        valid_min=1,
        description="Epochs at which MultiStep decays the rate.",
    )
    gamma: float = field(0.1, valid_min=0.0, valid_max=1.0, description="MultiStep decay factor.")
    warmup_epochs: int = field(
        1,
        valid_min=0,
        valid_max=50,
        automl_enabled=True,
        math_cond="< train.num_epochs",
        description="Epochs of linear warm-up (cosine schedule); must be below train.num_epochs.",
    )


@dataclass
class MAETrainConfig(SpeedOptions, TrainConfig):
    stage: str = field(
        "pretrain",
        valid_options=("pretrain", "finetune"),
        popular=True,
        description="pretrain: masked reconstruction, no labels. finetune: classification with labels.",
    )
    pretrained_model_path: str | None = field(
        None,
        parent_param=True,
        description="Weights to start from: a pretrain checkpoint when fine-tuning, or weights to continue "
        "pretraining from.",
    )
    norm_pix_loss: bool = field(
        True, description="Pretrain: normalise each target patch before the MSE loss."
    )
    mask_ratio: float = field(
        0.75,
        valid_min=0.25,
        valid_max=0.9,
        automl_enabled=True,
        popular=True,
        description="Pretrain: fraction of patches masked (MAE 0.75; FCMAE works well at 0.6).",
    )
    freeze: list[str] = field(
        default_factory=list, description="Module names (dotted paths in the model) whose weights are frozen."
    )
    optim: OptimConfig = section(OptimConfig, description="Optimizer and learning-rate schedule.")


# -------------------------------------------------------------------------------- other actions


@dataclass
class MAETensorRTConfig(TensorRTConfig):
    data_type: str = field(
        "fp32",
        valid_options=("fp32", "fp16"),
        normalize=trt_data_type,
        description="Engine precision (any case: TAO-Deploy writes FP32).",
    )


@dataclass
class MAEGenTrtEngineConfig(GenTrtEngineConfig):
    tensorrt: MAETensorRTConfig = section(MAETensorRTConfig, description="TensorRT builder settings.")


@dataclass
class MAEExportConfig(ExportConfig):
    overwrite: bool = field(
        False, description="Replace an existing export.onnx_file; false refuses to overwrite it."
    )
    input_width: int | None = field(  # type: ignore[assignment]  # empty: the trained input_size
        None,
        valid_min=16,
        description="Input width; a multiple of the arch's stride (ViT patch size, 32 for ConvNeXt V2), 224 "
        "for Hiera. Empty: the dataset.augmentation.input_size the checkpoint was trained with (TAO's "
        "default 960 is a detection size).",
    )
    input_height: int | None = field(  # type: ignore[assignment]  # empty: the trained input_size
        None,
        valid_min=16,
        description="Input height; same rules as input_width. Empty: the trained input_size.",
    )
    format: str = field(
        "onnx", valid_options=("onnx", "xdl"), description="Export format: onnx (TAO's xdl is refused)."
    )


@dataclass
class MAEConfig(ExperimentConfig):
    """Top-level MAE spec."""

    model_names: ClassVar[tuple[str, ...]] = ("mae",)

    model: ModelConfig = section(ModelConfig, description="Encoder, decoder and head.")
    dataset: DatasetConfig = section(DatasetConfig, description="Images and augmentation.")
    train: MAETrainConfig = section(MAETrainConfig, description="Training (pretrain or finetune).")
    evaluate: EvaluateConfig = section(EvaluateConfig, description="Evaluation.")
    inference: InferenceConfig = section(InferenceConfig, description="Inference.")
    export: MAEExportConfig = section(MAEExportConfig, description="ONNX export.")
    gen_trt_engine: MAEGenTrtEngineConfig = section(
        MAEGenTrtEngineConfig, description="TensorRT engine build."
    )


# -------------------------------------------------------------------------------------- resolve


def input_stride(arch: str) -> int:
    """The side the input must be a multiple of: the ViT patch size, 32 for ConvNeXt V2 and Hiera
    (whose input must also be exactly 224: :func:`input_size_issue`)."""
    if arch.startswith("hiera_"):
        return HIERA_UNIT
    match = re.search(r"patch(\d+)", arch)
    return int(match.group(1)) if match else CONVNEXT_STRIDE


def input_size_issue(key: str, size: int, arch: str) -> SpecIssue | None:
    """The problem with an input side ``size`` (spec key ``key``) for ``arch``, if any."""
    if arch.startswith("hiera_"):
        if size == HIERA_INPUT_SIZE:
            return None
        return SpecIssue(
            key,
            f"{size}, but {arch} takes {HIERA_INPUT_SIZE}x{HIERA_INPUT_SIZE} images only (its absolute "
            "position table is not resampled, as in TAO)",
            f"use {HIERA_INPUT_SIZE}",
        )
    stride = input_stride(arch)
    if size % stride == 0:
        return None
    lower = size - size % stride
    return SpecIssue(
        key,
        f"{size} is not a multiple of {stride}, which {arch} needs",
        f"use {lower or stride} or {lower + stride}",
    )


def _check_pair(issues: list[SpecIssue], low_key: str, low: float, high_key: str, high: float) -> None:
    if low > high:
        issues.append(SpecIssue(low_key, f"{low} is above {high_key}={high}"))


def _check_norm(issues: list[SpecIssue], aug: AugmentationConfig) -> None:
    for name in ("mean", "std"):
        values = getattr(aug, name)
        if len(values) != 3:
            issues.append(
                SpecIssue(f"dataset.augmentation.{name}", f"expected 3 values (RGB), got {len(values)}")
            )
    if any(v <= 0 for v in aug.std):
        issues.append(SpecIssue("dataset.augmentation.std", f"values must be > 0, got {aug.std}"))


def _check_optim(issues: list[SpecIssue], train: MAETrainConfig) -> None:
    optim = train.optim
    if optim.lr_scheduler == "cosine" and optim.warmup_epochs >= train.num_epochs:
        issues.append(
            SpecIssue(
                "train.optim.warmup_epochs",
                f"{optim.warmup_epochs} warm-up epochs leave none of train.num_epochs={train.num_epochs}",
                "lower warmup_epochs or raise num_epochs",
            )
        )
    if optim.lr_scheduler == "MultiStep" and optim.milestones != sorted(set(optim.milestones)):
        issues.append(
            SpecIssue("train.optim.milestones", f"must be strictly increasing, got {optim.milestones}")
        )


def resolve(cfg: MAEConfig, action: str | None = None) -> MAEConfig:
    """Check cross-field rules; returns a copy of ``cfg`` or raises :class:`SpecError` with every problem."""
    issues: list[SpecIssue] = check_sections(cfg, action)
    aug = cfg.dataset.augmentation
    if action in (None, "train") and cfg.train.stage == "finetune":
        if aug.interpolation == "random":
            issues.append(
                SpecIssue(
                    "dataset.augmentation.interpolation", "'random' is not supported yet", "use bicubic"
                )
            )
    size_issue = input_size_issue("dataset.augmentation.input_size", aug.input_size, cfg.model.arch)
    if size_issue is not None:
        issues.append(size_issue)
    if aug.min_scale <= 0:
        issues.append(SpecIssue("dataset.augmentation.min_scale", f"must be > 0, got {aug.min_scale}"))
    _check_pair(issues, "dataset.augmentation.min_scale", aug.min_scale, "max_scale", aug.max_scale)
    _check_pair(issues, "dataset.augmentation.min_ratio", aug.min_ratio, "max_ratio", aug.max_ratio)
    if aug.cutmix_minmax is not None and (
        len(aug.cutmix_minmax) != 2 or aug.cutmix_minmax[0] > aug.cutmix_minmax[1]
    ):
        issues.append(
            SpecIssue("dataset.augmentation.cutmix_minmax", f"expected [min, max], got {aug.cutmix_minmax}")
        )
    _check_norm(issues, aug)
    _check_optim(issues, cfg.train)
    if action == "export" and cfg.export.format != "onnx":
        issues.append(
            SpecIssue("export.format", f"{cfg.export.format!r} export is not supported", "use onnx")
        )
    if issues:
        raise SpecError(issues)
    return copy.deepcopy(cfg)
