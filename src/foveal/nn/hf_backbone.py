"""A Hugging Face vision model behind Foveal's backbone interface (house style rule 6).

Used for ported models without a native Foveal architecture (Swin, ResNet, ConvNeXt, BEiT, ...).
The trick that keeps this generic: an ``...ForImageClassification`` model computes the pooled
feature its own head needs (class token, mean token, pooler output, LayerNorm'ed average; it
differs per architecture) right before calling ``classifier``. Replacing that module by an
identity makes the model return exactly that feature, so no per-architecture pooling code is
needed. A base model (``...Model``, feature extraction) gives its ``pooler_output``, else the
first token of a token sequence, else the spatial mean of a feature map.

Export notes (measured with torch 2.13, transformers 5.x): models load with eager attention,
because the dynamo exporter fails on SDPA whose mask is a relative-position bias (BEiT,
Data2VecVision, Swin); the legacy exporter traces eager attention as plain MatMul/Softmax.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

HEAD_NAMES = ("classifier", "head", "fc")
# Parameters that are tokens or tables rather than weights: never decayed.
_NO_DECAY_RE = re.compile(
    r"(cls_token|mask_token|distillation_token|register_tokens|position_embeddings|pos_embed|"
    r"relative_position_bias_table|position_bias|absolute_pos_embed|lambda\d|layer_scale)"
)
_INDEX_RE = re.compile(r"\.(\d+)(?=\.)")


def _vision_tower_class(folder: str | Path) -> Any:
    """``CLIPVisionModel``-style class of an image-text model's folder (CLIP, SigLIP, ...), else None.

    The vision model class loads the tower's weights from the full model's file and leaves the
    text tower out."""
    import json

    import transformers

    config_file = Path(folder) / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config.get("vision_config"), dict):
        return None
    auto_config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    name = type(auto_config).__name__.removesuffix("Config") + "VisionModel"
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(f"{type(auto_config).__name__} has a vision_config but transformers has no {name}")
    return cls


# Task -> the transformers auto class that builds its whole model (head included).
TASK_AUTO_CLASSES = {
    "image-classification": "AutoModelForImageClassification",
    "object-detection": "AutoModelForObjectDetection",
    "semantic-segmentation": "AutoModelForSemanticSegmentation",
    "depth-estimation": "AutoModelForDepthEstimation",
    "zero-shot-image-classification": "AutoModelForZeroShotImageClassification",
    "zero-shot-object-detection": "AutoModelForZeroShotObjectDetection",
    "instance-segmentation": "AutoModelForUniversalSegmentation",
}


def task_auto_class(task: str) -> Any:
    """The ``transformers`` auto class of ``task`` (``AutoModel`` for feature extraction)."""
    import transformers

    return getattr(transformers, TASK_AUTO_CLASSES.get(task, "AutoModel"))


def load_hf_model(folder: str | Path, task: str, **config_overrides: Any) -> nn.Module:
    """The task's auto model (``AutoModelForImageClassification``, ``...ObjectDetection``,
    ``...SemanticSegmentation``, ``...DepthEstimation``) or ``AutoModel`` from a local folder (an
    image-text model's vision tower: its ``...VisionModel``), with eager attention, in eval mode.
    Nothing is downloaded. ``config_overrides`` go to ``from_pretrained`` (e.g. ``num_labels``
    with ``ignore_mismatched_sizes=True`` for a new head)."""
    import transformers

    tower = _vision_tower_class(folder) if task == "feature-extraction" else None
    auto = tower or task_auto_class(task)
    kwargs: dict[str, Any] = {"local_files_only": True, **config_overrides}
    # Loading a task folder into a base model reports the head keys it skips: expected here.
    verbosity = transformers.logging.get_verbosity()
    bars = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # one per load: noise in a command's output
    try:
        try:
            model = auto.from_pretrained(str(folder), attn_implementation="eager", **kwargs)
        except (TypeError, ValueError) as exc:
            if "attn_implementation" not in str(exc):
                raise
            model = auto.from_pretrained(str(folder), **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
    return model.eval()


# (head, second head) pairs whose outputs a model averages into its logits (SwiftFormer, EfficientFormer)
_PAIRED_HEADS = (("head", "dist_head"), ("classifier", "distillation_classifier"))


class _AveragedHeads(nn.Module):
    """Two heads on one feature whose outputs the model averages (a distillation head's pair)."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.first(x) + self.second(x)) / 2


def detach_head(model: nn.Module) -> tuple[str | None, nn.Module | None]:
    """Replace the top-level classification head by an identity; returns (its name, the head).

    The head is the first of ``classifier``, ``head``, ``fc`` that has weights (HGNetV2 and TextNet
    keep their pooling in a parameter-free ``classifier`` list and the linear layer in ``fc``). A
    model averaging two heads (``head`` and ``dist_head``) has both replaced: the identity's
    average is the feature itself, and the returned module averages the two heads again."""
    for first, second in _PAIRED_HEADS:
        a, b = getattr(model, first, None), getattr(model, second, None)
        if isinstance(a, nn.Linear) and isinstance(b, nn.Linear):
            setattr(model, first, nn.Identity())
            setattr(model, second, nn.Identity())
            return first, _AveragedHeads(a, b)
    for name in HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity) and any(True for _ in head.parameters()):
            setattr(model, name, nn.Identity())
            return name, head
    return None, None


def class_scores(output: Any) -> torch.Tensor:
    """A classifier's output scores: ``logits``, or ``last_hidden_state`` for a model returning its
    head's output there (PP-LCNet)."""
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output.last_hidden_state


def _pool(output: Any) -> torch.Tensor:
    """(B, D) from a base model's output: pooler_output, first token, or spatial mean."""
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        pooled = hidden[:, 0] if hidden.ndim == 3 else hidden.flatten(2).mean(-1)
    return pooled.flatten(1)


class HFBackbone(nn.Module):
    """Wrap an HF vision model: ``forward_features(x)`` -> ``x_norm_clstoken`` (B, D).

    Args:
        model: an HF model loaded with :func:`load_hf_model`.
        task: ``image-classification`` (the model's head is detached, see the module docstring)
            or ``feature-extraction``.
        image_size: the size the model was configured for; other input sizes are passed with
            ``interpolate_pos_encoding=True`` where the model's forward takes it.
    """

    def __init__(self, model: nn.Module, task: str, image_size: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.head_name, _ = detach_head(model) if task == "image-classification" else (None, None)
        self.image_size = image_size
        self._interpolates = "interpolate_pos_encoding" in _forward_arguments(model)
        size = image_size or 224
        channels = int(getattr(model.config, "num_channels", 3))
        training = model.training
        model.eval()  # the probe must not touch BatchNorm statistics (and a batch of 1 may not train)
        with torch.no_grad():
            probe = self._pooled(torch.zeros(1, channels, size, size))
        model.train(training)
        self.embed_dim = self.num_features = int(probe.shape[-1])
        self._layer_ids = _layer_ids([n for n, _ in self.named_parameters()])
        self.n_blocks = max(self._layer_ids.values(), default=0)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if self._interpolates and self.image_size and tuple(x.shape[-2:]) != (self.image_size,) * 2:
            kwargs["interpolate_pos_encoding"] = True
        out = self.model(pixel_values=x, **kwargs)
        if self.head_name is not None:
            return class_scores(out).flatten(1)  # the detached head's input: the model's own pooled feature
        return _pool(out)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, H, W) -> ``x_norm_clstoken`` (B, D), the feature the model's head sees, and
        ``x_norm_patchtokens`` (B, 1, D), the same feature, so that either global_pool picks it."""
        pooled = self._pooled(x)
        return {"x_norm_clstoken": pooled, "x_norm_patchtokens": pooled.unsqueeze(1)}

    def forward_head(self, features: dict, pre_logits: bool = True) -> torch.Tensor:
        return features["x_norm_clstoken"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["x_norm_clstoken"]

    def layer_id_for_param(self, name: str) -> int:
        """0 for the stem, k for the k-th block (by the first two indices in the name, in order of
        appearance), n_blocks + 1 for what follows the last block."""
        return self._layer_ids.get(name, self.n_blocks + 1)

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if _NO_DECAY_RE.search(n)}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        model: Any = self.model  # a transformers PreTrainedModel
        if enable and getattr(model, "supports_gradient_checkpointing", False):
            model.gradient_checkpointing_enable()


def _forward_arguments(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _layer_ids(names: list[str]) -> dict[str, int]:
    """Number the blocks of a generic model for layer-wise LR decay.

    A block is identified by the first two numeric indices in a parameter name
    (``encoder.stages.1.layers.0.conv`` -> (1, 0)); blocks are numbered 1..n in order of first
    appearance. Names without an index are the stem before the first block and the top after it.
    """
    keys: dict[tuple[int, ...], int] = {}
    ids: dict[str, int] = {}
    for name in names:
        indices = tuple(int(i) for i in _INDEX_RE.findall(name)[:2])
        if indices:
            keys.setdefault(indices, len(keys) + 1)
            ids[name] = keys[indices]
        else:
            ids[name] = 0 if not keys else -1  # -1: after the blocks, fixed below
    top = len(keys) + 1
    return {n: (top if i == -1 else i) for n, i in ids.items()}
