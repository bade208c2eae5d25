"""Image classification spec = TAO's ``classification_pyt`` experiment spec.

Keys, defaults and meanings are TAO's (NVIDIA tao-core ``config/classification_pyt``: the
dataclass values TAO runs with, not the template defaults), so a TAO spec loads as written:
``dataset.img_size``, ``dataset.num_classes``, ``model.backbone.freeze_backbone``,
``model.head.loss.label_smooth_val``, ``dataset.augmentation.random_flip`` ...,
``train.optim.{optim, policy, policy_params, skip_names}``, ``train.enable_ema``. Where Foveal
offers more, the extra keys sit next to TAO's and say so in their description ("Foveal:").
TAO keys that only TAO's ``distill`` / ``quantize`` actions read are accepted so TAO's full
templates load; those actions are refused in one line. Images are read from class subfolders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from foveal.networks.classification.legacy import RENAMED_KEYS, SUCCESSOR_KEYS
from foveal.spec.common import (
    EvaluateConfig,
    ExperimentConfig,
    ExportConfig,
    GenTrtEngineConfig,
    InferenceConfig,
    SpeedOptions,
    TensorRTConfig,
    TrainConfig,
)
from foveal.spec.fields import field, section

HEAD_TYPES = ("TAOLinearClsHead", "LogisticRegressionHead")
OPTIMIZERS = ("adamw", "adam", "sgd")
POLICIES = ("linear", "step", "multistep", "cosine")

# ---------------------------------------------------------------------------------------- model


@dataclass
class BackboneConfig:
    type: str = field(
        "fan_small_12_p4_hybrid",
        popular=True,
        display_name="Backbone",
        description="Backbone name (TAO's): FAN (fan_tiny_12_p16_224 ... fan_xlarge_16_p4_hybrid), the NVDINOv2 "
        "ViTs vit_large_patch14_dinov2_swiglu / vit_giant_patch14_reg4_dinov2_swiglu, resnet_18 ... resnet_152d, "
        "mit_b0 ... mit_b5, vit_l_14_siglip_clipa_224, convnextv2_*, hiera_*_224, vit_{base,large}_patch16, "
        "vit_huge_patch14; Foveal's vit_{t,s,b,l,g} (nvdinov2 students) and ported models' names too.",
    )
    pretrained_backbone_path: str | None = field(
        None,
        parent_param=True,
        popular=True,
        description="Backbone weights to start from: a TAO checkpoint (any generation), an NVDINOv2 student or "
        "MAE pretrain checkpoint, or a plain state dict.",
    )
    freeze_backbone: bool = field(
        False, popular=True, description="Train only the head (linear probing): the backbone stays fixed, in eval mode."
    )
    freeze_norm: bool = field(
        False, description="Freeze every BatchNorm (statistics and affine weights), as TAO's FrozenBatchNorm2d."
    )
    freeze_blocks: list[int] = field(
        default_factory=list,
        valid_min=0,
        description="Foveal: indices of backbone blocks to keep fixed (0 = first); the rest trains.",
    )
    drop_path_rate: float | None = field(
        None,
        valid_min=0.0,
        valid_max=0.9,
        description="Foveal: stochastic depth rate. Empty: the backbone's own default (as TAO builds it).",
    )
    patch_size: int | None = field(
        None,
        valid_options=(4, 8, 14, 16),
        description="Foveal: ViT patch size when it differs from the type's own (e.g. vit_t pretrained by nvdinov2 "
        "with model.backbone.patch_size=16). Empty: the type's.",
    )


@dataclass
class LossConfig:
    type: str = field("CrossEntropyLoss", valid_options=("CrossEntropyLoss",), description="Classification loss.")
    label_smooth_val: float = field(
        0.0, valid_min=0.0, valid_max=1.0, automl_enabled=True, description="Label smoothing of the cross entropy."
    )


@dataclass
class HeadConfig:
    type: str = field(
        "TAOLinearClsHead",
        valid_options=HEAD_TYPES,
        description="Classification head: one linear layer on the backbone's pooled feature (both of TAO's names).",
    )
    binary: bool = field(
        False,
        description="TAO 5.x/6.0's one-logit binary head; TAO 6.25 ignores it and so does Foveal (a 2-class "
        "head; a warning says so when true).",
    )
    in_channels: int = field(
        448,
        valid_min=1,
        description="Head input width. The head always takes the backbone's feature width (as TAO 6.25); a "
        "different value here is reported and not used.",
    )
    custom_args: dict[str, Any] | None = field(None, description="TAO's extra head arguments; none are used.")
    loss: LossConfig = section(LossConfig, description="Loss.")
    topk: list[int] = field(
        default_factory=lambda: [1],
        valid_min=1,
        description="Top-k accuracies reported by validation and evaluate (top-1 always).",
    )
    dropout: float = field(0.0, valid_min=0.0, valid_max=0.9, description="Foveal: dropout before the head.")


@dataclass
class ModelConfig:
    backbone: BackboneConfig = section(BackboneConfig, description="Feature extractor.")
    head: HeadConfig = section(HeadConfig, description="Classification head and loss.")
    global_pool: str | None = field(
        None,
        valid_options=("cls", "avg"),
        description="Foveal: feature fed to the head: the backbone's own pooled feature (cls: class token or "
        "pooled map) or the average of its tokens. Empty: avg for ConvNeXt V2, cls otherwise.",
    )


# -------------------------------------------------------------------------------------- dataset


@dataclass
class ImagesDir:
    images_dir: str | None = field(None, popular=True, description="Folder or archive of images (path or URI).")


@dataclass
class TrainImagesDir:
    images_dir: str | None = field(
        None,
        required=("train",),
        popular=True,
        description="Training images, one subfolder per class: a folder or archive (path or URI).",
    )


@dataclass
class ValImagesDir:
    images_dir: str | None = field(
        None,
        popular=True,
        description="Validation images, one subfolder per class: read by evaluate (TAO-Deploy's specs give "
        "dataset.test_dataset.images_dir instead), and during train (empty: no validation).",
    )


@dataclass
class TestImagesDir:
    images_dir: str | None = field(
        None, required=("inference",), description="Images to classify at inference, at any depth (labels not needed)."
    )


@dataclass
class NoLabelFolder:
    folder_path: str | None = field(
        None, description="Unlabeled images for TAO's distill action (not implemented in Foveal; train ignores it)."
    )


@dataclass
class RandomFlipConfig:
    enable: bool = field(True, description="Random flips.")
    hflip_probability: float = field(0.5, valid_min=0.0, valid_max=1.0, description="Horizontal flip probability.")
    vflip_probability: float = field(0.5, valid_min=0.0, valid_max=1.0, description="Vertical flip probability.")


@dataclass
class RandomRotateConfig:
    enable: bool = field(True, description="Random rotation by one of angle_list.")
    rotate_probability: float = field(0.5, valid_min=0.0, valid_max=1.0, description="Rotation probability.")
    angle_list: list[float] = field(
        default_factory=lambda: [90.0, 180.0, 270.0],
        description="Angles (degrees, counter-clockwise) drawn uniformly (every entry; TAO uses the first three).",
    )


@dataclass
class RandomColorConfig:
    enable: bool = field(True, description="Colour jitter.")
    brightness: float = field(0.3, valid_min=0.0, valid_max=2.0, description="Brightness factor in [1-x, 1+x].")
    contrast: float = field(0.3, valid_min=0.0, valid_max=2.0, description="Contrast factor in [1-x, 1+x].")
    saturation: float = field(0.3, valid_min=0.0, valid_max=2.0, description="Saturation factor in [1-x, 1+x].")
    hue: float = field(0.0, valid_min=0.0, valid_max=0.5, description="Hue shift in [-x, x].")
    color_probability: float = field(
        0.5, valid_min=0.0, valid_max=1.0, description="Probability of jittering an image (TAO jitters every one)."
    )


@dataclass
class RandomEraseConfig:
    enable: bool = field(True, description="Random erasing of one rectangle (after normalisation).")
    erase_probability: float = field(0.2, valid_min=0.0, valid_max=1.0, description="Erasing probability.")


@dataclass
class RandomAugConfig:
    enable: bool = field(True, description="RandAugment.")
    policy: str = field(
        "rand-n2-m5-mstd1.0-inc1",
        description="Foveal: the RandAugment policy in timm's syntax (TAO's fixed one is the default).",
    )


@dataclass
class ScaleRandomCropConfig:
    enable: bool = field(True, description="Rescale by a factor in scale_range, then crop img_size at random.")
    scale_range: list[float] = field(
        default_factory=lambda: [1.0, 1.2], valid_min=0.0, description="[min, max] rescale factor."
    )


@dataclass
class AugmentationConfig:
    """TAO's pipeline (foveal.data.tao_augment), every step on by default as in TAO, but mixup."""

    random_flip: RandomFlipConfig = section(RandomFlipConfig, description="Flips.")
    random_rotate: RandomRotateConfig = section(RandomRotateConfig, description="Rotation.")
    random_color: RandomColorConfig = section(RandomColorConfig, description="Colour jitter.")
    random_erase: RandomEraseConfig = section(RandomEraseConfig, description="Random erasing.")
    random_aug: RandomAugConfig = section(RandomAugConfig, description="RandAugment.")
    with_scale_random_crop: ScaleRandomCropConfig = section(ScaleRandomCropConfig, description="Scale + crop.")
    with_random_blur: bool = field(True, description="Gaussian blur (radius drawn from [0, 1) pixels) on every image.")
    with_random_crop: bool = field(True, description="Random resized crop (area 8-100 %, aspect 3/4-4/3).")
    mean: list[float] = field(
        default_factory=lambda: [0.485, 0.456, 0.406], description="Per-channel normalisation mean (0-1 scale)."
    )
    std: list[float] = field(
        default_factory=lambda: [0.229, 0.224, 0.225], description="Per-channel normalisation std (0-1 scale)."
    )
    mixup_cutmix: bool = field(
        False, automl_enabled=True, description="Mixup or CutMix on every batch (a coin flip picks which)."
    )
    mixup_alpha: float = field(0.4, valid_min=0.0, valid_max=1.0, description="Beta(alpha, alpha) of mixup and cutmix.")
    cutmix_alpha: float | None = field(
        None, valid_min=0.0, valid_max=2.0, description="Foveal: CutMix's own alpha. Empty: mixup_alpha."
    )
    cutmix_minmax: list[float] = field(
        default_factory=list,
        valid_min=0.0,
        valid_max=1.0,
        description="Foveal: CutMix box side as [min, max] fractions of the image; empty = from the Beta draw.",
    )
    mixup_prob: float = field(1.0, valid_min=0.0, valid_max=1.0, description="Foveal: probability of mixing a batch.")
    mixup_switch_prob: float = field(
        0.5, valid_min=0.0, valid_max=1.0, description="Foveal: probability of CutMix rather than mixup (TAO: 0.5)."
    )
    mixup_mode: str = field(
        "batch",
        valid_options=("batch", "pair", "elem"),
        description="Foveal: one draw per batch (TAO), per pair of images, or per image.",
    )


@dataclass
class DatasetConfig:
    root_dir: str | None = field(
        None,
        description="Dataset root: where classes.txt is read from when classes_file is not set (never written).",
    )
    dataset: str = field("CLDataset", valid_options=("CLDataset",), description="Dataset type (class subfolders).")
    num_classes: int = field(
        20,
        valid_min=0,
        popular=True,
        description="Number of classes: must equal the classes found (classes file or class subfolders); "
        "Foveal: 0 = take the number found.",
    )
    img_size: int = field(224, valid_min=16, popular=True, description="Images are resized to img_size x img_size.")
    batch_size: int = field(8, valid_min=1, popular=True, description="Images per device per step.")
    workers: int = field(8, valid_min=0, description="Data loader worker processes per device; 0 = main process.")
    shuffle: bool = field(True, description="Shuffle the training images every epoch.")
    augmentation: AugmentationConfig = section(AugmentationConfig, description="Training augmentation.")
    train_dataset: TrainImagesDir = section(TrainImagesDir, description="Training images.")
    train_nolabel: NoLabelFolder = section(NoLabelFolder, description="Unlabeled images (TAO's distill).")
    val_dataset: ValImagesDir = section(ValImagesDir, description="Validation images.")
    test_dataset: TestImagesDir = section(TestImagesDir, description="Inference images.")
    quant_calibration_dataset: ImagesDir = section(ImagesDir, description="Calibration images (TAO's quantize).")
    classes_file: str | None = field(
        None, description="Text file with one class name per line (line i = class i). Empty: <root_dir>/classes.txt "
        "if it exists, else the sorted class subfolders."
    )


# ---------------------------------------------------------------------------------------- train


@dataclass
class PolicyParamsConfig:
    step_size: int = field(30, valid_min=1, description="step: multiply the LR by gamma every step_size epochs.")
    gamma: float = field(0.1, valid_min=0.0, valid_max=1.0, description="step / multistep: decay factor.")
    milestones: list[int] = field(
        default_factory=lambda: [10, 20], valid_min=1, description="multistep: epochs where the LR is multiplied by gamma."
    )


@dataclass
class OptimConfig:
    optim: str = field("adamw", valid_options=OPTIMIZERS, popular=True, description="Optimizer.")
    lr: float = field(
        6e-5,
        valid_min=0.0,
        valid_max=1.0,
        math_cond="> 0",
        automl_enabled=True,
        popular=True,
        display_name="Learning rate",
        description="Base learning rate (not rescaled by batch size).",
    )
    policy: str = field(
        "linear",
        valid_options=POLICIES,
        normalize=lambda v: v.lower() if isinstance(v, str) else v,
        description="LR schedule: linear (1 - e/(E+1) per epoch), step, multistep (per epoch) or cosine (per step, "
        "to 0); warm-up first, if any.",
    )
    policy_params: PolicyParamsConfig = section(PolicyParamsConfig, description="Schedule parameters.")
    momentum: float = field(0.9, valid_min=0.0, valid_max=1.0, description="SGD momentum.")
    weight_decay: float = field(
        0.01, valid_min=0.0, valid_max=1.0, automl_enabled=True, description="Weight decay (not on biases and norms)."
    )
    betas: list[float] = field(
        default_factory=lambda: [0.9, 0.999], valid_min=0.0, valid_max=1.0, description="Adam/AdamW betas."
    )
    skip_names: list[str] = field(
        default_factory=list, description="No weight decay on parameters whose name contains one of these."
    )
    warmup_epochs: int = field(
        0,
        valid_min=0,
        valid_max=50,
        automl_enabled=True,
        math_cond="< train.num_epochs",
        description="Epochs of linear warm-up from 0 (TAO: cosine only; Foveal: every policy).",
    )
    monitor_name: str = field(
        "val_loss",
        description="Metric that picks the best checkpoint: val_loss, val_top1 (or TAO's val_acc_1) ...; "
        "losses are minimised, accuracies maximised.",
    )
    layer_decay: float = field(
        1.0,
        valid_min=0.5,
        valid_max=1.0,
        automl_enabled=True,
        description="Foveal: layer-wise learning rate decay from the top block down; 1.0 = off.",
    )
    min_lr_ratio: float = field(0.0, valid_min=0.0, valid_max=1.0, description="Foveal: cosine's final LR / lr.")


@dataclass
class ClassificationTrainConfig(SpeedOptions, TrainConfig):
    pretrained_model_path: str | None = field(
        None, parent_param=True, description="A whole classifier checkpoint (backbone + head) to start from."
    )
    optim: OptimConfig = section(OptimConfig, description="Optimizer and learning-rate schedule.")
    enable_ema: bool = field(
        False, description="Keep an exponential moving average of the weights; validation, evaluate, "
        "inference and export use it."
    )
    ema_decay: float = field(0.998, valid_min=0.0, valid_max=1.0, description="EMA decay per optimizer step.")
    clip_grad_norm: float = field(2.0, valid_min=0.0, description="Clip the global gradient norm; 0 = off.")
    class_weights: str = field(
        "none",
        valid_options=("none", "auto"),
        description="Foveal: loss class weights: none, or auto (inverse class frequency of the training set).",
    )


# -------------------------------------------------------------------------------- other actions


@dataclass
class ClassificationEvaluateConfig(EvaluateConfig):
    vis_after_n_batches: int = field(
        16, valid_min=1, description="inference: write annotated images (visualize/) of every n-th batch."
    )
    is_quantized: bool = field(False, description="Evaluate TAO's quantized model (quantize is not implemented).")


@dataclass
class ClassificationInferenceConfig(InferenceConfig):
    vis_after_n_batches: int = field(
        16, valid_min=1, description="Write annotated images (visualize/) of every n-th batch."
    )
    is_quantized: bool = field(False, description="Run TAO's quantized model (quantize is not implemented).")


@dataclass
class ClassificationExportConfig(ExportConfig):
    input_width: int | None = field(  # type: ignore[assignment]  # empty: the trained img_size
        None,
        valid_min=16,
        description="Input width. Empty: the img_size the checkpoint was trained with (TAO's default 960 is a "
        "detection size).",
    )
    input_height: int | None = field(  # type: ignore[assignment]  # empty: the trained img_size
        None, valid_min=16, description="Input height. Empty: the trained img_size."
    )
    format: str = field("onnx", valid_options=("onnx", "xdl"), description="Export format (onnx; xdl is refused).")
    serialize_nvdsinfer: bool = field(
        False, description="Also write labels.txt and a DeepStream nvinfer config next to the ONNX file."
    )
    is_quantized: bool = field(False, description="Export TAO's quantized model (quantize is not implemented).")
    softmax: bool = field(
        False,
        description="Foveal: end the graph with a softmax: the output is 'probabilities' (rows sum to 1) instead "
        "of 'logits'.",
    )


@dataclass
class CalibrationConfig:
    cal_image_dir: list[str] = field(
        default_factory=list, description="Folders of calibration images (int8 engines)."
    )
    cal_cache_file: str | None = field(None, description="Calibration cache: read when it exists, else written.")
    cal_batch_size: int = field(1, valid_min=1, description="Images per calibration batch.")
    cal_batches: int = field(1, valid_min=1, description="Calibration batches.")


@dataclass
class ClassificationTensorRTConfig(TensorRTConfig):
    calibration: CalibrationConfig = section(CalibrationConfig, description="INT8 calibration.")


@dataclass
class ClassificationGenTrtEngineConfig(GenTrtEngineConfig):
    tensorrt: ClassificationTensorRTConfig = section(
        ClassificationTensorRTConfig, description="TensorRT builder settings."
    )


@dataclass
class DistillConfig:
    """TAO's ``distill`` section (its action is not implemented in Foveal; accepted so TAO templates load)."""

    teacher: ModelConfig = section(ModelConfig, description="Teacher model.")
    pretrained_teacher_model_path: str | None = field(None, description="Teacher weights.")
    bindings: list[dict[str, Any]] = field(default_factory=list, description="Feature bindings.")
    loss_type: str = field("KL", description="Distillation loss.")
    loss_lambda: float = field(0.5, valid_min=0.0, valid_max=1.0, description="Distillation loss weight.")
    mode: str = field("auto", description="auto, logits, summary or spatial.")
    use_mlp: bool = field(True, description="Project student features with an MLP.")
    mlp_hidden_size: int = field(1024, valid_min=1, description="MLP hidden size.")
    mlp_num_inner: int = field(0, valid_min=0, description="MLP inner layers.")
    results_dir: str | None = field(None, description="Where distill writes.")


@dataclass
class QuantizeConfig:
    """TAO's ``quantize`` section (its action is not implemented in Foveal; accepted so TAO templates load)."""

    backend: str = field("torchao", description="Quantization backend.")
    mode: str = field("weight_only_ptq", description="weight_only_ptq or static_ptq.")
    algorithm: str = field("minmax", description="Calibration algorithm.")
    layers: list[dict[str, Any]] = field(default_factory=list, description="Per-layer settings.")
    skip_names: list[str] = field(default_factory=list, description="Layers left unquantized.")
    model_path: str | None = field(None, description="Model to quantize.")
    results_dir: str | None = field(None, description="Where quantize writes.")
    backend_kwargs: dict[str, Any] = field(default_factory=dict, description="Backend options.")
    device: str = field("cuda", description="Device.")


# -------------------------------------------------------------------------------------- top


@dataclass
class ClassificationConfig(ExperimentConfig):
    """Top-level classification spec (TAO's classification_pyt)."""

    model_names: ClassVar[tuple[str, ...]] = ("classification_pyt", "classification")
    # keys Foveal 0.x named its own way: an unknown-key error names TAO's key instead of guessing
    renamed_keys: ClassVar[dict[str, str]] = {**RENAMED_KEYS, **SUCCESSOR_KEYS}

    model: ModelConfig = section(ModelConfig, description="Backbone and head.")
    dataset: DatasetConfig = section(DatasetConfig, description="Images and augmentation.")
    train: ClassificationTrainConfig = section(ClassificationTrainConfig, description="Training.")
    evaluate: ClassificationEvaluateConfig = section(
        ClassificationEvaluateConfig, description="Evaluation on dataset.val_dataset."
    )
    inference: ClassificationInferenceConfig = section(
        ClassificationInferenceConfig, description="Inference on dataset.test_dataset."
    )
    export: ClassificationExportConfig = section(ClassificationExportConfig, description="ONNX export.")
    gen_trt_engine: ClassificationGenTrtEngineConfig = section(
        ClassificationGenTrtEngineConfig, description="TensorRT engine build."
    )
    distill: DistillConfig = section(DistillConfig, description="TAO's distill action (not implemented).")
    quantize: QuantizeConfig = section(QuantizeConfig, description="TAO's quantize action (not implemented).")
