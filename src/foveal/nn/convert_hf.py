"""Load Hugging Face ``Dinov2Model``, ``Dinov2WithRegistersModel``, ``ViTModel`` and ``ViTMAEModel``
weights into :class:`foveal.nn.VisionTransformer`.

Architectures: ViT (Dosovitskiy et al., arXiv:2010.11929), MAE (He et al., arXiv:2111.06377),
DINOv2 (Oquab et al., arXiv:2304.07193) and DINOv2 with registers (Darcet et al., arXiv:2309.16588).

Both key layouts are understood: the one on disk and on the Hub (``encoder.layer.N.attention.
attention.query``, ``mlp.weights_in``) and the one transformers >= 5 uses in memory
(``layers.N.attention.q_proj``, ``mlp.gate_proj``/``up_proj``). Separate q/k/v (and SwiGLU
gate/up) projections are concatenated into our fused ``attn.qkv`` (``mlp.w12``).

Behaviours of the HF models that the conversion reproduces:

* ``ViTModel``/``ViTMAEModel`` use LayerNorm eps 1e-12 and ``intermediate_size``;
  ``Dinov2Model`` uses eps 1e-6, ``mlp_ratio`` and LayerScale (``lambda1`` -> ``gamma``).
* ``Dinov2WithRegistersModel`` resamples its position table with ``antialias=True``; the others
  do not, so ``interpolate_antialias`` is set only for it.
* ``ViTMAEModel`` carries a fixed sin-cos table (a frozen parameter): it is copied and stays frozen.
  Its forward shuffles and drops patches (``mask_ratio``); our backbone never does.
* ``ViTModel`` has no mask token; ours keeps its zero initialisation.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from foveal.errors import CheckpointError
from foveal.nn.vit import VisionTransformer

logger = logging.getLogger(__name__)

HF_MODEL_TYPES = ("dinov2", "dinov2_with_registers", "vit", "vit_mae")
_CLASS_TO_TYPE = {
    "Dinov2Model": "dinov2",
    "Dinov2WithRegistersModel": "dinov2_with_registers",
    "ViTModel": "vit",
    "ViTMAEModel": "vit_mae",
}
# base_model_prefix of the task models (``Dinov2ForImageClassification`` etc.).
_BASE_PREFIXES = ("dinov2_with_registers.", "dinov2.", "vit.", "model.")
# Heads and decoders that are not part of the backbone.
_DROPPED_PREFIXES = ("pooler.", "classifier.", "decoder.", "head.", "fc_norm.")

_EMBED_KEYS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_BLOCK_KEY = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
_BLOCK_MODULES = {
    "norm1": "norm1",
    "layernorm_before": "norm1",
    "norm2": "norm2",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
    "mlp.down_proj": "mlp.w3",
    "layer_scale1": "ls1",
    "layer_scale2": "ls2",
}
# Pieces concatenated along the output dim: module -> (fused module, position).
_FUSED_PARTS = {
    "attention.attention.query": ("attn.qkv", 0),
    "attention.attention.key": ("attn.qkv", 1),
    "attention.attention.value": ("attn.qkv", 2),
    "attention.q_proj": ("attn.qkv", 0),
    "attention.k_proj": ("attn.qkv", 1),
    "attention.v_proj": ("attn.qkv", 2),
    "mlp.gate_proj": ("mlp.w12", 0),
    "mlp.up_proj": ("mlp.w12", 1),
}
_HF_ACTS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}


def _normalise_type(model_type: str) -> str:
    model_type = _CLASS_TO_TYPE.get(model_type, model_type)
    if model_type not in HF_MODEL_TYPES:
        raise ValueError(
            f"unsupported Hugging Face model type {model_type!r}; expected one of {HF_MODEL_TYPES}"
        )
    return model_type


def _square(value: Any, what: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"non-square {what} {value} is not supported")
        value = value[0]
    return int(value)


def vit_kwargs_from_hf_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``VisionTransformer`` keyword arguments equivalent to an HF ``config.json`` dict."""
    model_type = _normalise_type(config["model_type"])
    is_dinov2 = model_type.startswith("dinov2")
    act = config.get("hidden_act", "gelu")
    if act not in _HF_ACTS:
        raise ValueError(f"unsupported hidden_act {act!r}")
    image_size = config.get("image_size", 224)
    kwargs: dict[str, Any] = {
        "img_size": tuple(image_size) if isinstance(image_size, (list, tuple)) else int(image_size),
        "patch_size": _square(config.get("patch_size", 16), "patch_size"),
        "in_chans": int(config.get("num_channels", 3)),
        "embed_dim": int(config["hidden_size"]),
        "depth": int(config["num_hidden_layers"]),
        "num_heads": int(config["num_attention_heads"]),
        "qkv_bias": bool(config.get("qkv_bias", True)),
        "act_layer": _HF_ACTS[act],
        "norm_eps": float(config.get("layer_norm_eps", 1e-6 if is_dinov2 else 1e-12)),
    }
    if is_dinov2:
        kwargs["mlp_ratio"] = float(config.get("mlp_ratio", 4))
        kwargs["ffn_layer"] = "swiglufused" if config.get("use_swiglu_ffn", False) else "mlp"
        kwargs["init_values"] = float(config.get("layerscale_value", 1.0))
        kwargs["drop_path_rate"] = float(config.get("drop_path_rate", 0.0))
    else:
        kwargs["mlp_hidden_dim"] = int(config.get("intermediate_size", 4 * kwargs["embed_dim"]))
    if model_type == "dinov2_with_registers":
        kwargs["num_register_tokens"] = int(config.get("num_register_tokens", 4))
        kwargs["interpolate_antialias"] = True
    if model_type == "vit_mae":
        kwargs["pos_embed_type"] = "sincos"
    return kwargs


def vit_from_hf_config(config: Mapping[str, Any]) -> VisionTransformer:
    """A randomly initialised ``VisionTransformer`` with the architecture of an HF config dict."""
    return VisionTransformer(**vit_kwargs_from_hf_config(config))


def _strip_base_prefix(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(backbone weights without the task model's prefix, the other keys: heads)."""
    for prefix in _BASE_PREFIXES:
        if any(k.startswith(prefix + "embeddings.") for k in state_dict):
            inside = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            return inside, [k for k in state_dict if not k.startswith(prefix)]
    return dict(state_dict), []


def _convert(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename/fuse HF keys; returns (our state dict, dropped head/decoder keys)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[int, torch.Tensor]] = {}
    backbone, dropped = _strip_base_prefix(state_dict)
    unknown = []
    for key, value in backbone.items():
        if key in _EMBED_KEYS:
            out[_EMBED_KEYS[key]] = value
            continue
        if key.startswith(_DROPPED_PREFIXES):
            dropped.append(key)
            continue
        match = _BLOCK_KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        index, module, leaf = match.groups()
        leaf = "gamma" if leaf == "lambda1" else leaf
        if module in _FUSED_PARTS:
            target, position = _FUSED_PARTS[module]
            fused.setdefault(f"blocks.{index}.{target}.{leaf}", {})[position] = value
        elif module in _BLOCK_MODULES:
            out[f"blocks.{index}.{_BLOCK_MODULES[module]}.{leaf}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"unrecognised Hugging Face keys: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}"
        )
    for key, parts in fused.items():
        expected = 3 if ".attn.qkv." in key else 2
        if sorted(parts) != list(range(expected)):
            raise ValueError(f"{key}: found only parts {sorted(parts)} of {expected}")
        out[key] = torch.cat([parts[i] for i in range(expected)], dim=0)
    if "mask_token" in out:
        out["mask_token"] = out["mask_token"].reshape(1, -1)  # HF ViT stores (1, 1, D)
    return out, dropped


def convert_hf_state_dict(state_dict: Mapping[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """Convert an HF state dict to ``VisionTransformer`` keys.

    Args:
        state_dict: weights of ``Dinov2Model``/``Dinov2WithRegistersModel``/``ViTModel``/
            ``ViTMAEModel`` (or a task model around one: its ``dinov2.``/``vit.`` prefix is
            removed and pooler/classifier/decoder weights are dropped).
        model_type: HF ``model_type`` (``"dinov2"``, ``"dinov2_with_registers"``, ``"vit"``,
            ``"vit_mae"``) or class name (``"Dinov2Model"``, ...).

    Returns:
        A state dict for ``vit_from_hf_config(config)``; ``mask_token`` is absent for ViT.

    Raises:
        ValueError: unknown model type, unrecognised keys, or an incomplete q/k/v set.
    """
    _normalise_type(model_type)
    out, dropped = _convert(state_dict)
    if dropped:
        logger.info("dropped %d non-backbone keys (%s, ...)", len(dropped), dropped[0])
    return out


def read_hf_weights(folder: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """Read ``model.safetensors`` (sharded or not) or ``pytorch_model.bin`` from ``folder``."""
    folder = Path(folder)
    for index_name, loader in (
        ("model.safetensors.index.json", _load_safetensors),
        ("pytorch_model.bin.index.json", _load_bin),
    ):
        index_file = folder / index_name
        if index_file.is_file():
            shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(loader(folder / shard))
            return state, index_file
    for name, loader in (("model.safetensors", _load_safetensors), ("pytorch_model.bin", _load_bin)):
        if (folder / name).is_file():
            return loader(folder / name), folder / name
    raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin in it")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    # weights_only refuses pickled code: a downloaded .bin must not execute anything.
    return torch.load(path, map_location="cpu", weights_only=True)


def load_hf_folder(path: str | Path) -> tuple[VisionTransformer, dict[str, Any]]:
    """Build and load a backbone from a local HF folder (``config.json`` + weights).

    Args:
        path: folder written by ``save_pretrained`` (nothing is downloaded).

    Returns:
        (model in eval mode, info) where info has ``model_type``, ``vit_kwargs``,
        ``weights_file``, ``dropped_keys`` and ``missing_keys`` (keys kept at initialisation,
        only ``mask_token`` for ViT/MAE).

    Raises:
        RuntimeError: the converted weights do not cover the architecture.
    """
    folder = Path(path)
    config = json.loads((folder / "config.json").read_text())
    model_type = _normalise_type(config["model_type"])
    kwargs = vit_kwargs_from_hf_config(config)
    model = VisionTransformer(**kwargs)
    state, weights_file = read_hf_weights(folder)
    converted, dropped = _convert(state)
    result = model.load_state_dict(converted, strict=False)
    missing = [k for k in result.missing_keys if k != "mask_token"]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{folder}: weights do not match the {model_type} architecture; "
            f"missing {missing[:10]}, unexpected {result.unexpected_keys[:10]}"
        )
    logger.info("loaded %s backbone from %s (%d tensors)", model_type, weights_file, len(converted))
    info = {
        "model_type": model_type,
        "vit_kwargs": kwargs,
        "weights_file": str(weights_file),
        "dropped_keys": dropped,
        "missing_keys": list(result.missing_keys),
    }
    return model.eval(), info
