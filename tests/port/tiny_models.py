"""Tiny random Hugging Face image classifiers, built locally (no hub) for the port tests.

Each entry is a ``transformers`` config class name and the keyword arguments that make it small
(a few thousand to a few hundred thousand parameters, 32-64 px inputs). Weights are re-drawn at
a realistic scale (:func:`rerandomise`): several architectures initialise so that logits are ~0,
which would hide any export or conversion error behind a tiny absolute difference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

LABELS = {"num_labels": 3, "id2label": {0: "a", 1: "b", 2: "c"}, "label2id": {"a": 0, "b": 1, "c": 2}}
_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}

# name -> (config class, model class, kwargs)
TINY_CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "vit": ("ViTConfig", "ViTForImageClassification", {**_VIT, "image_size": 32, "patch_size": 8}),
    "deit": ("DeiTConfig", "DeiTForImageClassification", {**_VIT, "image_size": 32, "patch_size": 8}),
    "beit": (
        "BeitConfig",
        "BeitForImageClassification",
        {**_VIT, "image_size": 32, "patch_size": 8, "use_relative_position_bias": True},
    ),
    "data2vec_vision": (
        "Data2VecVisionConfig",
        "Data2VecVisionForImageClassification",
        {**_VIT, "image_size": 32, "patch_size": 8, "use_relative_position_bias": True},
    ),
    "dinov2": (
        "Dinov2Config",
        "Dinov2ForImageClassification",
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_ratio": 2,
            "image_size": 32,
            "patch_size": 8,
        },
    ),
    "swin": (
        "SwinConfig",
        "SwinForImageClassification",
        {
            "image_size": 32,
            "patch_size": 2,
            "embed_dim": 16,
            "depths": [1, 1],
            "num_heads": [2, 2],
            "window_size": 4,
        },
    ),
    "swinv2": (
        "Swinv2Config",
        "Swinv2ForImageClassification",
        {
            "image_size": 32,
            "patch_size": 2,
            "embed_dim": 16,
            "depths": [1, 1],
            "num_heads": [2, 2],
            "window_size": 4,
        },
    ),
    "convnext": (
        "ConvNextConfig",
        "ConvNextForImageClassification",
        {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2, "image_size": 32},
    ),
    "convnextv2": (
        "ConvNextV2Config",
        "ConvNextV2ForImageClassification",
        {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2, "image_size": 32},
    ),
    "resnet": (
        "ResNetConfig",
        "ResNetForImageClassification",
        {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"},
    ),
    "regnet": (
        "RegNetConfig",
        "RegNetForImageClassification",
        {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "groups_width": 8},
    ),
    "mobilevit": (
        "MobileViTConfig",
        "MobileViTForImageClassification",
        {
            "image_size": 32,
            "patch_size": 2,
            "hidden_sizes": [16, 24, 32],
            "neck_hidden_sizes": [8, 8, 16, 16, 24, 24, 32],
            "num_attention_heads": 2,
        },
    ),
    "mobilenet_v2": (
        "MobileNetV2Config",
        "MobileNetV2ForImageClassification",
        {"image_size": 32, "depth_multiplier": 0.25},
    ),
    "efficientnet": (
        "EfficientNetConfig",
        "EfficientNetForImageClassification",
        {"image_size": 32, "width_coefficient": 0.1, "depth_coefficient": 0.1, "hidden_dim": 128},
    ),
    "poolformer": (
        "PoolFormerConfig",
        "PoolFormerForImageClassification",
        {"image_size": 32, "hidden_sizes": [8, 16, 16, 32], "depths": [1, 1, 1, 1]},
    ),
    "pvt": (
        "PvtConfig",
        "PvtForImageClassification",
        {
            "image_size": 32,
            "hidden_sizes": [8, 16, 16, 32],
            "depths": [1, 1, 1, 1],
            "num_attention_heads": [1, 1, 1, 1],
        },
    ),
    "levit": (
        "LevitConfig",
        "LevitForImageClassification",
        {
            "image_size": 32,
            "hidden_sizes": [16, 32, 48],
            "num_attention_heads": [1, 2, 3],
            "depths": [1, 1, 1],
            "key_dim": [8, 8, 8],
        },
    ),
    "cvt": (
        "CvtConfig",
        "CvtForImageClassification",
        {"embed_dim": [8, 16, 32], "num_heads": [1, 1, 2], "depth": [1, 2, 3]},
    ),
    "hiera": (
        "HieraConfig",
        "HieraForImageClassification",
        {
            "image_size": [32, 32],
            "patch_size": [3, 3],
            "patch_stride": [2, 2],
            "patch_padding": [1, 1],
            "embed_dim": 8,
            "num_heads": [1, 1, 1, 1],
            "depths": [1, 1, 1, 1],
            "masked_unit_size": [8, 8],
            "query_stride": [2, 2],
        },
    ),
    "segformer": (
        "SegformerConfig",
        "SegformerForImageClassification",
        {
            "image_size": 32,
            "hidden_sizes": [8, 16, 16, 32],
            "depths": [1, 1, 1, 1],
            "num_attention_heads": [1, 1, 1, 1],
            "decoder_hidden_size": 32,
        },
    ),
}
FAST = ("vit", "resnet", "dinov2")


@torch.no_grad()
def rerandomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Redraw every floating parameter: weights ~ N(0, 0.05), 1-D tensors (biases, norms) around
    their current value with N(0, 0.05) noise; BatchNorm running stats set to non-trivial values."""
    gen = torch.Generator().manual_seed(seed)
    for _name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen) * 0.05
        if p.ndim <= 1:
            p.add_(noise)
        else:
            p.copy_(noise)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
            module.running_var.copy_(1.0 + torch.rand(module.running_var.shape, generator=gen) * 0.5)


def save_tiny_model(name: str, folder: Path, seed: int = 0, base: bool = False) -> Path:
    """Build TINY_CONFIGS[name] (``base``: its backbone ``...Model``, a feature extractor) with
    realistic random weights and ``save_pretrained`` it."""
    import transformers

    config_cls, model_cls, kwargs = TINY_CONFIGS[name]
    if base:
        model_cls = model_cls.replace("ForImageClassification", "Model")
    config = getattr(transformers, config_cls)(**kwargs, **LABELS)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    rerandomise(model, seed)
    model.save_pretrained(folder)
    # What a hub folder has next to the weights: the input size and normalisation.
    preprocessor = {
        "image_processor_type": "ViTImageProcessor",
        "size": {"height": 32, "width": 32},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


def write_config(folder: Path, config: dict, *extra_files: str) -> Path:
    """A model folder holding only a config.json (and empty ``extra_files``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    for name in extra_files:
        (folder / name).write_text("")
    return folder
