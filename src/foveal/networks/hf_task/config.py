"""Specs of the Hugging Face task networks (object detection, semantic segmentation, depth,
zero-shot image classification).

The dataset keys are TAO's where TAO has the task: detection reads COCO through
``dataset.train_data_sources`` (a list of ``{image_dir, json_file}``), ``val_data_sources``,
``test_data_sources`` (evaluate) and ``infer_data_sources`` (inference), as TAO's rtdetr,
deformable_detr and grounding_dino specs do; semantic segmentation reads TAO segformer's layout
through ``dataset.segment.root_dir`` (``images/<split>`` + ``masks/<split>``) and its split keys.
Depth, which TAO's vision-foundation workflow does not train, reads the same layout with
``depth/<split>`` 16-bit PNGs. ``train.optim`` takes TAO's detection names (``lr``,
``lr_backbone``, ``lr_scheduler``, ``lr_steps``, ``lr_decay``, ``warmup_epochs``). Zero-shot
classification (CLIP, SigLIP) reads class subfolders with classification's keys
(``dataset.train_dataset.images_dir`` ...); the class names become text prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foveal.errors import SpecError, SpecIssue
from foveal.spec.common import (
    EvaluateConfig,
    ExperimentConfig,
    ExportConfig,
    GenTrtEngineConfig,
    InferenceConfig,
    TrainConfig,
)
from foveal.spec.fields import field, section

SCHEDULERS = ("cosine", "multistep", "linear")


@dataclass
class HFModelConfig:
    hf_model_dir: str | None = field(
        None,
        required=("train",),
        description="The Hugging Face model folder (config.json + weights, as save_pretrained writes it) whose "
        "whole model (backbone, neck and head) is trained; a port fills it in.",
    )


@dataclass
class ZeroShotModelConfig(HFModelConfig):
    tokenizer_dir: str | None = field(
        None,
        description="Folder of the text model's tokenizer (tokenizer_config.json, vocab ...). Empty: "
        "model.hf_model_dir.",
    )
    prompt_template: str = field(
        "a photo of a {}.",
        description="Text prompt per class; {} is replaced by the class name (underscores become spaces).",
    )


@dataclass
class TaskAugmentationConfig:
    hflip_probability: float = field(
        0.5, valid_min=0.0, valid_max=1.0, description="Probability of a horizontal flip (image and annotation)."
    )
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406], description="Per-channel mean.")
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225], description="Per-channel std.")


@dataclass
class TaskDatasetConfig:
    """The dataset keys every task shares."""

    img_size: int = field(
        224, valid_min=16, popular=True, description="Side of the square input images and annotation maps."
    )
    num_classes: int = field(
        0,
        valid_min=0,
        description="Number of classes (0: the number the dataset declares: COCO categories, or the ids of "
        "the masks up to the largest). Unused for depth.",
    )
    batch_size: int = field(4, valid_min=1, popular=True, description="Batch size per GPU.")
    workers: int = field(2, valid_min=0, description="Data loader workers per GPU.")
    augmentation: TaskAugmentationConfig = section(TaskAugmentationConfig, description="Augmentation.")


@dataclass
class CocoSource:
    image_dir: str | None = field(None, description="Folder the COCO file_name entries are relative to.")
    json_file: str | None = field(None, description="COCO detection annotation file (instances_*.json).")


@dataclass
class InferSource:
    image_dir: str | None = field(None, description="Images (a file, a folder or an archive) to run on.")
    classmap: str | None = field(
        None, description="A text file of class names, one per line (TAO's); empty: the trained classes."
    )


@dataclass
class DetectionDatasetConfig(TaskDatasetConfig):
    train_data_sources: list[CocoSource] = field(
        default_factory=list, description="Training data: a list of {image_dir, json_file} (COCO)."
    )
    val_data_sources: CocoSource = section(CocoSource, description="Validation data (COCO).")
    test_data_sources: CocoSource = section(CocoSource, description="Evaluation data (COCO).")
    infer_data_sources: InferSource = section(InferSource, description="Inference images.")


@dataclass
class ImagesDir:
    images_dir: str | None = field(None, description="One subfolder of images per class (or an archive of that).")


@dataclass
class ZeroShotDatasetConfig(TaskDatasetConfig):
    train_dataset: ImagesDir = section(ImagesDir, description="Training images in class subfolders.")
    val_dataset: ImagesDir = section(ImagesDir, description="Validation images in class subfolders.")
    test_dataset: ImagesDir = section(ImagesDir, description="Images to run inference on (any layout).")


@dataclass
class SplitFolders:
    root_dir: str | None = field(None, description="The dataset folder: images/<split>, masks/<split> (or depth/<split>).")
    train_split: str = field("train", description="Training split folder name.")
    validation_split: str = field("val", description="Validation split folder name.")
    test_split: str = field("val", description="Evaluation split folder name.")
    predict_split: str = field("test", description="Inference split folder name (images only).")


@dataclass
class SegmentationDatasetConfig(TaskDatasetConfig):
    segment: SplitFolders = section(SplitFolders, description="TAO segformer's dataset folders.")


@dataclass
class DepthFolders(SplitFolders):
    depth_scale: float = field(
        1000.0, valid_min=0.0, math_cond="> 0", description="Depth PNG units per metre (1000: millimetres)."
    )


@dataclass
class DepthDatasetConfig(TaskDatasetConfig):
    depth: DepthFolders = section(DepthFolders, description="Depth dataset folders (images/, depth/).")


@dataclass
class TaskOptimConfig:
    optimizer: str = field("AdamW", valid_options=("AdamW", "SGD"), description="Optimizer (TAO's names).")
    lr: float = field(
        1e-4, valid_min=1e-6, valid_max=0.1, math_cond="> 0", automl_enabled=True, popular=True,
        description="Learning rate of the neck and head.",
    )  # fmt: skip
    lr_backbone: float = field(
        1e-5, valid_min=1e-7, valid_max=0.01, automl_enabled=True,
        description="Learning rate of the backbone (the model's backbone module, else its base model: SegFormer's "
        "encoder, DPT's ViT; an image-text model: both towers).",
    )  # fmt: skip
    momentum: float = field(0.9, valid_min=0.0, valid_max=1.0, description="SGD momentum.")
    weight_decay: float = field(1e-4, valid_min=0.0, valid_max=0.1, automl_enabled=True, description="Weight decay.")
    lr_scheduler: str = field(
        "MultiStep",
        valid_options=("MultiStep", "Cosine", "Linear"),
        description="LR schedule: MultiStep (lr_decay at each of lr_steps epochs), Cosine or Linear (per step).",
    )
    lr_steps: list[int] = field(default_factory=lambda: [11], description="Epochs of the MultiStep decays.")
    lr_decay: float = field(0.1, valid_min=0.0, valid_max=1.0, description="MultiStep decay factor.")
    warmup_epochs: int = field(0, valid_min=0, description="Epochs of linear warm-up.")


@dataclass
class TaskTrainConfig(TrainConfig):
    optim: TaskOptimConfig = section(TaskOptimConfig, description="Optimizer and schedule.")
    clip_grad_norm: float = field(0.1, valid_min=0.0, description="Gradient norm clip (0: off), as TAO's DETRs.")


@dataclass
class TaskExportConfig(ExportConfig):
    input_width: int = field(0, valid_min=0, description="Input width (0: the trained dataset.img_size).")
    input_height: int = field(0, valid_min=0, description="Input height (0: the trained dataset.img_size).")


@dataclass
class TaskInferenceConfig(InferenceConfig):
    conf_threshold: float = field(
        0.5, valid_min=0.0, valid_max=1.0, description="Detection: boxes scoring below it are not written or drawn."
    )


@dataclass
class _TaskConfig(ExperimentConfig):
    model: HFModelConfig = section(HFModelConfig, description="The Hugging Face model.")
    train: TaskTrainConfig = section(TaskTrainConfig, description="Training.")
    evaluate: EvaluateConfig = section(EvaluateConfig, description="Evaluation.")
    inference: TaskInferenceConfig = section(TaskInferenceConfig, description="Inference.")
    export: TaskExportConfig = section(TaskExportConfig, description="ONNX export.")
    gen_trt_engine: GenTrtEngineConfig = section(GenTrtEngineConfig, description="TensorRT engine.")


@dataclass
class DetectionConfig(_TaskConfig):
    dataset: DetectionDatasetConfig = section(DetectionDatasetConfig, description="COCO detection data.")


@dataclass
class SegmentationConfig(_TaskConfig):
    dataset: SegmentationDatasetConfig = section(SegmentationDatasetConfig, description="Segmentation data.")


@dataclass
class DepthConfig(_TaskConfig):
    dataset: DepthDatasetConfig = section(DepthDatasetConfig, description="Depth data.")


@dataclass
class ZeroShotConfig(_TaskConfig):
    model: ZeroShotModelConfig = section(ZeroShotModelConfig, description="The image-text model.")
    dataset: ZeroShotDatasetConfig = section(ZeroShotDatasetConfig, description="Class-folder data.")


@dataclass
class GroundingModelConfig(HFModelConfig):
    tokenizer_dir: str | None = field(
        None,
        description="Folder of the text encoder's tokenizer (BERT's vocab.txt ...). Empty: model.hf_model_dir. The "
        "dataset's category names become the caption 'name1 . name2 . ...'.",
    )


@dataclass
class GroundingConfig(_TaskConfig):
    model: GroundingModelConfig = section(GroundingModelConfig, description="The text-conditioned detector.")
    dataset: DetectionDatasetConfig = section(DetectionDatasetConfig, description="COCO detection data.")


@dataclass
class ClassifierConfig(_TaskConfig):
    dataset: ZeroShotDatasetConfig = section(ZeroShotDatasetConfig, description="Class-folder data.")


@dataclass
class InstanceConfig(_TaskConfig):
    dataset: DetectionDatasetConfig = section(
        DetectionDatasetConfig, description="COCO instance segmentation data (segmentation as polygons or RLE)."
    )


def resolve(cfg: Any, action: str | None = None) -> Any:
    """Cross-field checks: the shared sections' and the data each action reads."""
    from foveal.spec.common import check_sections

    issues: list[SpecIssue] = check_sections(cfg, action)
    data = cfg.dataset
    if isinstance(data, DetectionDatasetConfig):
        if action == "train" and not data.train_data_sources:
            issues.append(SpecIssue("dataset.train_data_sources", "not set",
                                    "list at least one {image_dir, json_file} COCO source"))  # fmt: skip
        for i, source in enumerate(data.train_data_sources if action == "train" else []):
            for key in ("image_dir", "json_file"):
                if not getattr(source, key):
                    issues.append(SpecIssue(f"dataset.train_data_sources[{i}].{key}", "not set"))
        wanted = {"evaluate": ("test_data_sources", ("image_dir", "json_file")),
                  "inference": ("infer_data_sources", ("image_dir",))}.get(action or "")  # fmt: skip
        if wanted:
            for key in wanted[1]:
                if not getattr(getattr(data, wanted[0]), key):
                    issues.append(SpecIssue(f"dataset.{wanted[0]}.{key}", "not set"))
    elif isinstance(data, ZeroShotDatasetConfig):  # zero-shot and whole classifiers
        wanted_key = {"train": "train_dataset", "evaluate": "val_dataset", "inference": "test_dataset"}.get(action or "")
        if wanted_key and not getattr(data, wanted_key).images_dir:
            issues.append(SpecIssue(f"dataset.{wanted_key}.images_dir", "not set", "a folder of class subfolders"))
        if "{}" not in getattr(cfg.model, "prompt_template", "{}"):
            issues.append(SpecIssue("model.prompt_template", f"{cfg.model.prompt_template!r} has no {{}}",
                                    "write where the class name goes, e.g. 'a photo of a {}.'"))  # fmt: skip
    else:
        folders = getattr(data, "segment", None) or getattr(data, "depth", None)
        name = "segment" if isinstance(data, SegmentationDatasetConfig) else "depth"
        if action in ("train", "evaluate", "inference") and folders is not None and not folders.root_dir:
            issues.append(SpecIssue(f"dataset.{name}.root_dir", "not set", "the folder holding images/<split>"))
    if issues:
        raise SpecError(issues)
    return cfg
