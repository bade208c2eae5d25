"""Image classifier: a registered backbone, a pooled feature and a linear or MLP head."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foveal.engine.checkpoint import CheckpointError, load_checkpoint
from foveal.nn import checkpoint_filter_fn, create_backbone

logger = logging.getLogger(__name__)


class Classifier(nn.Module):
    """``backbone.forward_features`` -> pool (cls | avg) -> head -> logits (B, num_classes)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        head_type: str = "linear",
        dropout: float = 0.0,
        global_pool: str = "cls",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.global_pool = global_pool
        dim = backbone.embed_dim
        if head_type == "mlp":
            self.head = nn.Sequential(
                nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, num_classes)
            )
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))
        # Small init keeps the first steps from blowing up a pretrained backbone's features.
        last = self.head[-1]
        nn.init.trunc_normal_(last.weight, std=2e-5 if head_type == "linear" else 0.02)
        nn.init.zeros_(last.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D)."""
        out = self.backbone.forward_features(x)
        if self.global_pool == "avg":
            return out["x_norm_patchtokens"].mean(dim=1)
        return out["x_norm_clstoken"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_classifier(model_cfg: Any, num_classes: int, img_size: int) -> Classifier:
    """Build the classifier a ``model`` spec section describes (no weights loaded)."""
    backbone = create_backbone(
        model_cfg.backbone.type, img_size=img_size, drop_path_rate=model_cfg.backbone.drop_path_rate
    )
    return Classifier(
        backbone,
        num_classes,
        head_type=model_cfg.head.type,
        dropout=model_cfg.head.dropout,
        global_pool=model_cfg.global_pool,
    )


def load_backbone_weights(model: Classifier, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load backbone weights from any supported checkpoint kind, reporting what did not match."""
    filtered = checkpoint_filter_fn(state_dict, model.backbone)
    missing, unexpected = model.backbone.load_state_dict(filtered, strict=False)
    loaded = len(filtered) - len(unexpected)
    if loaded == 0:
        raise ValueError(f"{source}: no tensor matches the backbone {type(model.backbone).__name__}")
    logger.info(
        "loaded %d backbone tensors from %s (%d missing, %d unexpected)",
        loaded,
        source,
        len(missing),
        len(unexpected),
    )


def freeze_backbone(model: Classifier, freeze: bool, freeze_blocks: list[int]) -> None:
    """Linear probe (freeze all) or freeze the given block indices."""
    if freeze:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        return
    blocks = getattr(model.backbone, "blocks", [])
    for idx in freeze_blocks:
        for p in blocks[idx].parameters():
            p.requires_grad_(False)


def read_backbone_state(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors of a backbone checkpoint of any supported kind, and the kind's name.

    Kinds: a Hugging Face folder (config.json + weights), a safetensors file, a Foveal
    checkpoint (full training state or backbone-only handoff file), a plain state dict.
    Loading never unpickles code (``weights_only=True``).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"pretrained weights {path} not found; check model.backbone.pretrained_backbone_path"
        )
    if path.is_dir():
        from foveal.nn import load_hf_folder

        hf_model, info = load_hf_folder(path)
        return hf_model.state_dict(), f"Hugging Face {info.get('model_type', 'model')}"
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), "safetensors"
    ckpt = load_checkpoint(path)
    network = ckpt.get("network") if isinstance(ckpt, dict) else None
    state = ckpt.get("state_dict", ckpt.get("model", ckpt)) if isinstance(ckpt, dict) else ckpt
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no weights; expected a backbone or model checkpoint")
    kind = f"foveal {network}" if network else "state dict"
    return tensors, kind
