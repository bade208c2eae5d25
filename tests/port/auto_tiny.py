"""Tiny random models for every architecture of a transformers auto-mapping (no hub, no timm).

For a coverage test that tries to port each architecture the installed ``transformers`` knows for
a task: :func:`architectures` lists ``(model_type, class name)`` for the whole auto-mapping,
:func:`build_tiny` builds a small randomly initialised model of that class on CPU (or raises
:class:`NotBuildable`), :func:`save_tiny` re-draws its weights at a realistic scale and saves it.
The input a tiny model takes is a ``(B, 3, S, S)`` batch, ``S = input_size(config)`` (the config's
``image_size``, also readable from the saved ``config.json``). ``python auto_tiny.py [model_type
...]`` builds and runs every architecture once and prints one line each.

How a config is made tiny
-------------------------
Start from the config class's defaults (``CONFIG_MAPPING[model_type]()``), take ``to_dict()``,
shrink it with generic rules, recursively into nested sub-configs (``backbone_config``,
``vision_config``, ``text_config``, ...), and build the config class from the shrunk dict:

* Widths (hidden sizes, channel lists, ffn/intermediate dims, decoder/neck/fusion sizes, ...,
  ``_WIDTH_KEYS``) go through one function of the value alone, :func:`_width`: about 1/16,
  rounded up to a multiple of 8, at least 8 (768 -> 48, 2048 -> 128, 3072 -> 192); values of at
  most 8 (kernel sizes, strides, the 3 input channels inside channel lists) stay. The same value
  always maps to the same value, so the equalities between configs survive (a detector's
  ``encoder_in_channels`` still match its backbone's stage widths, a DPT neck its ViT), and
  every width stays divisible by the (at most 2) attention heads.
* Attention heads (``_HEAD_KEYS``) at most 2, per-stage head lists element-wise.
* Layers (``_LAYER_KEYS``): ``num_hidden_layers`` at most 2, but a ViT backbone that hands k
  feature maps to a head keeps k layers; encoder layers 1, decoder layers at most 2; per-stage
  ``depths``-like lists 1 per stage, their length (the number of stages) kept. Layer-indexed
  values follow: ``out_indices`` / ``backbone_out_indices`` become the last layers,
  ``out_features`` is dropped (recomputed), per-layer lists are cut, windowed-block indices
  beyond the stack dropped.
* Attributes that ``to_dict()`` writes but ``__post_init__`` computes (``stage_names``, Swin's
  ``hidden_size``, ...; ``_DERIVED``) are dropped unless they are init fields, so that they are
  recomputed from the shrunk values instead of overriding them.
* ``image_size`` 64 (same int/list form as the default); when a ViT patch size does not divide
  64 (DINOv2's 14) the size becomes 4 patches a side (56). The top-level config always gets an
  ``image_size`` (copied from the vision sub-config where the class has none).
* Detectors: ``num_queries`` 10, no denoising queries; a ``timm_backbone`` sub-config (the
  DETR-family default; transformers 5 has no ``use_timm_backbone`` flag once a backbone config
  is given) becomes a transformers ResNet-50 config with the same ``out_indices``, shrunk like
  the rest; no pretrained weights are ever loaded.
* Multipliers (MobileNet ``depth_multiplier``, MobileViTV2 ``width_multiplier``) 0.25, GroupNorm
  ``num_groups`` 2, PP-LCNet ``scale`` 1 (its block widths are shrunk instead).
* Vocabularies (text towers of CLIP-like models) 128 tokens, special token ids inside.
* Labels: 3 (``a``, ``b``, ``c``) for classification, detection and segmentation; depth models
  have none.

Where these rules do not fit, ``_OVERRIDES`` holds per-model_type values applied after the
generic shrinking (a nested dict merges into that sub-config), each with the reason, and
``_NOT_BUILDABLE`` names architectures that cannot be built and run on an image batch on CPU
without a hub download or an optional package. Any other failure to build the model from its
tiny config is raised as :class:`NotBuildable` too, with the error in the message.

Where an auto-mapping entry lists several classes (DeiT and LeViT "with teacher", the three
Perceiver classifiers), the first one is used.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

MAPPINGS = {
    "image-classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "object-detection": "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES",
    "semantic-segmentation": "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES",
    "depth-estimation": "MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES",
}
IMAGE_SIZE = 64
LABELS = {"num_labels": 3, "id2label": {0: "a", 1: "b", 2: "c"}, "label2id": {"a": 0, "b": 1, "c": 2}}


class NotBuildable(Exception):
    """This architecture cannot be built as a tiny random model on CPU (the message says why)."""


# --------------------------------------------------------------------------- generic shrinking

# fmt: off
_WIDTH_KEYS = frozenset({
    # transformer widths
    "hidden_size", "d_model", "n_embd", "embed_dim", "embed_dims", "d_latents", "head_dim",
    "intermediate_size", "n_inner", "encoder_ffn_dim", "decoder_ffn_dim", "hidden_dim",
    "projection_dim", "projection_size", "qk_channels", "v_channels", "key_dim",
    "encoder_hidden_dim", "decoder_hidden_size", "reassemble_hidden_size", "coordinate_size",
    "shape_size", "patch_transformer_hidden_size", "patch_transformer_intermediate_size",
    # convolutional widths
    "hidden_sizes", "embedding_size", "stem_channels", "stem_out_channels", "groups_width",
    "stage_in_channels", "stage_mid_channels", "stage_out_channels", "base_attn_unit_dims",
    "class_expand", "block_configs",
    # necks and heads
    "encoder_in_channels", "decoder_in_channels", "neck_hidden_sizes", "fusion_hidden_size",
    "head_hidden_size", "auxiliary_channels", "auxiliary_in_channels", "aspp_out_channels",
    "post_process_channels", "number_output_channels", "bottleneck_features",
    "bin_embedding_dim", "scaled_images_feature_dims", "intermediate_feature_dims",
    "neck_out_channels", "layer_list_out_channels", "mask_feature_channels", "x4_feat_dim",
    "global_pointer_head_size", "deform_conv_width", "projector_in_channels",
    "projector_out_channels", "output_num_channels", "_label_trainable_num_channels",
    "upsample_out_channels", "conv_out_channels", "scale_conv_out_channels",
    "scale_final_hidden_sizes",
})
_HEAD_KEYS = frozenset({
    "num_attention_heads", "num_heads", "n_head", "encoder_attention_heads",
    "decoder_attention_heads", "num_self_attention_heads", "num_cross_attention_heads",
    "decoder_self_attention_heads", "decoder_cross_attention_heads", "num_key_value_heads",
    "num_key_value_attention_heads", "num_key_value_heads_per_layer", "decoder_num_heads",
    "patch_transformer_num_attention_heads",
})
_LAYER_KEYS = {  # scalar layer counts -> at most this many
    "num_hidden_layers": 2, "n_layer": 2, "num_self_attends_per_block": 2, "encoder_layers": 1,
    "decoder_layers": 2, "decoder_depth": 1, "num_patch_transformer_layers": 1,
    "c2f_num_blocks": 1, "auxiliary_num_convs": 1, "num_fov_head_layers": 1,
}
_STAGE_DEPTH_KEYS = frozenset(  # per-stage block counts -> 1 each, the number of stages kept
    {"depths", "depth", "n_attn_blocks", "num_block_repeats", "stage_num_blocks"}
)
# layer indices -> the last ones of the shrunk stack; value: last index - number of layers
# (out_indices count stages from 1, 0 being the stem; DPT counts layers from 0)
_LAYER_INDEX_KEYS = {"out_indices": 0, "backbone_out_indices": -1}
_PER_LAYER_KEYS = ("layer_types", "num_key_value_heads_per_layer")
# What to_dict() writes but __post_init__ computes: passed back, it would override the value
# recomputed from the shrunk config. Dropped unless it is an init field of the config class.
_ALWAYS_DERIVED = frozenset(
    {"architectures", "transformers_version", "_name_or_path", "output_attentions", "stage_names"}
)
_DERIVED = _ALWAYS_DERIVED | frozenset({
    "num_layers", "hidden_size", "head_dim", "num_hidden_layers", "num_windows_side",
    "projector_in_channels", "projector_out_channels", "num_feature_levels", "down_ops",
    "stage_out_channels",
})
_VOCAB_TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id")
# fmt: on


def _width(value: Any) -> Any:
    """A width about 1/16 as large, a multiple of 8 (ints above 8 only; lists element-wise)."""
    if isinstance(value, (list, tuple)):
        return [_width(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 8:
        return value
    return max(8, math.ceil(value / 128) * 8)


def _heads(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_heads(v) for v in value]
    return min(value, 2) if isinstance(value, int) and not isinstance(value, bool) else value


def _stage_depths(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_stage_depths(v) for v in value]
    return 1 if isinstance(value, int) and not isinstance(value, bool) and value > 0 else value


def _is_config(value: Any) -> bool:
    return isinstance(value, dict) and "model_type" in value


def _image_size(old: Any, patch: Any) -> Any:
    """64, or 4 patches a side when the patch size does not divide 64; same form as ``old``."""
    size = IMAGE_SIZE
    if isinstance(patch, (list, tuple)) and patch:
        patch = patch[0]
    if isinstance(patch, int) and 1 < patch <= IMAGE_SIZE and IMAGE_SIZE % patch:
        size = 4 * patch
    if isinstance(old, (list, tuple)):
        return [size] * len(old)
    return size


def _shrink(d: dict[str, Any], config_cls: type | None) -> dict[str, Any]:
    """Apply the generic rules to one config dict of ``config_cls`` (and, recursively, to its
    sub-configs)."""
    if config_cls is not None:
        fields = {f.name for f in dataclasses.fields(config_cls)}
        d = {k: v for k, v in d.items() if k not in _DERIVED or k in fields}
    else:
        d = {k: v for k, v in d.items() if k not in _ALWAYS_DERIVED}
    old_layers = _config_layers(d)
    for key, value in list(d.items()):
        if _is_config(value):
            if value["model_type"] == "timm_backbone":  # DETR family default: use a HF ResNet
                value = _resnet_backbone(value.get("out_indices") or [1, 2, 3, 4])
            d[key] = _shrink(value, _sub_config_class(config_cls, key, value["model_type"]))
        elif key in _WIDTH_KEYS:
            d[key] = _width(value)
        elif key in _HEAD_KEYS:
            d[key] = _heads(value)
        elif key in _STAGE_DEPTH_KEYS:
            d[key] = _stage_depths(value)
        elif key in _LAYER_KEYS and isinstance(value, int):
            d[key] = min(value, _LAYER_KEYS[key])

    # Layer-indexed values follow a shrunk ViT-like stack.
    if old_layers is not None:
        wanted = max((len(d[k]) for k in _LAYER_INDEX_KEYS if isinstance(d.get(k), list)), default=0)
        new_layers = max(_LAYER_KEYS["num_hidden_layers"], wanted)
        if new_layers < old_layers:
            d["num_hidden_layers"] = new_layers
            for key, last_offset in _LAYER_INDEX_KEYS.items():
                if isinstance(d.get(key), list) and d[key] and min(d[key]) >= 0:
                    last, k = new_layers + last_offset, len(d[key])
                    d[key] = list(range(last - k + 1, last + 1))
            for key in _PER_LAYER_KEYS:
                if isinstance(d.get(key), list) and len(d[key]) == old_layers:
                    d[key] = d[key][:new_layers]
            for key in [k for k in d if "block_ind" in k and isinstance(d[k], list)]:
                d[key] = [i for i in d[key] if i < new_layers]
    if "out_indices" in d:
        d.pop("out_features", None)

    patch = None if "patch_stride" in d else d.get("patch_size")  # a strided stem: any size
    if "image_size" in d and not isinstance(d["image_size"], dict):
        d["image_size"] = _image_size(d["image_size"], patch)
    if isinstance(d.get("pretrain_image_size"), int):
        d["pretrain_image_size"] = _image_size(d["pretrain_image_size"], patch)
    if isinstance(d.get("num_groups"), int):  # GroupNorm groups must divide the shrunk widths
        d["num_groups"] = min(d["num_groups"], 2)
    if "block_configs" in d and "scale" in d:  # PP-LCNet: the block widths are shrunk instead
        d["scale"] = 1.0
        if "divisor" in d:
            d["divisor"] = 8
    for key in ("depth_multiplier", "width_multiplier"):  # MobileNets, MobileViTV2
        if isinstance(d.get(key), float):
            d[key] = min(d[key], 0.25)
    if isinstance(d.get("num_queries"), int):
        d["num_queries"] = min(d["num_queries"], 10)
    if isinstance(d.get("two_stage_num_proposals"), int):
        d["two_stage_num_proposals"] = min(d["two_stage_num_proposals"], 10)
    if isinstance(d.get("num_denoising"), int):
        d["num_denoising"] = 0
    if isinstance(d.get("num_detection_tokens"), int):
        d["num_detection_tokens"] = min(d["num_detection_tokens"], 10)
    if isinstance(d.get("vocab_size"), int) and d["vocab_size"] > 1024:
        d["vocab_size"] = 128
        for key in _VOCAB_TOKEN_KEYS:
            if isinstance(d.get(key), int) and d[key] >= 128:
                d[key] = 127 - _VOCAB_TOKEN_KEYS.index(key)
    if isinstance(d.get("max_position_embeddings"), int) and d["max_position_embeddings"] > 512:
        d["max_position_embeddings"] = 512
    return d


def _sub_config_class(parent: type | None, key: str, model_type: str) -> type | None:
    """The config class of ``parent``'s sub-config ``key`` (resolved by model_type for AutoConfig)."""
    from transformers import CONFIG_MAPPING, AutoConfig

    cls = (getattr(parent, "sub_configs", None) or {}).get(key)
    if cls is None or cls is AutoConfig:
        cls = CONFIG_MAPPING[model_type] if model_type in CONFIG_MAPPING else None
    return cls if cls is not None and dataclasses.is_dataclass(cls) else None


def _resnet_backbone(out_indices: list[int]) -> dict[str, Any]:
    """A transformers ResNet-50 backbone config (shrunk later) in place of a timm one."""
    from transformers import ResNetConfig

    return ResNetConfig(out_indices=list(out_indices)).to_dict()


def _config_layers(d: dict[str, Any]) -> int | None:
    value = d.get("num_hidden_layers")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _merge(d: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``d`` updated with ``override``; a dict value for a sub-config merges into it."""
    out = dict(d)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and _is_config(out.get(key)) else value
    return out


# ------------------------------------------------------------------- per-model_type exceptions

_DB_SERVER = {  # the kernel layout of PP-OCR's intraclass blocks, as in the hub configs
    "intraclass_block_config": {
        "reduce_channel": [1, 1, 0],
        "return_channel": [1, 1, 0],
        "vertical_long_to_small_conv_longratio": [[7, 1], [1, 1], [3, 0]],
        "vertical_long_to_small_conv_midratio": [[5, 1], [1, 1], [2, 0]],
        "vertical_long_to_small_conv_shortratio": [[3, 1], [1, 1], [1, 0]],
        "horizontal_small_to_long_conv_longratio": [[1, 7], [1, 1], [0, 3]],
        "horizontal_small_to_long_conv_midratio": [[1, 5], [1, 1], [0, 2]],
        "horizontal_small_to_long_conv_shortratio": [[1, 3], [1, 1], [0, 1]],
        "symmetric_conv_long_longratio": [[7, 7], [1, 1], [3, 3]],
        "symmetric_conv_long_midratio": [[5, 5], [1, 1], [2, 2]],
        "symmetric_conv_long_shortratio": [[3, 3], [1, 1], [1, 1]],
    },
    "scale_factor_list": [1, 2, 4, 8],
    "kernel_list": [3, 2, 2],
    "neck_out_channels": 16,
}
# PP-LCNetV4's default blocks are the text-recognition layout (some strides (2, 1)); the
# detectors' FPN needs every stage to halve the resolution, and all four stages.
_LCNET_V4_DET = {
    "out_indices": [1, 2, 3, 4],
    "stem_channels": [3, 16, 16],
    "block_configs": [
        [[3, 16, 16, 1, False]],
        [[3, 16, 16, 2, False], [3, 16, 16, 1, False]],
        [[3, 16, 16, 2, False], [3, 16, 16, 1, False]],
        [[3, 16, 16, 2, False], [5, 16, 16, 1, False]],
    ],
}
_SEG4 = {"num_hidden_layers": 4, "out_indices": [1, 2, 3, 4]}  # BEiT-style heads take 4 maps

_OVERRIDES: dict[str, dict[str, Any]] = {
    # Swin (transformers 5.x) clamps its window to small stage resolutions but keeps the
    # relative-position table of the configured window: every stage must be >= the window.
    "swin": {"window_size": 2},
    "donut-swin": {"window_size": 2},
    # CvT indexes its per-stage drop-path rates by stage: stage i needs >= i + 1 blocks.
    "cvt": {"depth": [1, 2, 3]},
    # EfficientNet's stem width is hard-coded (32 * width_coefficient): scale with coefficients.
    "efficientnet": {"width_coefficient": 0.125, "depth_coefficient": 0.5, "hidden_dim": 160},
    # The learned-position variant has a 256-channel position embedding per input pixel.
    "perceiver": {"image_size": 32},
    # Deformable attention's input projection uses GroupNorm(32, d_model).
    "deformable_detr": {"d_model": 32},
    "beit": _SEG4,
    "data2vec-vision": _SEG4,
    # The defaults have no projector (the hub configs do): two feature levels as in HF's tests.
    "lw_detr": {"projector_scale_factors": [0.5, 2.0]},
    # Post-processing inside forward needs a threshold per class and a reading-order class map.
    "pp_doclayout_v2": {"class_thresholds": [0.5, 0.5, 0.5], "class_order": [0, 1, 2]},
    # PP-OCR text detectors (DB heads): the defaults lack the values the hub configs carry; these
    # follow transformers' own model tests. The necks divide their width by 16.
    "pp_ocrv5_mobile_det": {"neck_out_channels": 16},
    "pp_ocrv5_server_det": _DB_SERVER,
    "pp_ocrv6_medium_det": {**_DB_SERVER, "backbone_config": _LCNET_V4_DET},
    "pp_ocrv6_small_det": {
        "neck_out_channels": 16,
        "layer_list_out_channels": [16, 16, 16, 16],
        "backbone_config": _LCNET_V4_DET,
    },
    # The default head config is empty (the hub configs fill it in).
    "sapiens2": {
        "head_config": {
            "upsample_out_channels": [8, 8],
            "upsample_kernel_sizes": [4, 4],
            "conv_out_channels": [8],
            "conv_kernel_sizes": [1],
        }
    },
    # DepthPro cuts the image into patch_size crops at several scales for ViT encoders whose
    # image_size is patch_size: 64 px input, 16 px crops of 4 px patches, two scales.
    "depth_pro": {
        "image_size": 64,
        "patch_size": 16,
        "scaled_images_ratios": [0.5, 1.0],
        "scaled_images_overlap_ratios": [0.0, 0.2],
        "scaled_images_feature_dims": [16, 16],
        "intermediate_hook_ids": [1, 0],
        "intermediate_feature_dims": [16, 8],
        "image_model_config": {"patch_size": 4, "image_size": 16},
        "patch_model_config": {"patch_size": 4, "image_size": 16},
        "fov_model_config": {"patch_size": 4, "image_size": 16},
    },
}

_NOT_BUILDABLE: dict[str, str] = {
    "timm_wrapper": "wraps a timm model (timm is not used here)",
    "imagegpt": "input is colour-cluster token ids (input_ids), not pixel_values",
    "shieldgemma2": "a Gemma 3 vision-language safety classifier: needs a text prompt (input_ids)",
    "siglip2": "NaFlex input: patchified pixel_values with spatial_shapes and a patch mask, not an image batch",
}

# ------------------------------------------------------------------------------------- API


def architectures(task: str) -> list[tuple[str, str]]:
    """(model_type, model class name) for every entry of the installed transformers' auto-mapping
    ``MAPPINGS[task]``, sorted by model_type (the first class where an entry lists several)."""
    from transformers.models.auto import modeling_auto

    mapping = getattr(modeling_auto, MAPPINGS[task])
    out = []
    for model_type, names in mapping.items():
        out.append((model_type, names[0] if isinstance(names, (list, tuple)) else names))
    return sorted(out)


def unbuildable(task: str) -> list[str]:
    """The model types of ``task``'s mapping listed in ``_NOT_BUILDABLE`` (not counted by coverage)."""
    return [model_type for model_type, _ in architectures(task) if model_type in _NOT_BUILDABLE]


def tiny_config(task: str, model_type: str) -> Any:
    """The shrunk config of ``model_type`` for ``task`` (3 labels unless depth estimation);
    :class:`NotBuildable` for the architectures of ``_NOT_BUILDABLE``."""
    from transformers import CONFIG_MAPPING

    if model_type in _NOT_BUILDABLE:
        raise NotBuildable(_NOT_BUILDABLE[model_type])
    try:
        config_cls = CONFIG_MAPPING[model_type]
    except KeyError as exc:
        raise NotBuildable(f"no config class for model_type {model_type!r}") from exc
    d = _shrink(config_cls().to_dict(), config_cls)
    d.pop("model_type", None)
    d = _merge(d, _OVERRIDES.get(model_type, {}))
    if task != "depth-estimation":
        d.update(LABELS)
    size = _find_image_size(d)
    d.setdefault("image_size", size if size is not None else IMAGE_SIZE)
    return config_cls(**d)


def _find_image_size(d: dict[str, Any]) -> Any:
    if "image_size" in d:
        return d["image_size"]
    for value in d.values():
        if _is_config(value):
            found = _find_image_size(value)
            if found is not None:
                return found
    return None


def input_size(config: Any) -> int:
    """The side S of the square input a tiny model takes (its config's ``image_size``, or 64);
    ``config`` is a config object or a ``config.json`` dict."""
    size = config.get("image_size") if isinstance(config, dict) else getattr(config, "image_size", None)
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) if size else IMAGE_SIZE


def build_tiny(task: str, model_type: str, seed: int = 0) -> torch.nn.Module:
    """A tiny randomly initialised model (eval mode) of the class ``architectures(task)`` lists
    for ``model_type``; :class:`NotBuildable` when it cannot be built from a tiny config on CPU.
    ``KeyError`` when ``model_type`` is not in the task's mapping."""
    import transformers

    names = dict(architectures(task))
    if model_type not in names:
        raise KeyError(f"{model_type!r} is not in {MAPPINGS[task]}")
    try:
        config = tiny_config(task, model_type)
    except NotBuildable:
        raise
    except Exception as exc:  # noqa: BLE001 - a config the generic rules do not fit
        raise NotBuildable(f"tiny config rejected: {type(exc).__name__}: {_first_line(exc)}") from exc
    try:
        model_cls = getattr(transformers, names[model_type])
    except (AttributeError, ImportError) as exc:
        raise NotBuildable(f"{names[model_type]} cannot be imported: {_first_line(exc)}") from exc
    torch.manual_seed(seed)
    try:
        model = model_cls(config)
    except ImportError as exc:  # requires_backends: "... requires the natten library but ..."
        found = re.search(r"requires the (\S+) library", str(exc))
        raise NotBuildable(f"needs the optional package {found[1] if found else _first_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001
        raise NotBuildable(
            f"cannot be built from its tiny config: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    return model.eval()


def _dead(model: torch.nn.Module) -> bool:
    """True when every output of ``model`` on a random batch is 0: a final ReLU that this weight
    draw killed (Prompt Depth Anything's 1-channel head at seed 0). A trained model never ships
    like that, and all-zero outputs would hide any export error, so such a draw is redrawn."""
    try:
        with torch.no_grad():
            size = input_size(model.config)
            out = model(pixel_values=torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)))
    except Exception:  # noqa: BLE001 - a model this probe cannot drive: the port will say why
        return False
    tensors = [v for v in out.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return bool(tensors) and all(float(t.abs().max()) == 0.0 for t in tensors)


def save_tiny(task: str, model_type: str, folder: Path, seed: int = 0) -> Path:
    """:func:`build_tiny`, weights re-drawn at a realistic scale (``tiny_models.rerandomise``; a draw
    whose outputs are all 0 is drawn again, see :func:`_dead`),
    ``save_pretrained`` into ``folder``; returns ``folder``."""
    from tiny_models import rerandomise

    model = build_tiny(task, model_type, seed)
    for draw in range(seed, seed + 5):
        rerandomise(model, draw)
        if not _dead(model):
            break
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


# ------------------------------------------------------------------------------- self-check

_OUTPUTS = {
    "image-classification": ("logits",),
    "object-detection": ("logits", "pred_boxes"),
    "semantic-segmentation": ("logits",),
    "depth-estimation": ("predicted_depth",),
}


def _check(task: str, model_type: str) -> str:
    """One line for the self-check: build, forward a (2, 3, S, S) batch, look at the outputs."""
    try:
        model = build_tiny(task, model_type)
    except NotBuildable as exc:
        return f"not buildable: {exc}"
    size = input_size(model.config)
    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    try:
        with torch.no_grad():
            out = model(pixel_values=torch.randn(2, 3, size, size))
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return f"forward failed: {type(exc).__name__}: {_first_line(exc)}"
    seconds = time.perf_counter() - start
    line = f"ok {params / 1e6:.3f} M params, S={size}, forward {seconds:.2f} s"
    missing = [name for name in _OUTPUTS[task] if not isinstance(getattr(out, name, None), torch.Tensor)]
    if missing:
        shapes = ", ".join(
            f"{k}{tuple(v.shape)}"
            for k, v in out.items()
            if isinstance(v, torch.Tensor) and v.shape[:1] == (2,)
        )
        line += f"; unusual outputs: no {'/'.join(missing)}, has {shapes}"
    return line


if __name__ == "__main__":
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    only = sys.argv[1:]
    for task in MAPPINGS:
        for model_type, _cls in architectures(task):
            if only and model_type not in only:
                continue
            print(f"{task:22} {model_type:24} {_check(task, model_type)}", flush=True)
