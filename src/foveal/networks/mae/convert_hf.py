"""Hugging Face ``ViTMAEForPreTraining`` -> :class:`MaskedAutoencoderViT` (encoder and decoder).

The encoder keys go through :func:`foveal.nn.convert_hf_state_dict` (``"vit_mae"``); the decoder
blocks use the same per-block table (they are ``ViTMAELayer`` s too), renamed under
``decoder_blocks.N``. The HF key layouts are understood: the Hub's (``decoder.decoder_layers.N.
attention.attention.query``), transformers 5 in memory (``attention.q_proj``) and what
transformers 5's ``save_pretrained`` writes (``decoder.decoder_encoder.layer.N...``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from foveal.networks.mae.mae_vit import MaskedAutoencoderViT
from foveal.nn.convert_hf import convert_hf_state_dict, vit_kwargs_from_hf_config
from foveal.nn.vit import VisionTransformer

_DECODER_KEYS = {
    "decoder.decoder_embed.weight": "decoder_embed.weight",
    "decoder.decoder_embed.bias": "decoder_embed.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    "decoder.decoder_norm.weight": "decoder_norm.weight",
    "decoder.decoder_norm.bias": "decoder_norm.bias",
    "decoder.decoder_pred.weight": "decoder_pred.weight",
    "decoder.decoder_pred.bias": "decoder_pred.bias",
}
# Hub files: decoder.decoder_layers.N; transformers 5's save_pretrained: decoder.decoder_encoder.layer.N.
_DECODER_LAYER = re.compile(r"^decoder\.decoder_(?:layers|encoder\.layer)\.(\d+)\.(.+)$")


def mae_vit_kwargs_from_hf_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`MaskedAutoencoderViT` keyword arguments (besides the encoder) of an HF config dict."""
    return {
        "decoder_embed_dim": int(config["decoder_hidden_size"]),
        "decoder_depth": int(config["decoder_num_hidden_layers"]),
        "decoder_num_heads": int(config["decoder_num_attention_heads"]),
        "decoder_mlp_hidden_dim": int(config["decoder_intermediate_size"]),
        "mask_ratio": float(config.get("mask_ratio", 0.75)),
        "norm_pix_loss": bool(config.get("norm_pix_loss", False)),
        "norm_eps": float(config.get("layer_norm_eps", 1e-12)),
        "act_layer": vit_kwargs_from_hf_config(config)["act_layer"],
    }


def convert_hf_mae_pretraining(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ``ViTMAEForPreTraining`` state dict to :class:`MaskedAutoencoderViT` keys.

    Raises:
        ValueError: a key is neither encoder nor decoder, or a q/k/v set is incomplete.
    """
    out = {f"encoder.{k}": v for k, v in convert_hf_state_dict(state_dict, "vit_mae").items()}
    layers: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if not key.startswith("decoder."):
            continue
        if key in _DECODER_KEYS:
            out[_DECODER_KEYS[key]] = value
        elif match := _DECODER_LAYER.match(key):
            # Same layer layout as the encoder: let the encoder table rename it.
            layers[f"layers.{match.group(1)}.{match.group(2)}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unrecognised Hugging Face decoder keys: {unknown[:10]}")
    for key, value in convert_hf_state_dict(layers, "vit_mae").items():
        out[f"decoder_{key}"] = value  # blocks.N... -> decoder_blocks.N...
    return out


def mae_vit_from_hf_pretraining(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> MaskedAutoencoderViT:
    """Build a :class:`MaskedAutoencoderViT` equal to an HF ``ViTMAEForPreTraining``.

    Args:
        state_dict: the HF model's weights (``model.state_dict()`` or a ``save_pretrained`` file).
        config: its config as a dict (``model.config.to_dict()`` or ``config.json``).

    Returns:
        The model in train mode with every tensor loaded (strict).
    """
    encoder = VisionTransformer(**vit_kwargs_from_hf_config(config))
    model = MaskedAutoencoderViT(encoder, init_mae=False, **mae_vit_kwargs_from_hf_config(config))
    converted = convert_hf_mae_pretraining(state_dict)
    converted.setdefault("encoder.mask_token", model.encoder.mask_token.detach().clone())
    model.load_state_dict(converted, strict=True)
    return model
