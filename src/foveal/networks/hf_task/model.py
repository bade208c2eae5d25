"""The whole Hugging Face model of a task (backbone, neck and head), its loss and its graph.

* Training uses the model's own loss from its labels where the ``transformers`` head computes
  one (the DETR family's Hungarian-matched loss, SegFormer/UperNet's cross entropy). The depth
  heads of ``transformers`` do not (DPT, Depth Anything and ZoeDepth raise "Training is not
  implemented yet"), so depth trains with the scale-invariant log loss (SILog, lambda 0.85)
  that GLPN and AdaBins use, over the pixels with a measurement.
* Image classification, whole: a classifier whose head is not a module on a pooled feature (the
  Perceiver's decoder) trains as it is, its own head resized to the dataset's classes.
* Zero-shot classification (CLIP, SigLIP): :class:`ZeroShotClassifier` scores an image against
  one text prompt per class (``logits_per_image``); fine-tuning minimises the cross entropy of
  those scores, which is the image-to-text half of CLIP's contrastive loss with the class
  prompts as the texts.
* Instance segmentation (Mask2Former, MaskFormer): mask and class queries trained with the model's
  own Hungarian-matched mask and class losses from each image's instance masks.
* Open-vocabulary detection (Grounding DINO): :class:`GroundedDetector` asks for the dataset's
  categories in one caption ("circle . square . triangle ."), trains with the model's own
  loss (its token label maps, Hungarian matching) and scores each query per category by the
  largest logit over the category's tokens (``logits`` (B, queries, categories)).
* The exported graph returns the task's named outputs (:data:`TASK_OUTPUTS`).
* A checkpoint keeps the model's ``config.json`` content, so evaluate, inference and export
  rebuild the model without the original folder.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

ZERO_SHOT = "zero-shot-image-classification"
GROUNDING = "zero-shot-object-detection"
INSTANCES = "instance-segmentation"
CLASSIFIER = "image-classification"
TASKS = ("object-detection", "semantic-segmentation", "depth-estimation", ZERO_SHOT, GROUNDING, INSTANCES, CLASSIFIER)
TASK_OUTPUTS: dict[str, tuple[str, ...]] = {
    "object-detection": ("logits", "pred_boxes"),
    "semantic-segmentation": ("logits",),
    "depth-estimation": ("predicted_depth",),
    ZERO_SHOT: ("logits",),
    GROUNDING: ("logits", "pred_boxes"),
    INSTANCES: ("class_queries_logits", "masks_queries_logits"),
    CLASSIFIER: ("logits",),
}
IGNORE_INDEX = 255


def _labels(classes: Sequence[str] | None) -> dict[str, Any]:
    if not classes:
        return {}
    return {"num_labels": len(classes), "id2label": dict(enumerate(classes)),
            "label2id": {c: i for i, c in enumerate(classes)}}  # fmt: skip


def _quiet_transformers() -> Any:
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    return level


def load_task_model(folder: str, task: str, classes: Sequence[str] | None = None) -> nn.Module:
    """The folder's model for ``task``, its head resized to ``classes`` when they differ from the
    model's own labels (the new rows start from the model's initialisation)."""
    import json
    from pathlib import Path

    from foveal.nn.hf_backbone import load_hf_model

    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    own = [str(v) for _, v in sorted((int(k), v) for k, v in (config.get("id2label") or {}).items())]
    overrides: dict[str, Any] = {}
    if task != "depth-estimation" and classes and list(classes) != own:
        overrides = {**_labels(classes), "ignore_mismatched_sizes": True}
        logger.info("%s: head resized from %d labels to the dataset's %d classes", folder, len(own), len(classes))
    return load_hf_model(folder, task, **overrides).train()


class ZeroShotClassifier(nn.Module):
    """An image-text model and its class prompts as ``pixel_values -> logits`` (B, classes).

    The prompts' token ids are buffers, so a checkpoint holds them and the exported graph is the
    whole classifier (text tower on constant inputs included)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.register_buffer("input_ids", input_ids.long())
        self.register_buffer("attention_mask", attention_mask.long())

    def forward(self, pixel_values: torch.Tensor) -> Any:
        out = self.model(input_ids=self.input_ids, attention_mask=self.attention_mask, pixel_values=pixel_values)

        class _Out:
            logits = out.logits_per_image

        return _Out()


@contextlib.contextmanager
def _constant_text_masks(masks: torch.Tensor, positions: torch.Tensor) -> Iterator[None]:
    """While a graph is traced, Grounding DINO's phrase masks of the (constant) caption are the
    ones computed eagerly: the model derives them with ``isin`` and ``cummax``, which ONNX lacks."""
    from transformers.models.grounding_dino import modeling_grounding_dino as gd

    original = gd.generate_masks_with_special_tokens_and_transfer_map

    def precomputed(input_ids: torch.Tensor, **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
        batch = input_ids.shape[0]
        return masks.expand(batch, -1, -1), positions.expand(batch, -1)

    gd.generate_masks_with_special_tokens_and_transfer_map = precomputed  # type: ignore[assignment]
    try:
        yield
    finally:
        gd.generate_masks_with_special_tokens_and_transfer_map = original


class GroundedDetector(nn.Module):
    """A text-conditioned detector and its caption of the categories as ``pixel_values -> (logits
    (B, queries, categories), pred_boxes)``; the caption's token ids and the category-to-token
    map are buffers."""

    def __init__(self, model: nn.Module, text: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        for key in ("input_ids", "attention_mask", "token_type_ids", "label_map"):
            self.register_buffer(key, text[key].long())
        from transformers.models.grounding_dino import modeling_grounding_dino as gd

        special: Any = getattr(model, "model", model)
        ids: Any = self.input_ids
        with torch.no_grad():  # eager, once: the caption never changes (see _constant_text_masks)
            self._phrase_masks = gd.generate_masks_with_special_tokens_and_transfer_map(
                ids, special_tokens=special.special_tokens
            )

    def _text(self, batch: int) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).expand(batch, -1) for k in ("input_ids", "attention_mask", "token_type_ids")}

    def forward(self, pixel_values: torch.Tensor) -> Any:
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        constant = _constant_text_masks(*self._phrase_masks) if exporting else contextlib.nullcontext()
        with constant:
            out = self.model(pixel_values=pixel_values, **self._text(pixel_values.shape[0]))
        label_map: Any = self.label_map  # (categories, text length)
        tokens = out.logits[..., : label_map.shape[1]]  # (B, Q, text length)
        masked = tokens.unsqueeze(2).masked_fill(label_map[None, None] == 0, float("-inf"))

        class _Out:
            logits = masked.amax(-1)  # (B, Q, categories)
            pred_boxes = out.pred_boxes

        return _Out()

    def loss(self, pixel_values: torch.Tensor, labels: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        loss: torch.Tensor = self.model(pixel_values=pixel_values, labels=labels, **self._text(pixel_values.shape[0])).loss
        return loss


def caption(tokenizer_dir: str, classes: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """The categories as Grounding DINO's caption ("a . b . c ."): token ids, masks and which tokens
    belong to which category (the model's own rule: the text between delimiter tokens)."""
    import transformers
    from transformers.models.grounding_dino import modeling_grounding_dino as gd

    from foveal.errors import UsageError

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"model.tokenizer_dir: no tokenizer in {tokenizer_dir} ({line}); point it at the folder "
                         "holding tokenizer_config.json and vocab.txt") from None  # fmt: skip
    text = " . ".join(name.replace("_", " ") for name in classes) + " ."
    batch = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
    ids = batch["input_ids"]
    maps = gd.build_label_maps(torch.zeros(1, 1, ids.shape[1]), ids)[0]
    if maps.shape[0] != len(classes):
        raise UsageError(f"model.tokenizer_dir: the caption of {len(classes)} categories gives {maps.shape[0]} "
                         f"phrases within max_text_len={max_length} tokens; use shorter category names or "
                         "fewer categories")  # fmt: skip
    return {"input_ids": ids, "attention_mask": batch["attention_mask"],
            "token_type_ids": batch.get("token_type_ids", torch.zeros_like(ids)), "label_map": maps}  # fmt: skip


def load_grounded(folder: str, tokenizer_dir: str | None, classes: Sequence[str]) -> nn.Module:
    from foveal.nn.hf_backbone import load_hf_model

    model = load_hf_model(folder, GROUNDING)
    max_length = int(getattr(model.config, "max_text_len", 256))
    return GroundedDetector(model, caption(tokenizer_dir or folder, classes, max_length)).train()


def prompts(classes: Sequence[str], template: str) -> list[str]:
    return [template.replace("{}", name.replace("_", " ")) for name in classes]


def tokenize(tokenizer_dir: str, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``texts`` with the folder's tokenizer (never downloaded)."""
    import transformers

    from foveal.errors import UsageError

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"model.tokenizer_dir: no tokenizer in {tokenizer_dir} ({line}); point it at the folder "
                         "holding tokenizer_config.json and the vocabulary") from None  # fmt: skip
    padding = "max_length" if "siglip" in type(tokenizer).__name__.lower() else True  # SigLIP trains on full length
    batch = tokenizer(texts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
    mask = batch.get("attention_mask")
    return batch["input_ids"], mask if mask is not None else torch.ones_like(batch["input_ids"])


def load_zero_shot(folder: str, tokenizer_dir: str | None, classes: Sequence[str], template: str) -> nn.Module:
    from foveal.nn.hf_backbone import load_hf_model

    model = load_hf_model(folder, ZERO_SHOT)
    text_config: Any = getattr(model.config, "text_config", model.config)
    max_length = int(getattr(text_config, "max_position_embeddings", 77))
    ids, mask = tokenize(tokenizer_dir or folder, prompts(classes, template), max_length)
    return ZeroShotClassifier(model, ids, mask).train()


def model_from_config(hf_config: dict[str, Any], task: str) -> nn.Module:
    """Rebuild a model from the ``config.json`` content a checkpoint keeps (weights loaded after)."""
    import transformers

    from foveal.nn.hf_backbone import task_auto_class

    data = dict(hf_config)
    model_type = data.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **data)
    level = _quiet_transformers()
    try:
        try:
            model = task_auto_class(task).from_config(config, attn_implementation="eager")
        except (TypeError, ValueError) as exc:
            if "attn_implementation" not in str(exc):
                raise
            model = task_auto_class(task).from_config(config)
    finally:
        transformers.logging.set_verbosity(level)
    return model


def config_dict(model: nn.Module) -> dict[str, Any]:
    """The model's ``config.json`` content (plain JSON types, for a weights-only checkpoint)."""
    import json

    config: Any = model.config
    result: dict[str, Any] = json.loads(config.to_json_string(use_diff=False))
    return result


def silog_loss(predicted: torch.Tensor, target: torch.Tensor, lam: float = 0.85) -> torch.Tensor:
    """Scale-invariant log loss over pixels with target > 0 (``predicted`` resized to the target)."""
    if predicted.shape[-2:] != target.shape[-2:]:
        predicted = F.interpolate(predicted.unsqueeze(1), size=target.shape[-2:], mode="bilinear",
                                  align_corners=False).squeeze(1)  # fmt: skip
    valid = target > 0
    if not valid.any():
        return predicted.sum() * 0.0
    # log(p + eps), not log(clamp(p)): a prediction near 0 (a ReLU head at initialisation) still
    # gets a gradient
    d = torch.log(predicted[valid].float().clamp(min=0) + 1e-3) - torch.log(target[valid].float())
    return torch.sqrt((d**2).mean() - lam * d.mean() ** 2 + 1e-8)


def task_loss(model: nn.Module, task: str, images: torch.Tensor, target: Any) -> torch.Tensor:
    """The training loss of one batch (see the module docstring)."""
    if task == "object-detection":
        labels = [{"class_labels": t["class_labels"], "boxes": t["boxes"]} for t in target]
        loss: torch.Tensor = model(pixel_values=images, labels=labels).loss
        return loss
    if task == ZERO_SHOT:
        return F.cross_entropy(model(images).logits.float(), target)
    if task == CLASSIFIER:
        return model(pixel_values=images, labels=target).loss
    if task == INSTANCES:
        out = model(pixel_values=images, mask_labels=[t["masks"] for t in target],
                    class_labels=[t["class_labels"] for t in target])  # fmt: skip
        return out.loss
    if task == GROUNDING:
        grounded: Any = model
        return grounded.loss(images, [{"class_labels": t["class_labels"], "boxes": t["boxes"]} for t in target])
    if task == "semantic-segmentation":
        out = model(pixel_values=images, labels=target)
        if getattr(out, "loss", None) is not None:
            return out.loss
        logits = F.interpolate(out.logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)
    return silog_loss(model(pixel_values=images).predicted_depth, target)


def task_outputs(model: nn.Module, task: str, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The task's named outputs of ``model`` on ``x``, in :data:`TASK_OUTPUTS` order."""
    out = model(x) if isinstance(model, (ZeroShotClassifier, GroundedDetector)) else model(pixel_values=x)
    return tuple(getattr(out, name) for name in TASK_OUTPUTS[task])


class TaskGraph(nn.Module):
    """``pixel_values -> the task's named outputs`` (a tuple in :data:`TASK_OUTPUTS` order)."""

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.names = TASK_OUTPUTS[task]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return task_outputs(self.model, self.task, x)


def backbone_part(model: nn.Module) -> str | None:
    """The name part of the backbone's parameters (for ``train.optim.lr_backbone``): ``backbone``
    where the model has such a module (the DETR family), else its base model (``segformer``,
    ``dpt``, ``glpn``), whose neck and head sit outside."""
    if isinstance(model, GroundedDetector):
        return "model.backbone."  # the image backbone; the text encoder and fusion train at lr
    if isinstance(model, ZeroShotClassifier):
        return "model."  # both towers: an image-text model is fine-tuned at its backbone rate throughout
    names = [n for n, _ in model.named_parameters()]
    if any(".backbone." in f".{n}" for n in names):
        return "backbone."
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and any(n.startswith(prefix + ".") for n in names) and not all(n.startswith(prefix + ".") for n in names):
        return prefix + "."
    return None
