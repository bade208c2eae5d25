"""Start a model from pretrained weights of any supported kind, named in the log (every network).

Kinds: a Foveal nvdinov2 backbone file (``student_epoch_*.pth`` / ``teacher_epoch_*.pth``) or
training checkpoint, a Foveal mae checkpoint (pretrain or finetune), a Foveal classification
checkpoint, a Hugging Face folder (``config.json`` + weights), a safetensors file, a plain state
dict. ViT backbones go through :func:`foveal.nn.checkpoint_filter_fn` (prefix stripping, HF
layout, position-table resampling to the training resolution), ConvNeXt V2 through
:func:`foveal.nn.convnextv2_checkpoint_filter_fn`, Hiera through
:func:`foveal.nn.hiera.hiera_checkpoint_filter_fn` (TAO / timm names too); other backbones match
their own keys under the most common prefix. A checkpoint whose backbone cannot fit the model is a
one-line :class:`CheckpointError`. Files are read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from foveal.engine.checkpoint import load_checkpoint
from foveal.errors import CheckpointError
from foveal.nn import ConvNeXtV2, VisionTransformer, checkpoint_filter_fn, convnextv2_checkpoint_filter_fn
from foveal.nn.hiera import Hiera, hiera_checkpoint_filter_fn

logger = logging.getLogger(__name__)

# Backbone tensors a checkpoint may lack without the load being a mismatch.
_OPTIONAL_KEYS = ("mask_token", "register_tokens")
_LAYERSCALE = re.compile(r"(^|\.)blocks\.\d+\.ls[12]\.gamma$")


@dataclass
class PretrainedWeights:
    """Tensors read from a pretrained file, what kind of file it is and its backbone, if named."""

    tensors: dict[str, torch.Tensor]
    kind: str
    backbone: str | None = None
    network: str | None = None
    classes: list[str] | None = None


def family(name: str | None) -> str | None:
    """``"vit"`` / ``"convnext"`` from a backbone name, None when the name does not tell."""
    if not name:
        return None
    lowered = name.lower()
    if lowered.startswith("vit") or lowered.startswith("hf "):
        return "vit"
    if lowered.startswith("convnext"):
        return "convnext"
    return None


def tensor_family(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """``"vit"`` / ``"convnext"`` from the key layout, None when neither is recognised."""
    if any(k.endswith(("patch_embed.proj.weight", "patch_embeddings.projection.weight")) for k in tensors):
        return "vit"
    if any("downsample_layers." in k or ".dwconv." in k for k in tensors):
        return "convnext"
    return None


# ----------------------------------------------------------------------------- reading


def read_pretrained(path: str | Path) -> PretrainedWeights:
    """Read ``path`` and name its kind (see the module docstring).

    Raises:
        CheckpointError: missing, unreadable, or holding no weights.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"pretrained weights {path} not found")
    if path.is_dir():
        return _read_hf_folder(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        return PretrainedWeights(tensors, "safetensors file")
    obj = load_checkpoint(path, require_foveal=False)
    network = obj.get("network") if isinstance(obj.get("network"), str) else None
    if network is None:
        tensors = _tensors(obj)
        nested = next((k for k in ("state_dict", "model", "module") if isinstance(obj.get(k), Mapping)), None)
        kind = f"plain state dict (under '{nested}')" if nested else "plain state dict"
        return PretrainedWeights(_require(tensors, path), kind)
    return _read_foveal(obj, network, path)


def _tensors(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Top-level tensors, else those of the first nested ``state_dict`` / ``model`` / ``module``."""
    flat = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if flat:
        return flat
    for key in ("state_dict", "model", "module"):
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            return {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    return {}


def _require(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    if not tensors:
        raise CheckpointError(f"{path} holds no weights; expected a backbone or model checkpoint")
    return tensors


def _config_get(config: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(config, Mapping):
            return None
        config = config.get(key)
    return config


def _read_foveal(obj: Mapping[str, Any], network: str, path: Path) -> PretrainedWeights:
    config = obj.get("config") or {}
    ckpt_kind = obj.get("kind", "full")
    state: Mapping[str, Any] = obj["state_dict"] if isinstance(obj.get("state_dict"), Mapping) else obj
    backbone = None
    if network == "nvdinov2":
        which = "teacher" if ckpt_kind == "teacher" else "student"
        backbone = _config_get(config, "model", "backbone", f"{which}_type")
        if ckpt_kind == "full":
            kind = "foveal nvdinov2 training checkpoint"
        else:
            kind = f"foveal nvdinov2 {ckpt_kind} backbone"
    elif network == "mae":
        stage = obj.get("stage") or _config_get(config, "train", "stage") or "pretrain"
        backbone = obj.get("arch") or _config_get(config, "model", "arch")
        kind = f"foveal mae {stage} checkpoint"
    elif network == "classification":
        backbone = _config_get(config, "model", "backbone", "type")
        kind = "foveal classification checkpoint"
    else:
        kind = f"foveal {network} {ckpt_kind} checkpoint"
    if isinstance(obj.get("ema_state_dict"), Mapping):
        # A fine-tuning checkpoint with a weight EMA: its evaluate and export use the average too.
        state = {f"model.{k}": v for k, v in obj["ema_state_dict"].items()}
        kind += " (EMA weights)"
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    classes = list(obj["classes"]) if isinstance(obj.get("classes"), (list, tuple)) else None
    return PretrainedWeights(_require(tensors, path), kind, backbone, network, classes)


def _read_hf_folder(path: Path) -> PretrainedWeights:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"{path} is a folder without config.json; expected a Hugging Face model folder "
            "(save_pretrained) or a checkpoint file"
        )
    from foveal.nn.convert_hf import HF_MODEL_TYPES, load_hf_folder

    model_type = json.loads(config_file.read_text()).get("model_type", "?")
    if model_type not in HF_MODEL_TYPES:
        raise CheckpointError(
            f"{path}: Hugging Face model type {model_type!r} cannot be loaded; supported: "
            f"{', '.join(HF_MODEL_TYPES)}"
        )
    try:
        model, _ = load_hf_folder(path)
    except (RuntimeError, ValueError, FileNotFoundError, KeyError) as exc:
        raise CheckpointError(f"{path}: {str(exc).splitlines()[0]}") from None
    return PretrainedWeights(
        dict(model.state_dict()), f"Hugging Face {model_type} folder", f"HF {model_type}"
    )


# ----------------------------------------------------------------------------- loading


def _mismatch(path: Any, weights: PretrainedWeights, target: str, reason: str) -> CheckpointError:
    named = f" with a {weights.backbone} backbone" if weights.backbone else ""
    return CheckpointError(
        f"{path}: {weights.kind}{named} does not fit model.backbone.type={target} ({reason}); "
        "use a checkpoint of the same backbone or change model.backbone.type"
    )


def _match_by_prefix(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Non-ViT backbones: keys of ``expected`` found under the most common prefix in ``tensors``."""
    prefixes: Counter[str] = Counter()
    for key in tensors:
        for target in expected:
            if key.endswith(target) and (len(key) == len(target) or key[-len(target) - 1] == "."):
                prefixes[key[: -len(target)]] += 1
    if not prefixes:
        return {}
    prefix = max(prefixes, key=lambda p: (prefixes[p], "teacher" in p, -len(p)))
    out = {}
    for target, value in expected.items():
        found = tensors.get(prefix + target)
        if found is not None and found.shape == value.shape:
            out[target] = found
    return out


def _has_layerscale(keys: Any) -> bool:
    return any(_LAYERSCALE.search(k) for k in keys)


def _check_vit_structure(
    weights: PretrainedWeights,
    expected: Mapping[str, torch.Tensor],
    missing: list[str],
    source: Any,
    target: str,
) -> None:
    """A ViT whose patch embedding, blocks or LayerScale do not fit is another architecture: loading
    the rest would start from broken features (e.g. a patch-16 nvdinov2 student in a patch-14
    vit_t keeps a random patch embedding; a LayerScale-free vit_tiny_patch16 drops the student's
    learned ls gammas), so it is a mismatch, not a warning."""
    structural = [k for k in missing if k.startswith(("patch_embed.", "blocks."))]
    if structural:
        raise _mismatch(
            source,
            weights,
            target,
            f"{', '.join(structural[:3])} absent from the checkpoint or of another shape",
        )
    if _has_layerscale(weights.tensors) and not _has_layerscale(expected):
        raise _mismatch(
            source,
            weights,
            target,
            "the checkpoint's blocks have LayerScale (ls1/ls2.gamma), the model's do not",
        )


def load_backbone(model: Any, weights: PretrainedWeights, target: str, source: Any) -> int:
    """Load ``weights`` into ``model.backbone``; returns how many tensors were loaded.

    Raises:
        CheckpointError: the checkpoint's backbone is of another family, or too little matches.
    """
    backbone = model.backbone
    want: str | None
    if isinstance(backbone, VisionTransformer):
        want = "vit"
    else:
        want = "convnext" if isinstance(backbone, ConvNeXtV2) else family(target)
    have = family(weights.backbone) or tensor_family(weights.tensors)
    if want and have and want != have:
        raise _mismatch(source, weights, target, f"a {have} checkpoint for a {want} backbone")
    expected = backbone.state_dict()
    if isinstance(backbone, VisionTransformer):
        try:
            filtered = checkpoint_filter_fn(weights.tensors, backbone)
        except ValueError as exc:
            raise _mismatch(source, weights, target, str(exc)) from None
    elif isinstance(backbone, ConvNeXtV2):
        filtered = convnextv2_checkpoint_filter_fn(weights.tensors, backbone)
    elif isinstance(backbone, Hiera):  # also renames TAO / timm keys (blocks.N -> stages.S.layers.L)
        filtered = hiera_checkpoint_filter_fn(weights.tensors, backbone)
    else:  # a ported backbone: its own key names under some prefix
        filtered = _match_by_prefix(weights.tensors, expected)
    required = [k for k in expected if not k.startswith(_OPTIONAL_KEYS)]
    missing = [k for k in required if k not in filtered]
    if not filtered or len(missing) > len(required) // 2:
        raise _mismatch(
            source, weights, target, f"{len(required) - len(missing)} of {len(required)} tensors match"
        )
    if isinstance(backbone, VisionTransformer):
        _check_vit_structure(weights, expected, missing, source, target)
    backbone.load_state_dict(filtered, strict=False)
    if missing:
        logger.warning(
            "%d backbone tensors not in %s kept their initialisation: %s", len(missing), source, missing[:10]
        )
    return len(filtered)


def load_head(model: Any, weights: PretrainedWeights, classes: list[str] | None = None) -> bool:
    """Copy a classification checkpoint's head when it has the same classes (``classes``, when
    given) and shapes; True if copied."""
    if weights.network != "classification":
        return False
    if classes is not None and weights.classes is not None and list(weights.classes) != list(classes):
        logger.info(
            "the checkpoint's head is for classes %s, not %s; it starts fresh",
            weights.classes[:10],
            classes[:10],
        )
        return False
    head = {
        k.removeprefix("model.head."): v for k, v in weights.tensors.items() if k.startswith("model.head.")
    }
    expected = model.head.state_dict()
    if set(head) != set(expected) or any(head[k].shape != v.shape for k, v in expected.items()):
        logger.info(
            "the checkpoint's head does not fit this one (other classes or head type); it starts fresh"
        )
        return False
    model.head.load_state_dict(head)
    return True


def load_pretrained(
    model: Any,
    path: str | Path,
    target: str,
    *,
    key: str,
    with_head: bool = False,
    classes: list[str] | None = None,
) -> str:
    """Read ``path``, load its backbone (and head, ``with_head``) into ``model``; log and return
    a one-line summary naming the kind of checkpoint.

    Args:
        model: a :class:`~foveal.nn.classifier.Classifier`.
        path: the weights (file or Hugging Face folder).
        target: the spec's backbone name, for messages.
        key: the spec key that named ``path``, for messages.
        with_head: also take a classification checkpoint's head when it fits.
        classes: this run's classes; the head is taken only for the same list.
    """
    try:
        weights = read_pretrained(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{key}: {exc}") from None
    count = load_backbone(model, weights, target, path)
    head = load_head(model, weights, classes) if with_head else False
    named = f" ({weights.backbone})" if weights.backbone else ""
    summary = f"{key}: loaded {count} backbone tensors{' and the head' if head else ''} from {weights.kind}{named} {path}"
    logger.info(summary)
    return summary
