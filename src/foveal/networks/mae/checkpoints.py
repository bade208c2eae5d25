"""Reading the mae network's checkpoints: their stage, trained models, and starting weights.

A mae checkpoint's kind is its ``stage`` (``pretrain`` | ``finetune``), saved at the top level by
the training modules (older files: ``config.train.stage``). Fine-tuning starts from a pretrain
checkpoint or a Hugging Face ViTMAE folder; continued pretraining from a pretrain checkpoint or a
Hugging Face ``ViTMAEForPreTraining`` folder (decoder included). Handing over the wrong kind is a
one-line :class:`CheckpointError` that says which kind to pass instead.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foveal.engine.checkpoint import load_checkpoint
from foveal.errors import CheckpointError
from foveal.networks.mae.config import MAEConfig
from foveal.networks.mae.models import (
    build_finetune_model,
    build_pretrain_model,
    encoder_of,
    is_convnext,
    is_hiera,
)
from foveal.spec import SpecError, SpecIssue

logger = logging.getLogger(__name__)
NETWORK = "mae"
STAGES = ("pretrain", "finetune")
# Tensors a pretraining model may lack in a checkpoint without the load being a mismatch.
_OPTIONAL = ("encoder.mask_token", "encoder.register_tokens")


def stage_of(checkpoint: Mapping[str, Any], path: Any) -> str:
    """``pretrain`` or ``finetune`` for a loaded mae checkpoint."""
    stage = checkpoint.get("stage")
    if stage is None:
        stage = ((checkpoint.get("config") or {}).get("train") or {}).get("stage")
    if stage not in STAGES:
        raise CheckpointError(f"{path} does not say which mae stage it is from (pretrain or finetune)")
    return stage


def _model_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    state = checkpoint.get("state_dict") or {}
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


# ------------------------------------------------------------------------------ trained models


@dataclass
class Trained:
    """A model rebuilt from a mae checkpoint, in eval mode."""

    model: nn.Module
    cfg: MAEConfig
    stage: str
    path: Path
    classes: list[str] = field(default_factory=list)


def load_trained(path: str | Path) -> Trained:
    """Rebuild the pretraining model or the fine-tuned classifier a checkpoint holds."""
    from foveal.networks.mae.config import MAEConfig
    from foveal.spec import build_config

    path = Path(path)
    ckpt = load_checkpoint(path, network=NETWORK)
    stage = stage_of(ckpt, path)
    cfg = build_config(MAEConfig, ckpt["config"])
    size = cfg.dataset.augmentation.input_size
    classes = list(ckpt.get("classes") or [])
    model: nn.Module
    if stage == "finetune":
        model = build_finetune_model(cfg.model, len(classes), size)
    else:
        model = build_pretrain_model(
            cfg.model, img_size=size, mask_ratio=cfg.train.mask_ratio, norm_pix_loss=cfg.train.norm_pix_loss
        )
    model.load_state_dict(_model_state(ckpt))
    return Trained(model.eval(), cfg, stage, path, classes)


# ------------------------------------------------------------------------------ starting weights


def _wrong_kind(path: Any, found: str, wanted: str) -> CheckpointError:
    if wanted == "finetune":
        what = "fine-tuning starts from a mae pretrain checkpoint or a Hugging Face ViTMAE folder"
        instead = "to continue that fine-tuning run, set train.resume_training_checkpoint_path"
    else:
        what = "pretraining continues from a mae pretrain checkpoint or a Hugging Face ViTMAE folder"
        instead = "to fine-tune from it, set train.stage=finetune"
    return CheckpointError(
        f"train.pretrained_model_path: {path} is a mae {found} checkpoint; {what} ({instead})"
    )


def load_finetune_start(model: nn.Module, path: str | Path, arch: str) -> str:
    """Load the encoder of ``path`` into a classifier's backbone; returns a log line.

    ViT weights go through ``checkpoint_filter_fn`` (prefixes stripped, position table resampled
    to the fine-tuning resolution); the engine's pretrained-weights reader does the reading.
    """
    from foveal.engine.pretrained import load_backbone, read_pretrained

    try:
        weights = read_pretrained(path)
    except CheckpointError as exc:
        raise CheckpointError(f"train.pretrained_model_path: {exc}") from None
    if weights.network == NETWORK and any(k.startswith("model.head.") for k in weights.tensors):
        raise _wrong_kind(path, "finetune", "finetune")
    try:
        count = load_backbone(model, weights, arch, path)
    except CheckpointError as exc:
        raise CheckpointError(str(exc).replace("model.backbone.type", "model.arch")) from None
    return f"train.pretrained_model_path: loaded {count} encoder tensors from {weights.kind} {path}"


def _read_pretrain_start(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors with pretraining-model keys, kind) from a mae checkpoint or an HF ViTMAE folder."""
    if path.is_dir():
        from foveal.networks.mae.convert_hf import convert_hf_mae_pretraining
        from foveal.nn.convert_hf import convert_hf_state_dict, read_hf_weights

        config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
        if config.get("model_type") != "vit_mae":
            raise CheckpointError(
                f"train.pretrained_model_path: {path} is not a Hugging Face ViTMAE folder "
                f"(model_type {config.get('model_type')!r})"
            )
        state, _ = read_hf_weights(path)
        if any(k.startswith("decoder.") for k in state):
            return convert_hf_mae_pretraining(state), "Hugging Face ViTMAEForPreTraining folder"
        encoder = convert_hf_state_dict(state, "vit_mae")
        return {f"encoder.{k}": v for k, v in encoder.items()}, "Hugging Face ViTMAE encoder folder"
    ckpt = load_checkpoint(path)
    if ckpt.get("network") != NETWORK:
        raise CheckpointError(
            f"train.pretrained_model_path: {path} is a {ckpt.get('network')} checkpoint; pretraining "
            "continues from a mae pretrain checkpoint or a Hugging Face ViTMAE folder"
        )
    stage = stage_of(ckpt, path)
    if stage != "pretrain":
        raise _wrong_kind(path, stage, "pretrain")
    arch = ((ckpt.get("config") or {}).get("model") or {}).get("arch")
    return _model_state(ckpt), f"mae pretrain checkpoint ({arch})"


def load_pretrain_start(model: nn.Module, path: str | Path, arch: str) -> str:
    """Load a pretraining model (encoder and, where shapes match, decoder) from ``path``.

    Raises:
        CheckpointError: wrong kind, or fewer than half of the encoder tensors fit ``arch``.
    """
    from foveal.nn import checkpoint_filter_fn, convnextv2_checkpoint_filter_fn
    from foveal.nn.hiera import hiera_checkpoint_filter_fn

    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"train.pretrained_model_path: {path} not found")
    tensors, kind = _read_pretrain_start(path)
    encoder_state = {k.removeprefix("encoder."): v for k, v in tensors.items() if k.startswith("encoder.")}
    filter_fn: Any = checkpoint_filter_fn
    if is_convnext(arch):
        filter_fn = convnextv2_checkpoint_filter_fn
    elif is_hiera(arch):
        filter_fn = hiera_checkpoint_filter_fn
    try:
        encoder = filter_fn(encoder_state, encoder_of(model)) if encoder_state else {}
    except ValueError as exc:
        raise CheckpointError(f"train.pretrained_model_path: {path}: {exc}") from None
    expected = model.state_dict()
    state = {f"encoder.{k}": v for k, v in encoder.items()}
    state |= {
        k: v
        for k, v in tensors.items()
        if not k.startswith("encoder.") and k in expected and v.shape == expected[k].shape
    }
    needed = [k for k in expected if k.startswith("encoder.") and not k.startswith(_OPTIONAL)]
    missing = [k for k in needed if k not in state]
    if len(missing) > len(needed) // 2:
        raise CheckpointError(
            f"train.pretrained_model_path: {kind} {path} does not fit model.arch={arch} "
            f"({len(needed) - len(missing)} of {len(needed)} encoder tensors match)"
        )
    model.load_state_dict(state, strict=False)
    fresh = [k for k in expected if k not in state and not k.startswith(_OPTIONAL)]
    if fresh:
        logger.warning("%d tensors not in %s kept their initialisation: %s", len(fresh), path, fresh[:10])
    return f"train.pretrained_model_path: loaded {len(state)} tensors from {kind} {path}"


# ------------------------------------------------------------------------------ freezing


def freeze(model: nn.Module, names: list[str]) -> None:
    """``train.freeze``: stop gradients of the named submodules (dotted paths in the model)."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            near = difflib.get_close_matches(name, [n for n in modules if n], n=3)
            hint = (
                f"did you mean {', '.join(near)}?"
                if near
                else "names are dotted module paths, e.g. encoder.blocks.0"
            )
            raise SpecError(SpecIssue("train.freeze", f"no module {name!r} in the model", hint))
        modules[name].requires_grad_(False)
        logger.info("train.freeze: %s frozen", name)
