"""Phase 1 of a port: read a Hugging Face model folder and decide what it is.

Reads ``config.json`` (architectures, model_type, image_size, patch/hidden sizes, labels,
channels), ``preprocessor_config.json`` (input size, mean/std) and the weights' schema (key
groups, shapes, dtypes: safetensors headers only, no tensor is read). Decides the task from the
architecture class, the pipeline tag of the model card and ``transformers``' task tables:
image classification, feature extraction, object detection, semantic segmentation, depth
estimation and zero-shot classification (an image-text model with its tokenizer) are ported; zero-shot detection (OWL-ViT, Grounding DINO) and instance/panoptic
("universal") segmentation are recognised and refused by name; text and audio models are
refused with one line.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from foveal.errors import PortSourceError

logger = logging.getLogger(__name__)

SUPPORTED_TASKS = (
    "image-classification",
    "feature-extraction",
    "object-detection",
    "semantic-segmentation",
    "depth-estimation",
    "zero-shot-image-classification",
    "zero-shot-object-detection",
    "instance-segmentation",
)
# Whole-model tasks: the port trains the model's own head (foveal.networks.hf_task).
WHOLE_MODEL_TASKS = (
    "object-detection",
    "semantic-segmentation",
    "depth-estimation",
    "zero-shot-image-classification",
    "zero-shot-object-detection",
    "instance-segmentation",
)
UNSUPPORTED_TASKS = ("zero-shot", "universal-segmentation")
# Architecture class suffix -> task (most specific first).
_SUFFIX_TASKS = (
    ("ForImageClassificationWithTeacher", "image-classification"),
    ("ForImageClassification", "image-classification"),
    ("ForObjectDetection", "object-detection"),
    ("ForSemanticSegmentation", "semantic-segmentation"),
    ("ForUniversalSegmentation", "universal-segmentation"),
    ("ForInstanceSegmentation", "universal-segmentation"),
    ("ForDepthEstimation", "depth-estimation"),
    ("ForZeroShotImageClassification", "zero-shot"),
    ("ForMaskedImageModeling", "feature-extraction"),
    ("ForPreTraining", "feature-extraction"),
    ("Backbone", "feature-extraction"),
    ("Model", "feature-extraction"),
)
_TEXT_SUFFIXES = (
    "ForMaskedLM",
    "ForCausalLM",
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMultipleChoice",
    "ForNextSentencePrediction",
    "ForConditionalGeneration",
    "LMHeadModel",
)
_AUDIO_SUFFIXES = ("ForAudioClassification", "ForCTC", "ForSpeechSeq2Seq", "ForAudioFrameClassification")
_PIPELINE_TASKS = {
    "image-classification": "image-classification",
    "image-feature-extraction": "feature-extraction",
    "object-detection": "object-detection",
    "image-segmentation": "semantic-segmentation",
    "depth-estimation": "depth-estimation",
    "zero-shot-image-classification": "zero-shot",
}
_VISION_TASK_TABLES = (
    "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES",
    "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES",
    "MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES",
    "MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES",
    "MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES",
)
# Universal-segmentation models trained from instance masks and class labels alone (OneFormer also
# needs a task text per image; DETR's panoptic head another interface).
_INSTANCE_TYPES = ("mask2former", "maskformer", "eomt", "eomt_dinov3")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "merges.txt")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SourceInfo:
    """What phase 1 learned about a model folder (stored in ``port_report.json``)."""

    folder: str
    model_type: str
    architecture: str
    task: str
    pipeline_tag: str | None
    image_size: int
    num_channels: int
    num_labels: int
    id2label: dict[str, str]
    mean: list[float]
    std: list[float]
    sizes: dict[str, Any]
    weights: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PortSourceError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def pipeline_tag(folder: Path) -> str | None:
    """The ``pipeline_tag`` of the model card's front matter (README.md), if any."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    match = re.search(r"^pipeline_tag:\s*([\w-]+)\s*$", readme.read_text(errors="replace"), re.M)
    return match.group(1) if match else None


def _mapping(name: str) -> dict[str, Any]:
    from transformers.models.auto import modeling_auto

    return dict(getattr(modeling_auto, name, {}))


def vision_tower_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """The nested ``vision_config`` of an image-text model (CLIP, SigLIP, ...), else None."""
    nested = config.get("vision_config")
    return nested if isinstance(nested, dict) else None


def is_vision(config: dict[str, Any], folder: Path) -> tuple[bool, str]:
    """(is it a vision model?, the reason when not)."""
    model_type = config.get("model_type", "")
    arch = (config.get("architectures") or [""])[0]
    if model_type in _mapping("MODEL_FOR_IMAGE_MAPPING_NAMES") or "image_size" in config:
        return True, ""
    if any(model_type in _mapping(table) for table in _VISION_TASK_TABLES):
        return True, ""  # a detection, segmentation or depth model (no image_size of its own)
    if vision_tower_config(config) is not None:
        return True, ""  # an image-text model: its vision tower is ported
    if arch.endswith(_AUDIO_SUFFIXES) or model_type in _mapping(
        "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES"
    ):
        return False, "an audio model"
    has_tokenizer = any((folder / name).is_file() for name in _TOKENIZER_FILES)
    if arch.endswith(_TEXT_SUFFIXES) or "vocab_size" in config or has_tokenizer:
        return False, "a text model (vocab_size/tokenizer, no image_size/num_channels)"
    if "num_channels" in config:
        return True, ""
    return False, "not recognisably a vision model (no image_size or num_channels)"


def decide_task(config: dict[str, Any], tag: str | None) -> str:
    """The task from the architecture class, else the pipeline tag, else transformers' tables."""
    arch = (config.get("architectures") or [""])[0]
    model_type = config.get("model_type", "")
    if vision_tower_config(config) is not None:
        # CLIP, SigLIP, ...: the vision tower's pooled feature, classified like any backbone's
        # (zero-shot classification with text prompts is not ported yet)
        return "feature-extraction"
    if model_type in _mapping("MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES"):
        return "zero-shot"
    if model_type in _mapping("MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES"):
        return "zero-shot-object-detection"
    for suffix, task in _SUFFIX_TASKS:
        if arch.endswith(suffix):
            return task
    if tag in _PIPELINE_TASKS:
        return _PIPELINE_TASKS[tag]
    if model_type in _mapping("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"):
        return "image-classification"
    return "feature-extraction"


def _side(value: Any) -> int | None:
    if isinstance(value, (list, tuple)) and value:
        return int(value[0])
    if isinstance(value, dict):
        for key in ("height", "shortest_edge", "width"):
            if key in value:
                return int(value[key])
        return None
    return int(value) if isinstance(value, (int, float)) else None


def input_geometry(
    config: dict[str, Any], preprocessor: dict[str, Any]
) -> tuple[int, list[float], list[float]]:
    """(input side, mean, std): config image_size, else the preprocessor's crop/size, else 224."""
    size = _side(config.get("image_size"))
    if size is None:
        size = _side(preprocessor.get("crop_size")) or _side(preprocessor.get("size")) or 224
    mean = list(preprocessor.get("image_mean") or IMAGENET_MEAN)
    std = list(preprocessor.get("image_std") or IMAGENET_STD)
    # Grey-scale processors give one value; the RGB pipeline repeats it per channel.
    mean, std = (mean * 3 if len(mean) == 1 else mean), (std * 3 if len(std) == 1 else std)
    return size, [float(v) for v in mean], [float(v) for v in std]


def weights_schema(folder: Path) -> dict[str, Any]:
    """Key groups, tensor count, parameter count and dtypes of the folder's weights (headers only
    for safetensors)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        if not list(folder.glob("pytorch_model*.bin")):
            raise PortSourceError(
                f"{folder}: no model.safetensors or pytorch_model.bin; expected a folder written by "
                "save_pretrained"
            )
        from foveal.nn.convert_hf import read_hf_weights

        state, _ = read_hf_weights(folder)
        entries = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}
    else:
        from safetensors import safe_open

        entries = {}
        for path in files:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    sl = handle.get_slice(key)
                    entries[key] = (list(sl.get_shape()), str(sl.get_dtype()))
    groups: dict[str, dict[str, int]] = {}
    for key, (shape, _) in entries.items():
        group = re.split(r"\.\d+\.", key)[0] if re.search(r"\.\d+\.", key) else key.rsplit(".", 1)[0]
        count = 1
        for dim in shape:
            count *= dim
        slot = groups.setdefault(group, {"tensors": 0, "params": 0})
        slot["tensors"] += 1
        slot["params"] += count
    return {
        "files": [p.name for p in files] or ["pytorch_model.bin"],
        "num_tensors": len(entries),
        "num_params": sum(g["params"] for g in groups.values()),
        "dtypes": dict(Counter(dtype for _, dtype in entries.values())),
        "groups": groups,
    }


def inspect_folder(folder: Path) -> SourceInfo:
    """Phase 1 (without the sanity export): read and classify the folder.

    Raises:
        PortSourceError: no config.json, not a vision model, or a task not supported yet.
    """
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise PortSourceError(
            f"{folder}: no config.json; expected a Hugging Face model folder (save_pretrained) or a hub id"
        )
    config = read_json(config_file)
    model_type = str(config.get("model_type") or "?")
    arch = (config.get("architectures") or [model_type])[0]
    vision, reason = is_vision(config, folder)
    if not vision:
        raise PortSourceError(
            f"{folder}: {arch} ({model_type}) is {reason}; foveal port hf takes vision models "
            f"({', '.join(SUPPORTED_TASKS)})"
        )
    tag = pipeline_tag(folder)
    task = decide_task(config, tag)
    if (task == "feature-extraction" and vision_tower_config(config) is not None
            and model_type in _mapping("MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES")
            and any((folder / name).is_file() for name in _TOKENIZER_FILES)):  # fmt: skip
        # CLIP / SigLIP with its tokenizer: zero-shot classification with class-name prompts
        # (without one, its vision tower is ported as a backbone)
        task = "zero-shot-image-classification"
    if task == "universal-segmentation" and model_type in _INSTANCE_TYPES:
        task = "instance-segmentation"  # mask and class queries trained from instance masks
    if task == "zero-shot-object-detection" and not any((folder / n).is_file() for n in _TOKENIZER_FILES):
        raise PortSourceError(
            f"{folder}: {arch} is a zero-shot-object-detection model and needs its text tokenizer "
            "(tokenizer_config.json, vocab.txt ...) in the folder; save it there with tokenizer.save_pretrained"
        )
    if task not in SUPPORTED_TASKS:
        raise PortSourceError(
            f"{folder}: {arch} is a {task} model; recognised but not supported yet (supported: "
            f"{', '.join(SUPPORTED_TASKS)}); port its backbone (e.g. the matching ...Model) instead"
        )
    preprocessor = read_json(folder / "preprocessor_config.json")
    tower = vision_tower_config(config)
    if tower is not None and task == "feature-extraction":
        arch = f"{arch} (vision tower)"
    image_config = tower or config
    size, mean, std = input_geometry(image_config, preprocessor)
    sizes: dict[str, Any] = {
        k: image_config[k]
        for k in ("patch_size", "hidden_size", "hidden_sizes", "embed_dim", "num_hidden_layers", "depths")
        if k in image_config
    }
    return SourceInfo(
        folder=str(folder),
        model_type=model_type,
        architecture=arch,
        task=task,
        pipeline_tag=tag,
        image_size=size,
        num_channels=int(image_config.get("num_channels", 3)),
        num_labels=len(config.get("id2label") or {}),
        id2label={str(k): str(v) for k, v in (config.get("id2label") or {}).items()},
        mean=mean,
        std=std,
        sizes=sizes,
        weights=weights_schema(folder),
    )
