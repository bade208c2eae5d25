"""NVDINOv2 spec: self-distillation with DINO + iBOT + KoLeo losses (Oquab et al., 2023, "DINOv2").

Keys, nesting and defaults follow TAO's ``nvdinov2`` experiment spec so that a TAO user's file
loads unchanged. Values TAO hard-codes in its training module (loss weights, centering, masking
ratios) are spec fields here, with TAO's values as defaults. Schedules are per optimizer step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

from foveal.errors import SpecError, SpecIssue
from foveal.spec.common import (
    PRECISION_HELP,
    PRECISIONS,
    EvaluateConfig,
    ExperimentConfig,
    ExportConfig,
    GenTrtEngineConfig,
    InferenceConfig,
    TensorRTConfig,
    TrainConfig,
    check_sections,
    precision_name,
    trt_data_type,
)
from foveal.spec.fields import field, section

BACKBONES = ("vit_t", "vit_s", "vit_b", "vit_l", "vit_g")
# 14 and 16 are TAO's; 4 and 8 are for CPU-sized runs on small images (32-64 px), like vit_t.
PATCH_SIZES = (4, 8, 14, 16)
# TAO's spec files derive the learning rate from the total batch: 2e-4 * sqrt(batch / 1024).
LR_REFERENCE = 2e-4
LR_REFERENCE_BATCH = 1024


# ---------------------------------------------------------------------------------------- model


@dataclass
class BackboneConfig:
    teacher_type: str = field(
        "vit_l",
        valid_options=BACKBONES,
        popular=True,
        display_name="Teacher backbone",
        description="Teacher ViT size (t/s/b/l/g). Must equal student_type unless distill.enable.",
    )
    student_type: str = field(
        "vit_l",
        valid_options=BACKBONES,
        popular=True,
        display_name="Student backbone",
        description="Student ViT size; this is the backbone exported and handed to downstream jobs.",
    )
    num_register_tokens: int = field(
        0, valid_min=0, valid_max=16, description="Extra register tokens (Darcet et al., 2023); 0 = none."
    )
    drop_path_rate: float = field(
        0.4,
        valid_min=0.0,
        valid_max=0.9,
        automl_enabled=True,
        math_cond="<= 0.5",
        description="Stochastic depth rate of the student (linear per block).",
    )
    patch_size: int = field(
        14,
        valid_options=PATCH_SIZES,
        description="Patch size in pixels: 14 or 16 (TAO's); 4 or 8 for CPU-sized runs on small images.",
    )
    img_size: int = field(
        518,
        valid_min=14,
        popular=True,
        description="Image size (pixels) the position embeddings are built for; crops of other sizes "
        "interpolate them. Must be divisible by patch_size (518 = 37 x 14).",
    )


@dataclass
class HeadConfig:
    num_layers: int = field(
        3, valid_min=1, valid_max=8, description="Linear layers in each DINO/iBOT projection head."
    )
    hidden_dim: int = field(2048, valid_min=1, description="Hidden width of the projection heads.")
    bottleneck_dim: int = field(384, valid_min=1, description="Bottleneck width before the prototype layer.")
    separate_ibot_head: bool = field(
        False,
        description="Give iBOT its own projection head instead of sharing the DINO head (DINOv2's default).",
    )


@dataclass
class DistillConfig:
    enable: bool = field(
        False,
        description="Distil a frozen pretrained teacher into a (smaller) student instead of self-training.",
    )
    disable_masking: bool = field(
        False, description="During distillation, feed the student unmasked global crops."
    )
    pretrained_non_distill_pl_model_path: str | None = field(
        None,
        depends_on="model.distill.enable",
        parent_param=True,
        description="Full NVDINOv2 training checkpoint whose teacher (backbone + heads) is frozen and "
        "distilled; needed when distill.enable.",
    )


@dataclass
class ModelConfig:
    backbone: BackboneConfig = section(BackboneConfig, description="Teacher and student ViT backbones.")
    head: HeadConfig = section(HeadConfig, description="DINO and iBOT projection heads.")
    distill: DistillConfig = section(DistillConfig, description="Distillation from a pretrained teacher.")


# -------------------------------------------------------------------------------------- dataset


@dataclass
class TrainDataPath:
    images_dir: str | None = field(
        None,
        required=("train",),
        popular=True,
        description="Unlabeled training images: a folder or archive (path or URI), searched recursively.",
    )


@dataclass
class TestDataPath:
    images_dir: str | None = field(
        None,
        required=("inference",),
        description="Images to embed at inference: a folder or archive (path or URI).",
    )


@dataclass
class ValDataPath:
    images_dir: str | None = field(
        None,
        required=("evaluate",),
        description="Labeled evaluation images in class subfolders (root/<class>/<image>): a folder or "
        "archive. kNN neighbours come from train_dataset.images_dir when it has the same class "
        "folders, else from a fixed split of this set (evaluate.reference_fraction).",
    )


@dataclass
class TransformConfig:
    n_global_crops: int = field(
        2, valid_min=1, description="Global crops per image (seen by teacher and student)."
    )
    global_crops_scale: list[float] = field(
        default_factory=lambda: [0.32, 1.0],
        valid_min=0.0,
        valid_max=1.0,
        description="[min, max] area fraction of the image kept by a global crop.",
    )
    global_crops_size: int = field(
        224, valid_min=14, popular=True, description="Global crop side in pixels; divisible by patch_size."
    )
    n_local_crops: int = field(8, valid_min=0, description="Local crops per image (student only); 0 = none.")
    local_crops_scale: list[float] = field(
        default_factory=lambda: [0.05, 0.32],
        valid_min=0.0,
        valid_max=1.0,
        description="[min, max] area fraction of the image kept by a local crop.",
    )
    local_crops_size: int = field(
        98, valid_min=14, description="Local crop side in pixels; divisible by patch_size (98 = 7 x 14)."
    )
    color_jitter: list[float] = field(
        default_factory=lambda: [0.4, 0.4, 0.2, 0.1],
        valid_min=0.0,
        description="[brightness, contrast, saturation, hue] of the colour jitter (DINOv2's values; "
        "hue at most 0.5, a full turn). Raise hue when colour alone tells images apart.",
    )
    color_jitter_prob: float = field(
        0.8, valid_min=0.0, valid_max=1.0, description="Probability of the colour jitter per crop."
    )
    grayscale_prob: float = field(
        0.2, valid_min=0.0, valid_max=1.0, description="Probability of turning a crop to grayscale."
    )
    gpu_augmentation: bool = field(
        False,
        description="Foveal: loader workers only crop and flip; colour jitter, grayscale, blur, solarize and "
        "normalisation run batched on the training device (for CPU-bound loaders; the same distributions).",
    )


@dataclass
class DatasetConfig:
    train_dataset: TrainDataPath = section(TrainDataPath, description="Training images (no labels needed).")
    test_dataset: TestDataPath = section(TestDataPath, description="Images for inference.")
    val_dataset: ValDataPath = section(ValDataPath, description="Labeled images for evaluate.")
    batch_size: int = field(4, valid_min=1, popular=True, description="Images per device per step.")
    workers: int = field(
        8, valid_min=0, description="Data loader worker processes per device; 0 = main process."
    )
    pin_memory: bool = field(True, description="Pin host memory for faster host-to-GPU copies.")
    transform: TransformConfig = section(TransformConfig, description="Multi-crop augmentation.")


# ---------------------------------------------------------------------------------------- train


@dataclass
class SchedulerConfig:
    """A warm-up then cosine schedule over optimizer steps (value at step 0 is val_start)."""

    val_base: float = field(1e-8, valid_min=0.0, description="Value reached at the end of warm-up.")
    val_final: float = field(1e-6, valid_min=0.0, description="Value at max_decay_steps and after.")
    val_start: float = field(0.0, valid_min=0.0, description="Value at step 0 (warm-up starts here).")
    warm_up_steps: int = field(0, valid_min=0, description="Steps of linear warm-up; 0 = none.")
    max_decay_steps: int = field(
        2_500_000,
        valid_min=1,
        description="Step at which the cosine decay (counted from step 0) reaches val_final.",
    )


@dataclass
class LearningRateScheduleConfig(SchedulerConfig):
    val_base: float | None = field(  # type: ignore[assignment]  # empty here: derived (resolve) or read from the checkpoint
        None,
        valid_min=1e-6,
        valid_max=1e-2,
        automl_enabled=True,
        popular=True,
        display_name="Peak learning rate",
        description="Peak learning rate. Empty: 2e-4 x sqrt(batch_size x num_gpus x num_nodes / 1024), "
        "the rule TAO's spec files write out.",
    )
    warm_up_steps: int = field(100_000, valid_min=0, description="Steps of linear warm-up; 0 = none.")


@dataclass
class LastLayerLearningRateScheduleConfig(LearningRateScheduleConfig):
    val_base: float | None = field(
        None,
        valid_min=0.0,
        description="Peak learning rate of the heads' last layer. Empty: the learning_rate rule.",
    )
    freeze_steps: int = field(
        1250, valid_min=0, description="Steps during which the heads' last (prototype) layer is not updated."
    )


@dataclass
class WeightDecayScheduleConfig(SchedulerConfig):
    val_base: float = field(
        0.04,
        valid_min=0.0,
        valid_max=1.0,
        automl_enabled=True,
        math_cond="<= 0.2",
        description="Weight decay at the start of decay.",
    )
    val_final: float = field(
        0.2, valid_min=0.0, valid_max=1.0, description="Weight decay at max_decay_steps."
    )


@dataclass
class MomentumScheduleConfig(SchedulerConfig):
    val_base: float = field(
        0.994,
        valid_min=0.0,
        valid_max=1.0,
        automl_enabled=True,
        math_cond=">= 0.9",
        description="Teacher EMA momentum at the start of decay.",
    )
    val_final: float = field(
        1.0, valid_min=0.0, valid_max=1.0, description="Teacher EMA momentum at max_decay_steps."
    )


@dataclass
class TeacherTemperatureScheduleConfig(SchedulerConfig):
    val_base: float = field(
        0.07,
        valid_min=0.001,
        valid_max=1.0,
        automl_enabled=True,
        math_cond="<= 0.1",
        description="Teacher softmax temperature after warm-up (searched only on labeled eval data: it "
        "changes the loss's scale).",
    )
    val_final: float = field(
        0.07, valid_min=0.0, valid_max=1.0, description="Teacher temperature at max_decay_steps."
    )
    val_start: float = field(0.04, valid_min=0.0, valid_max=1.0, description="Teacher temperature at step 0.")
    warm_up_steps: int = field(37_500, valid_min=0, description="Steps of linear warm-up from val_start.")
    max_decay_steps: int = field(37_500, valid_min=1, description="Step at which val_final is reached.")


@dataclass
class SchedulersConfig:
    learning_rate: LearningRateScheduleConfig = section(
        LearningRateScheduleConfig, description="Learning rate of the student backbone and heads."
    )
    last_layer_learning_rate: LastLayerLearningRateScheduleConfig = section(
        LastLayerLearningRateScheduleConfig, description="Learning rate of the heads' last layer."
    )
    weight_decay: WeightDecayScheduleConfig = section(WeightDecayScheduleConfig, description="Weight decay.")
    momentum: MomentumScheduleConfig = section(MomentumScheduleConfig, description="Teacher EMA momentum.")
    teacher_temperature: TeacherTemperatureScheduleConfig = section(
        TeacherTemperatureScheduleConfig, description="Teacher softmax temperature."
    )


@dataclass
class OptimConfig:
    optim: str = field("adamw", valid_options=("adamw",), description="Optimizer.")


@dataclass
class LossConfig:
    dino_loss_weight: float = field(1.0, valid_min=0.0, description="Weight of the DINO (class token) loss.")
    ibot_loss_weight: float = field(1.0, valid_min=0.0, description="Weight of the iBOT (masked patch) loss.")
    koleo_loss_weight: float = field(
        0.1, valid_min=0.0, description="Weight of the KoLeo spreading regulariser."
    )
    student_temperature: float = field(
        0.1,
        valid_min=0.001,
        valid_max=1.0,
        automl_enabled=True,
        math_cond="<= 0.2",
        description="Student softmax temperature of the DINO and iBOT losses.",
    )
    center_momentum: float = field(
        0.9,
        valid_min=0.0,
        valid_max=1.0,
        description="EMA momentum of the teacher centre (softmax centering).",
    )
    centering: str = field(
        "softmax",
        valid_options=("softmax", "sinkhorn_knopp"),
        description="Teacher output centering: softmax with a running centre, or Sinkhorn-Knopp.",
    )


@dataclass
class MaskingConfig:
    mask_ratio_min: float = field(
        0.1, valid_min=0.0, valid_max=1.0, description="Smallest fraction of patches masked in a masked crop."
    )
    mask_ratio_max: float = field(
        0.5, valid_min=0.0, valid_max=1.0, description="Largest fraction of patches masked in a masked crop."
    )
    mask_sample_probability: float = field(
        0.5, valid_min=0.0, valid_max=1.0, description="Fraction of global crops that get masked for iBOT."
    )


@dataclass
class NVDINOv2TrainConfig(TrainConfig):
    pretrained_model_path: str | None = field(
        None,
        parent_param=True,
        description="Backbone weights to initialise the student (and, without distillation, the teacher).",
    )
    layerwise_decay: float = field(
        1.0,
        valid_min=0.0,
        valid_max=1.0,
        description="Per-block learning rate decay from the top; 1.0 = off.",
    )
    patch_embed_lr_multiplier: float = field(
        0.2, valid_min=0.0, description="Learning-rate multiplier of the patch embedding (DINOv2: 0.2)."
    )
    clip_grad_norm: float = field(
        3.0, valid_min=0.0, description="Clip the gradient norm to this value; 0 = off."
    )
    num_prototypes: int = field(
        131072, valid_min=1, description="Prototypes (output width) of the DINO/iBOT heads."
    )
    precision: str = field(
        "fp16",
        valid_options=PRECISIONS,
        normalize=precision_name,
        popular=True,
        description=f"Training precision: {PRECISION_HELP}. TAO's default 16-mixed is fp16.",
    )
    use_custom_attention: bool = field(
        True,
        description="Attention through PyTorch SDPA (flash / memory-efficient kernels where the device has "
        "them, TAO: xFormers); false: the product written out (same result, more memory).",
    )
    activation_checkpointing: bool = field(
        False, description="Recompute block activations in backward to save memory (slower)."
    )
    torch_compile: bool = field(
        False,
        description="Compile the student and teacher backbones with torch.compile: the first steps of each crop "
        "size pay the compilation; on CPU it needs a C++ compiler.",
    )
    pack_crops: bool = field(
        False,
        description="Run the student's global and local crops as one packed sequence with block-diagonal "
        "attention (DINOv2's forward_features_list, what TAO's xFormers path does): the same losses, one pass "
        "through the per-token layers. Off until the GPU device check measures its gain.",
    )
    optim: OptimConfig = section(OptimConfig, description="Optimizer.")
    schedulers: SchedulersConfig = section(SchedulersConfig, description="Per-step schedules.")
    loss: LossConfig = section(LossConfig, description="Loss weights and teacher centering.")
    masking: MaskingConfig = section(MaskingConfig, description="iBOT block masking of global crops.")


# -------------------------------------------------------------------------------- other actions


@dataclass
class NVDINOv2InferenceConfig(InferenceConfig):
    checkpoint: str | None = field(
        None,
        required=("inference",),
        required_unless="trt_engine",
        parent_param=True,
        description="Backbone checkpoint (student_epoch_*.pth or teacher_epoch_*.pth) to embed images with.",
    )
    vis_after_n_batches: int = field(
        1, valid_min=1, description="pca.png draws the first image of every n-th batch (4 images at most)."
    )


@dataclass
class NVDINOv2EvaluateConfig(EvaluateConfig):
    checkpoint: str | None = field(
        None,
        required=("evaluate",),
        required_unless="trt_engine",
        parent_param=True,
        description="Backbone checkpoint (student_epoch_*.pth or teacher_epoch_*.pth) to evaluate.",
    )
    knn_k: int = field(20, valid_min=1, description="Neighbours of the weighted kNN classifier (DINO: 20).")
    knn_temperature: float = field(
        0.07, valid_min=1e-4, valid_max=10.0, description="Temperature of the kNN vote weights (DINO: 0.07)."
    )
    linear_probe_steps: int = field(
        300, valid_min=0, description="L-BFGS steps of the linear probe on frozen features; 0 = no probe."
    )
    linear_probe_weight_decay: float = field(
        1e-4, valid_min=0.0, description="L2 penalty on the linear probe's weights."
    )
    reference_fraction: float = field(
        0.5,
        valid_min=0.05,
        valid_max=0.95,
        description="Without labeled training images, this fraction of each class of "
        "val_dataset.images_dir is the kNN/probe training split (fixed by seed); the rest is scored.",
    )
    seed: int = field(
        0, valid_min=0, description="Seed of the reference split and the probe's initial weights."
    )


@dataclass
class NVDINOv2ExportConfig(ExportConfig):
    checkpoint: str | None = field(
        None,
        required=("export",),
        parent_param=True,
        description="Backbone checkpoint (student_epoch_*.pth or teacher_epoch_*.pth) to export.",
    )
    overwrite: bool = field(
        False, description="Replace an existing export.onnx_file; false refuses to overwrite it."
    )
    input_width: int | None = field(  # type: ignore[assignment]  # empty: from the checkpoint
        None,
        valid_min=14,
        description="Input width; divisible by the checkpoint's patch size. Empty: the img_size the "
        "checkpoint was trained with.",
    )
    input_height: int | None = field(  # type: ignore[assignment]  # empty: from the checkpoint
        None,
        valid_min=14,
        description="Input height; divisible by the checkpoint's patch size. Empty: the img_size the "
        "checkpoint was trained with.",
    )


@dataclass
class NVDINOv2TensorRTConfig(TensorRTConfig):
    data_type: str = field(
        "fp32",
        valid_options=("fp32", "fp16"),
        normalize=trt_data_type,
        description="Engine precision (any case: TAO-Deploy writes FP32).",
    )


@dataclass
class NVDINOv2GenTrtEngineConfig(GenTrtEngineConfig):
    input_width: int | None = field(
        None, valid_min=14, description="Input width. Empty: the ONNX file's own (static) width."
    )
    input_height: int | None = field(
        None, valid_min=14, description="Input height. Empty: the ONNX file's own (static) height."
    )
    tensorrt: NVDINOv2TensorRTConfig = section(
        NVDINOv2TensorRTConfig, description="TensorRT builder settings."
    )


@dataclass
class NVDINOv2Config(ExperimentConfig):
    """Top-level NVDINOv2 spec."""

    model_names: ClassVar[tuple[str, ...]] = ("nvdinov2",)

    model: ModelConfig = section(ModelConfig, description="Backbones, heads and distillation.")
    dataset: DatasetConfig = section(DatasetConfig, description="Images and multi-crop augmentation.")
    train: NVDINOv2TrainConfig = section(NVDINOv2TrainConfig, description="Training.")
    evaluate: NVDINOv2EvaluateConfig = section(
        NVDINOv2EvaluateConfig, description="kNN and linear-probe evaluation of frozen features."
    )
    inference: NVDINOv2InferenceConfig = section(NVDINOv2InferenceConfig, description="Embedding extraction.")
    export: NVDINOv2ExportConfig = section(NVDINOv2ExportConfig, description="ONNX export of the backbone.")
    gen_trt_engine: NVDINOv2GenTrtEngineConfig = section(
        NVDINOv2GenTrtEngineConfig, description="TensorRT engine build."
    )


# -------------------------------------------------------------------------------------- resolve


def _check_range(issues: list[SpecIssue], key: str, values: list[float]) -> None:
    if len(values) != 2 or values[0] > values[1]:
        issues.append(SpecIssue(key, f"expected [min, max] with min <= max, got {values}"))


def _check_divisible(issues: list[SpecIssue], key: str, value: int, patch: int) -> None:
    if value % patch:
        lower, upper = value - value % patch, value - value % patch + patch
        issues.append(
            SpecIssue(
                key,
                f"{value} is not divisible by model.backbone.patch_size={patch}",
                f"use {lower} or {upper}",
            )
        )


def _check_schedules(issues: list[SpecIssue], schedulers: SchedulersConfig) -> None:
    for name in (
        "learning_rate",
        "last_layer_learning_rate",
        "weight_decay",
        "momentum",
        "teacher_temperature",
    ):
        sched = getattr(schedulers, name)
        if sched.warm_up_steps > sched.max_decay_steps:
            issues.append(
                SpecIssue(
                    f"train.schedulers.{name}.warm_up_steps",
                    f"{sched.warm_up_steps} is past max_decay_steps={sched.max_decay_steps}",
                    "make warm_up_steps <= max_decay_steps",
                )
            )


def resolve(cfg: NVDINOv2Config, action: str | None = None) -> NVDINOv2Config:
    """Check cross-field rules and fill derived values (the scaled learning rates).

    Returns a copy of ``cfg``; raises :class:`SpecError` listing every problem found.
    """
    issues: list[SpecIssue] = check_sections(cfg, action)
    backbone, transform = cfg.model.backbone, cfg.dataset.transform
    patch = backbone.patch_size
    _check_divisible(issues, "model.backbone.img_size", backbone.img_size, patch)
    _check_divisible(issues, "dataset.transform.global_crops_size", transform.global_crops_size, patch)
    _check_divisible(issues, "dataset.transform.local_crops_size", transform.local_crops_size, patch)
    # export/gen_trt_engine sizes are checked against the *checkpoint's* patch size when they run:
    # a downstream job's spec (filled by --parent) does not describe the trained model.
    if transform.n_local_crops > 0 and transform.local_crops_size > transform.global_crops_size:
        issues.append(
            SpecIssue(
                "dataset.transform.local_crops_size",
                f"{transform.local_crops_size} is larger than global_crops_size={transform.global_crops_size}",
                "local crops should be the smaller views",
            )
        )
    _check_range(issues, "dataset.transform.global_crops_scale", transform.global_crops_scale)
    _check_range(issues, "dataset.transform.local_crops_scale", transform.local_crops_scale)
    jitter = transform.color_jitter
    if len(jitter) != 4 or jitter[3] > 0.5:
        issues.append(
            SpecIssue(
                "dataset.transform.color_jitter",
                f"expected [brightness, contrast, saturation, hue] with hue <= 0.5, got {jitter}",
                "DINOv2's values are [0.4, 0.4, 0.2, 0.1]",
            )
        )
    if transform.n_global_crops == 1 and transform.n_local_crops == 0:
        issues.append(
            SpecIssue(
                "dataset.transform.n_global_crops",
                "one global crop and no local crop leave the DINO loss no pair of views to compare",
                "use n_global_crops=2 or n_local_crops > 0",
            )
        )
    if not cfg.model.distill.enable and backbone.teacher_type != backbone.student_type:
        issues.append(
            SpecIssue(
                "model.backbone.student_type",
                f"{backbone.student_type!r} differs from teacher_type={backbone.teacher_type!r} "
                "without distillation",
                "set both to the same size, or set model.distill.enable=true",
            )
        )
    masking = cfg.train.masking
    if masking.mask_ratio_min > masking.mask_ratio_max:
        issues.append(
            SpecIssue(
                "train.masking.mask_ratio_min",
                f"{masking.mask_ratio_min} is above mask_ratio_max={masking.mask_ratio_max}",
            )
        )
    _check_schedules(issues, cfg.train.schedulers)
    if (
        action == "train"
        and cfg.model.distill.enable
        and not cfg.model.distill.pretrained_non_distill_pl_model_path
    ):
        issues.append(
            SpecIssue(
                "model.distill.pretrained_non_distill_pl_model_path",
                "is empty but model.distill.enable=true",
                "point it at an nvdinov2 model_epoch_*.pth or teacher/student_epoch_*.pth of a non-distilled run",
            )
        )
    if issues:
        raise SpecError(issues)

    out = copy.deepcopy(cfg)
    total_batch = out.dataset.batch_size * out.train.num_gpus * out.train.num_nodes
    scaled_lr = LR_REFERENCE * math.sqrt(total_batch / LR_REFERENCE_BATCH)
    for sched in (out.train.schedulers.learning_rate, out.train.schedulers.last_layer_learning_rate):
        if sched.val_base is None:
            sched.val_base = scaled_lr
    return out
