"""Build the mae network's models from a ``model`` spec section.

Pretraining: ViT archs -> :class:`MaskedAutoencoderViT` (MAE, He et al., arXiv:2111.06377);
ConvNeXt V2 archs -> FCMAE (Woo et al., arXiv:2301.00808); Hiera archs ->
:class:`MaskedAutoencoderHiera` (Ryali et al., arXiv:2306.00989, on ``transformers``' Hiera).
Fine-tuning: the shared :class:`~foveal.nn.classifier.Classifier` around the same encoder.

Pooling for fine-tuning (``model.global_pool``):

* ViT, ``true``: MAE's fine-tuning head exactly: the mean of the *pre-norm* patch tokens, then a
  fresh LayerNorm (``fc_norm``); the encoder's final norm is removed (MAE deletes it too), so the
  pretrained ``norm`` weights are not used. ``false``: the normalised class token.
* ConvNeXt V2 and Hiera: always global average pooling then the final LayerNorm (the
  backbone's ``x_norm_clstoken``), as in the reference fine-tuning; ``global_pool`` is not consulted.

Hiera's MAE encoder pools queries twice (final grid 14x14), its fine-tuning backbone three times
(7x7), as in TAO; pooling has no parameters, so the encoder's weights load unchanged.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from foveal.engine.features import has_class_token, pooled
from foveal.networks.mae.config import ModelConfig
from foveal.networks.mae.mae_hiera import MaskedAutoencoderHiera
from foveal.networks.mae.mae_vit import MaskedAutoencoderViT
from foveal.nn import create_backbone
from foveal.nn import hiera as _hiera  # noqa: F401  (registers the hiera_*_224 backbones)
from foveal.nn.classifier import Classifier

FCMAE_MODULE = "foveal.networks.mae.fcmae"


def is_convnext(arch: str) -> bool:
    return arch.startswith("convnextv2_")


def is_hiera(arch: str) -> bool:
    return arch.startswith("hiera_")


def _fcmae_builder() -> Any:
    try:
        return importlib.import_module(FCMAE_MODULE).build_fcmae
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(
            f"ConvNeXt V2 pretraining (FCMAE) is not available in this install ({exc}); "
            "use a ViT model.arch such as vit_base_patch16"
        ) from None


def build_pretrain_model(
    model_cfg: ModelConfig, *, img_size: int, mask_ratio: float, norm_pix_loss: bool, **overrides: Any
) -> nn.Module:
    """The pretraining model of ``model.arch``; its forward is ``(imgs, mask_ratio=, noise=) -> (loss, out)``.

    Args:
        model_cfg: the spec's ``model`` section (arch, drop_path_rate, decoder_depth, decoder_embed_dim).
        img_size: training image side (Hiera: 224 only).
        mask_ratio, norm_pix_loss: the spec's ``train.mask_ratio`` / ``train.norm_pix_loss`` (Hiera
            always normalises its targets, as TAO's and HF's Hiera-MAE).
        overrides: backbone keyword overrides (tests build tiny encoders, e.g. ``depth=2``).
    """
    arch = model_cfg.arch
    if is_hiera(arch):
        hiera = create_backbone(
            arch, img_size=img_size, num_query_pool=2, drop_path_rate=model_cfg.drop_path_rate, **overrides
        )
        return MaskedAutoencoderHiera(
            hiera,
            decoder_embed_dim=model_cfg.decoder_embed_dim,
            decoder_depth=model_cfg.decoder_depth,
            mask_ratio=mask_ratio,
        )
    if is_convnext(arch):
        return _fcmae_builder()(
            arch,
            img_size=img_size,
            decoder_depth=model_cfg.decoder_depth,
            decoder_embed_dim=model_cfg.decoder_embed_dim,
            mask_ratio=mask_ratio,
            norm_pix_loss=norm_pix_loss,
            drop_path_rate=model_cfg.drop_path_rate,
            **overrides,
        )
    encoder = create_backbone(
        arch,
        img_size=img_size,
        pos_embed_type="sincos",
        drop_path_rate=model_cfg.drop_path_rate,
        **overrides,
    )
    return MaskedAutoencoderViT(
        encoder,
        decoder_embed_dim=model_cfg.decoder_embed_dim,
        decoder_depth=model_cfg.decoder_depth,
        mask_ratio=mask_ratio,
        norm_pix_loss=norm_pix_loss,
    )


class MAEClassifier(Classifier):
    """:class:`Classifier` with MAE's average pooling: mean of pre-norm patch tokens -> ``fc_norm``.

    The backbone's final norm is replaced by the identity, so ``x_norm_patchtokens`` are the
    pre-norm tokens (MAE ``models_vit.py`` with ``global_pool=True``).
    """

    def __init__(self, backbone: Any, num_classes: int, **kwargs: Any) -> None:
        eps = backbone.norm.eps
        backbone.norm = nn.Identity()
        super().__init__(backbone, num_classes, global_pool="avg", **kwargs)
        self.fc_norm = nn.LayerNorm(backbone.embed_dim, eps=eps)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D)."""
        tokens = self.backbone.forward_features(x)["x_norm_patchtokens"]
        return self.fc_norm(tokens.mean(dim=1))


def build_finetune_model(
    model_cfg: ModelConfig, num_classes: int, img_size: int, **overrides: Any
) -> Classifier:
    """The fine-tuning classifier of ``model.arch`` (no weights loaded; see the module docstring).

    The ViT position table is learned here (initialised from the pretrained sin-cos table when
    weights are loaded), as in MAE fine-tuning.
    """
    arch = model_cfg.arch
    if is_convnext(arch) or is_hiera(arch):
        backbone = create_backbone(
            arch, img_size=img_size, drop_path_rate=model_cfg.drop_path_rate, **overrides
        )
        return Classifier(backbone, num_classes, global_pool="cls")
    backbone = create_backbone(
        arch,
        img_size=img_size,
        pos_embed_type="learned",
        drop_path_rate=model_cfg.drop_path_rate,
        **overrides,
    )
    backbone.mask_token.requires_grad_(False)  # unused by classification
    if model_cfg.global_pool:
        return MAEClassifier(backbone, num_classes)
    return Classifier(backbone, num_classes, global_pool="cls")


def encoder_of(model: nn.Module) -> Any:
    """The encoder (a :class:`~foveal.nn.backbone.Backbone`) of a pretraining model or the
    backbone of a classifier."""
    return model.encoder if hasattr(model, "encoder") else model.backbone


class EncoderFeatures(nn.Module):
    """Export view of an encoder: ``(embedding (B, D), tokens)``.

    ``embedding`` is :func:`foveal.engine.features.pooled`'s ``avg`` (the mean of the normalised
    ViT patch tokens, or ConvNeXt V2's / Hiera's globally pooled then normalised feature), the
    same feature inference writes and kNN scores, so the ONNX file and the embeddings agree. A ViT
    also returns its normalised class token and patch tokens; ConvNeXt V2 and Hiera their final
    feature map (B, D, h, w).
    """

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.encoder: Any = encoder
        self.is_vit = has_class_token(encoder)

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("embedding", "cls_token", "patch_tokens") if self.is_vit else ("embedding", "feature_map")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.encoder.forward_features(x)
        cls, avg = pooled(out, self.is_vit)
        if cls is not None:
            return avg, cls, out["x_norm_patchtokens"]
        return avg, out["x_prenorm"]
