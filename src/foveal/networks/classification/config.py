"""Image classification spec: a pretrained backbone with a linear or MLP head, fine-tuned or probed.

Shared keys keep TAO's ``classification_pyt`` names (``model.backbone.type``,
``model.backbone.pretrained_backbone_path``, ``dataset.train_dataset.images_dir``,
``dataset.batch_size``, ``dataset.workers``, ``train.optim.lr``, ``train.clip_grad_norm``, ...);
augmentation and schedule keys are flat, timm-style names. A TAO key with no counterpart here
fails with its dotted name. Images are read from class subfolders.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from foveal.errors import SpecError, SpecIssue
from foveal.spec.common import (
    EvaluateConfig,
    ExportConfig,
    GenTrtEngineConfig,
    InferenceConfig,
    TrainConfig,
    check_sections,
)
from foveal.spec.fields import field, section

CONVNEXT_STRIDE = 32  # ConvNeXt V2 downsamples by 32 overall


# ---------------------------------------------------------------------------------------- model


@dataclass
class BackboneConfig:
    type: str = field(
        "vit_tiny_patch16",
        popular=True,
        display_name="Backbone",
        description="Backbone name: vit_{tiny,small,base,large}_patch16, vit_huge_patch14, the NVDINOv2 "
        "ViTs vit_{t,s,b,l,g} (patch 14), convnextv2_{atto..huge}, or a ported model's name.",
    )
    pretrained_backbone_path: str | None = field(
        None,
        parent_param=True,
        popular=True,
        description="Backbone weights to start from (e.g. an NVDINOv2 student or MAE pretrain checkpoint).",
    )
    freeze: bool = field(
        False,
        popular=True,
        description="Train only the head (linear probing); the whole backbone stays fixed.",
    )
    freeze_blocks: list[int] = field(
        default_factory=list, valid_min=0, description="Indices of backbone blocks to keep fixed (0 = first)."
    )
    drop_path_rate: float = field(0.1, valid_min=0.0, valid_max=0.9, description="Stochastic depth rate.")
    patch_size: int | None = field(
        None,
        valid_options=(4, 8, 14, 16),
        description="ViT patch size when it differs from the type's own (e.g. vit_t pretrained by nvdinov2 "
        "with model.backbone.patch_size=16). Empty: the type's.",
    )


@dataclass
class HeadConfig:
    type: str = field(
        "linear", valid_options=("linear", "mlp"), description="linear: one layer. mlp: hidden layer + GELU."
    )
    num_classes: int = field(
        0,
        valid_min=0,
        description="Number of classes; 0 = the number of class subfolders of the training set.",
    )
    dropout: float = field(
        0.0, valid_min=0.0, valid_max=0.9, description="Dropout before the head's last layer."
    )


@dataclass
class ModelConfig:
    backbone: BackboneConfig = section(BackboneConfig, description="Feature extractor.")
    head: HeadConfig = section(HeadConfig, description="Classification head.")
    global_pool: str | None = field(
        None,
        valid_options=("cls", "avg"),
        description="Feature fed to the head: class token or average of patch tokens. Empty: cls for "
        "ViTs, avg for ConvNeXt V2 (which has no class token).",
    )


# -------------------------------------------------------------------------------------- dataset


@dataclass
class TrainDataPath:
    images_dir: str | None = field(
        None,
        required=("train",),
        popular=True,
        description="Training images, one subfolder per class: a folder or archive (path or URI).",
    )


@dataclass
class ValDataPath:
    images_dir: str | None = field(
        None,
        required=("evaluate",),
        popular=True,
        description="Validation images, one subfolder per class. Used by evaluate; during train, "
        "empty means no validation.",
    )


@dataclass
class TestDataPath:
    images_dir: str | None = field(
        None, required=("inference",), description="Images to classify at inference (labels not needed)."
    )


@dataclass
class AugmentationConfig:
    input_size: int = field(224, valid_min=32, popular=True, description="Input side in pixels.")
    scale: list[float] = field(
        default_factory=lambda: [0.08, 1.0],
        valid_min=0.0,
        valid_max=1.0,
        description="Random resized crop: [min, max] kept area fraction.",
    )
    ratio: list[float] = field(
        default_factory=lambda: [0.75, 1.3333],
        valid_min=0.0,
        description="Random resized crop: [min, max] w/h.",
    )
    hflip: float = field(0.5, valid_min=0.0, valid_max=1.0, description="Horizontal flip probability.")
    color_jitter: float = field(
        0.3,
        valid_min=0.0,
        valid_max=1.0,
        description="Brightness/contrast/saturation jitter strength; 0 = off.",
    )
    randaugment: str | None = field(
        None,
        description="RandAugment policy 'rand-m<magnitude>[-n<ops>][-mstd<std>][-mmax<max>][-p<prob>]"
        "[-inc<0|1>]', e.g. 'rand-m9-mstd0.5-inc1' (timm's syntax); empty = off. Replaces the colour "
        "jitter.",
    )
    mixup: float = field(
        0.0,
        valid_min=0.0,
        valid_max=1.0,
        automl_enabled=True,
        description="Mixup Beta(alpha, alpha); 0 = off.",
    )
    cutmix: float = field(
        0.0, valid_min=0.0, valid_max=2.0, description="CutMix Beta(alpha, alpha); 0 = off."
    )
    cutmix_minmax: list[float] = field(
        default_factory=list,
        valid_min=0.0,
        valid_max=1.0,
        description="CutMix box side as [min, max] fractions of the image, drawn uniformly instead of "
        "from cutmix's Beta; empty = use cutmix.",
    )
    mixup_prob: float = field(
        1.0, valid_min=0.0, valid_max=1.0, description="Probability of mixing a batch (pair, element)."
    )
    mixup_switch_prob: float = field(
        0.5,
        valid_min=0.0,
        valid_max=1.0,
        description="When mixup and cutmix are both on: probability of CutMix.",
    )
    mixup_mode: str = field(
        "batch",
        valid_options=("batch", "pair", "elem"),
        description="Mixup/CutMix drawn once per batch, per pair of images, or per image.",
    )
    label_smoothing: float = field(
        0.1,
        valid_min=0.0,
        valid_max=0.3,
        automl_enabled=True,
        description="Label smoothing; 0 = one-hot targets.",
    )
    mean: list[float] = field(
        default_factory=lambda: [0.485, 0.456, 0.406],
        description="Per-channel normalisation mean (0-1 scale).",
    )
    std: list[float] = field(
        default_factory=lambda: [0.229, 0.224, 0.225],
        description="Per-channel normalisation std (0-1 scale).",
    )


@dataclass
class DatasetConfig:
    train_dataset: TrainDataPath = section(TrainDataPath, description="Training images.")
    val_dataset: ValDataPath = section(ValDataPath, description="Validation images.")
    test_dataset: TestDataPath = section(TestDataPath, description="Inference images.")
    batch_size: int = field(8, valid_min=1, popular=True, description="Images per device per step.")
    workers: int = field(
        8, valid_min=0, description="Data loader worker processes per device; 0 = main process."
    )
    augmentation: AugmentationConfig = section(AugmentationConfig, description="Input size and augmentation.")


# ---------------------------------------------------------------------------------------- train


@dataclass
class OptimConfig:
    optimizer: str = field("adamw", valid_options=("adamw", "sgd"), popular=True, description="Optimizer.")
    lr: float = field(
        1e-4,
        valid_min=1e-6,
        valid_max=1.0,
        math_cond="> 0",
        automl_enabled=True,
        popular=True,
        display_name="Learning rate",
        description="Peak learning rate (after warm-up); not rescaled by batch size.",
    )
    momentum: float = field(0.9, valid_min=0.0, valid_max=1.0, description="SGD momentum (sgd only).")
    weight_decay: float = field(
        0.05,
        valid_min=0.0,
        valid_max=0.5,
        automl_enabled=True,
        description="Weight decay (not on biases/norms).",
    )
    layer_decay: float = field(
        1.0,
        valid_min=0.5,
        valid_max=1.0,
        automl_enabled=True,
        description="Layer-wise learning rate decay from the top block down; 1.0 = off.",
    )
    scheduler: str = field(
        "cosine",
        valid_options=("cosine", "step"),
        description="cosine: warm-up then cosine to min_lr_ratio x lr. step: multiply by gamma at milestones.",
    )
    warmup_epochs: int = field(
        0,
        valid_min=0,
        valid_max=50,
        automl_enabled=True,
        math_cond="< train.num_epochs",
        description="Epochs of linear warm-up; must be below train.num_epochs.",
    )
    min_lr_ratio: float = field(
        0.0, valid_min=0.0, valid_max=1.0, description="cosine: final lr as a fraction of lr."
    )
    milestones: list[int] = field(
        default_factory=lambda: [30, 60],
        valid_min=1,
        description="step: epochs at which lr is multiplied by gamma.",
    )
    gamma: float = field(0.1, valid_min=0.0, valid_max=1.0, description="step: decay factor.")


@dataclass
class EmaConfig:
    enable: bool = field(
        False, description="Keep an exponential moving average of the weights and evaluate it."
    )
    decay: float = field(0.9998, valid_min=0.0, valid_max=1.0, description="EMA decay per optimizer step.")


@dataclass
class ClassificationTrainConfig(TrainConfig):
    pretrained_model_path: str | None = field(
        None, parent_param=True, description="A full classifier checkpoint (backbone + head) to start from."
    )
    optim: OptimConfig = section(OptimConfig, description="Optimizer and learning-rate schedule.")
    clip_grad_norm: float = field(
        0.0, valid_min=0.0, description="Clip the gradient norm to this value; 0 = off."
    )
    ema: EmaConfig = section(
        EmaConfig,
        description="Weight EMA. Validation, evaluate, inference and export use the averaged weights.",
    )
    class_weights: str = field(
        "none",
        valid_options=("none", "auto"),
        description="Loss class weights: none, or auto (inverse class frequency of the training set).",
    )


# --------------------------------------------------------------------------------------- export


@dataclass
class ClassificationExportConfig(ExportConfig):
    softmax: bool = field(
        False,
        description="End the graph with a softmax: the output is 'probabilities' (rows sum to 1) "
        "instead of 'logits'.",
    )


# -------------------------------------------------------------------------------------- top


@dataclass
class ClassificationConfig:
    """Top-level classification spec."""

    results_dir: str | None = field(
        None,
        description="Root folder for this job's outputs. Empty: the job's results folder in the workspace.",
    )
    encryption_key: str | None = field(
        None, description="Key for encrypted model files (TAO compatibility); empty = none."
    )
    model: ModelConfig = section(ModelConfig, description="Backbone and head.")
    dataset: DatasetConfig = section(DatasetConfig, description="Images and augmentation.")
    train: ClassificationTrainConfig = section(ClassificationTrainConfig, description="Training.")
    evaluate: EvaluateConfig = section(EvaluateConfig, description="Evaluation on dataset.val_dataset.")
    inference: InferenceConfig = section(InferenceConfig, description="Inference on dataset.test_dataset.")
    export: ClassificationExportConfig = section(ClassificationExportConfig, description="ONNX export.")
    gen_trt_engine: GenTrtEngineConfig = section(GenTrtEngineConfig, description="TensorRT engine build.")


# -------------------------------------------------------------------------------------- resolve


def input_stride(backbone: str) -> int | None:
    """The side the input must be a multiple of, when the name tells it (None: unknown)."""
    match = re.search(r"patch(\d+)", backbone)
    if match:
        return int(match.group(1))
    if re.fullmatch(r"vit_[tsblg]", backbone):
        return 14
    if backbone.startswith("convnextv2_"):
        return CONVNEXT_STRIDE
    return None


def _check_backbone_name(issues: list[SpecIssue], name: str) -> None:
    """An unknown backbone is a spec error naming the registered ones (ported ones included)."""
    from foveal.nn import list_backbones

    known = list_backbones()
    if name in known:
        return
    import difflib

    near = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {near[0]}? " if near else ""
    issues.append(
        SpecIssue(
            "model.backbone.type",
            f"unknown backbone {name!r}",
            f"{hint}registered: {', '.join(known)}",
        )
    )


def _check_pair(issues: list[SpecIssue], key: str, values: list[float]) -> None:
    if len(values) != 2 or values[0] > values[1]:
        issues.append(SpecIssue(key, f"expected [min, max] with min <= max, got {values}"))


def _check_model(issues: list[SpecIssue], cfg: ClassificationConfig) -> None:
    backbone = cfg.model.backbone.type
    if backbone.startswith("convnextv2_") and cfg.model.global_pool == "cls":
        issues.append(
            SpecIssue("model.global_pool", f"{backbone} has no class token", "use avg or leave it empty")
        )
    stride, size = input_stride(backbone), cfg.dataset.augmentation.input_size
    patch = cfg.model.backbone.patch_size
    if patch is not None:
        if not backbone.startswith("vit_"):
            issues.append(
                SpecIssue(
                    "model.backbone.patch_size",
                    f"only the built-in ViTs take a patch size, not {backbone}",
                    "leave it empty",
                )
            )
        else:
            stride = patch
    if stride and size % stride:
        lower = size - size % stride
        issues.append(
            SpecIssue(
                "dataset.augmentation.input_size",
                f"{size} is not a multiple of {stride}, which {backbone} needs",
                f"use {lower or stride} or {lower + stride}",
            )
        )
    if cfg.model.head.num_classes == 1:
        issues.append(
            SpecIssue("model.head.num_classes", "1 class cannot be classified", "use 2 for binary tasks")
        )
    blocks = cfg.model.backbone.freeze_blocks
    if len(set(blocks)) != len(blocks):
        issues.append(SpecIssue("model.backbone.freeze_blocks", f"repeats a block index: {blocks}"))


def _check_data(issues: list[SpecIssue], aug: AugmentationConfig) -> None:
    _check_pair(issues, "dataset.augmentation.scale", aug.scale)
    _check_pair(issues, "dataset.augmentation.ratio", aug.ratio)
    if aug.cutmix_minmax:
        _check_pair(issues, "dataset.augmentation.cutmix_minmax", aug.cutmix_minmax)
    if aug.randaugment:
        from foveal.data.randaugment import parse_policy

        try:
            parse_policy(aug.randaugment)
        except ValueError as exc:
            issues.append(SpecIssue("dataset.augmentation.randaugment", str(exc)))
    for name in ("mean", "std"):
        values = getattr(aug, name)
        if len(values) != 3:
            issues.append(
                SpecIssue(f"dataset.augmentation.{name}", f"expected 3 values (RGB), got {len(values)}")
            )
    if any(v <= 0 for v in aug.std):
        issues.append(SpecIssue("dataset.augmentation.std", f"values must be > 0, got {aug.std}"))


def _check_train(issues: list[SpecIssue], train: ClassificationTrainConfig) -> None:
    optim = train.optim
    if train.ema.enable and train.ema.decay >= 1.0:
        issues.append(SpecIssue("train.ema.decay", "1.0 never updates the average", "use e.g. 0.9998"))
    if optim.warmup_epochs >= train.num_epochs:
        issues.append(
            SpecIssue(
                "train.optim.warmup_epochs",
                f"{optim.warmup_epochs} warm-up epochs leave none of train.num_epochs={train.num_epochs}",
                "lower warmup_epochs or raise num_epochs",
            )
        )
    if optim.scheduler == "step" and optim.milestones != sorted(set(optim.milestones)):
        issues.append(
            SpecIssue("train.optim.milestones", f"must be strictly increasing, got {optim.milestones}")
        )


def resolve(cfg: ClassificationConfig, action: str | None = None) -> ClassificationConfig:
    """Check cross-field rules and fill derived values (model.global_pool).

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
    if issues:
        raise SpecError(issues)
    out = copy.deepcopy(cfg)
    if out.model.global_pool is None:
        out.model.global_pool = "avg" if out.model.backbone.type.startswith("convnextv2_") else "cls"
    return out
