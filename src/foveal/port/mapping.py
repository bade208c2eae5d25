"""Phase 2 of a port: map the source onto the closest Foveal backbone and check it is the same model.

* Native: ViT, DINOv2 (with registers) and ViT-MAE convert into :class:`foveal.nn.VisionTransformer`
  (:mod:`foveal.nn.convert_hf`); the converted weights are stored as safetensors and nothing of
  ``transformers`` runs afterwards. Check: HF vs native final-norm tokens, max |diff| <= 1e-4.
* Wrapped: everything else runs as the HF model behind :class:`foveal.nn.hf_backbone.HFBackbone`.
  Check: the wrapper's pooled feature fed to the model's own head gives the HF logits.

Also the phase-1 sanity export of the untouched HF model (the reason is kept when it fails).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foveal.port.inspect import SourceInfo

logger = logging.getLogger(__name__)

PARITY_ATOL = 1e-4
NATIVE_TYPES = ("vit", "dinov2", "dinov2_with_registers", "vit_mae")
_COPIED = ("config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json", "*.bin",
           # a text-conditioned model's tokenizer
           "tokenizer*.json", "special_tokens_map.json", "vocab.*", "merges.txt", "*.model")  # fmt: skip


@dataclass
class MappingResult:
    """How the source maps onto Foveal, and what the check measured."""

    mapping: str  # "native" | "wrapped"
    family: str
    backbone: dict[str, Any]  # the backbone description for foveal.nn.ported (paths relative)
    embed_dim: int
    parity: dict[str, float] = field(default_factory=dict)
    note: str = ""


def example_input(info: SourceInfo, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A fixed random batch (B, C, S, S) at the source's input size."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, info.num_channels, info.image_size, info.image_size, generator=gen)


class _Logits(nn.Module):
    """An HF model as ``x -> logits`` (or pooled features) for the exporter."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        if getattr(out, "logits", None) is not None:
            return out.logits
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state


PROBE_CLASSES = ("circle", "square", "triangle")  # a text-conditioned model's prompts in the checks


def _load(folder: str | Path, task: str) -> nn.Module:
    """The folder's model for ``task`` (an image-text model with prompts for :data:`PROBE_CLASSES`)."""
    from foveal.networks.hf_task.model import GROUNDING, ZERO_SHOT, load_grounded, load_zero_shot
    from foveal.nn.hf_backbone import load_hf_model

    if task == ZERO_SHOT:
        return load_zero_shot(str(folder), None, PROBE_CLASSES, "a photo of a {}.").eval()
    if task == GROUNDING:
        return load_grounded(str(folder), None, PROBE_CLASSES).eval()
    return load_hf_model(folder, task)


def _graph(model: nn.Module, task: str) -> nn.Module:
    """The model as ``x -> outputs``: a task model's named outputs, else logits / pooled features."""
    from foveal.networks.hf_task.model import TASK_OUTPUTS, TaskGraph

    return TaskGraph(model, task) if task in TASK_OUTPUTS else _Logits(model)


def sanity_export(info: SourceInfo) -> dict[str, Any]:
    """Export the untouched HF model to ONNX and run it in ONNX Runtime; never raises.

    Returns:
        ``{"passed": bool, "exporter": ..., "max_abs_diff": ..., "reason": ...}``.
    """
    from foveal.export import ExportVerificationError, export_onnx

    try:
        model = _graph(_load(info.folder, info.task), info.task)
        with tempfile.TemporaryDirectory(prefix="foveal-port-") as tmp:
            report = export_onnx(model, example_input(info), Path(tmp) / "source.onnx", dynamic_batch=True,
                                     fixed_batch_fallback=True)
        diff = max(report.max_abs_diff.values(), default=0.0)
        return {"passed": True, "exporter": report.exporter, "max_abs_diff": diff, "reason": ""}
    except ExportVerificationError as exc:
        diff = max(exc.report.max_abs_diff.values())
        return {"passed": False, "exporter": exc.report.exporter, "max_abs_diff": diff, "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a report line, not a crash: the port may still work
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {
            "passed": False,
            "exporter": None,
            "max_abs_diff": None,
            "reason": f"{type(exc).__name__}: {line}",
        }


def copy_hf_folder(source: Path, target: Path) -> None:
    """Copy the files a model needs (config, preprocessor config, weights) into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for pattern in _COPIED:
        for path in source.glob(pattern):
            shutil.copy2(path, target / path.name)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shape {tuple(a.shape)} != {tuple(b.shape)}")
    return float((a.double() - b.double()).abs().max())


@torch.no_grad()
def map_native(info: SourceInfo, entry_dir: Path) -> MappingResult:
    """Convert into a native ViT, save ``backbone.safetensors`` and compare features with HF.

    Raises:
        ValueError / RuntimeError: the weights do not convert (the caller falls back to wrapping).
    """
    from safetensors.torch import save_file

    from foveal.nn.convert_hf import load_hf_folder
    from foveal.nn.hf_backbone import load_hf_model

    native, conv = load_hf_folder(info.folder)
    hf = load_hf_model(info.folder, "feature-extraction")
    x = example_input(info)
    hf_tokens = hf(pixel_values=x).last_hidden_state
    out = native.forward_features(x)
    ours = torch.cat(
        [out["x_norm_clstoken"].unsqueeze(1), out["x_norm_regtokens"], out["x_norm_patchtokens"]], 1
    )
    diff = _max_diff(hf_tokens, ours)
    entry_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in native.state_dict().items()}
    save_file(state, str(entry_dir / "backbone.safetensors"))
    vit_kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in conv["vit_kwargs"].items()}
    return MappingResult(
        mapping="native",
        family="vit",
        backbone={"kind": "native_vit", "vit_kwargs": vit_kwargs, "weights": "backbone.safetensors"},
        embed_dim=native.embed_dim,
        parity={"hf_vs_native_features": diff},
        note=f"{conv['model_type']} -> foveal VisionTransformer ({len(state)} tensors)",
    )


@torch.no_grad()
def map_wrapped(info: SourceInfo, entry_dir: Path) -> MappingResult:
    """Copy the HF folder into the entry and check the wrapper against the HF model."""
    from foveal.nn.hf_backbone import HFBackbone, class_scores, detach_head, load_hf_model

    copy_hf_folder(Path(info.folder), entry_dir / "hf")
    reference = load_hf_model(entry_dir / "hf", info.task)
    x = example_input(info)
    wrapper = HFBackbone(load_hf_model(entry_dir / "hf", info.task), info.task, info.image_size).eval()
    features = wrapper.forward_features(x)["x_norm_clstoken"]
    parity: dict[str, float] = {}
    if info.task == "image-classification":
        expected = class_scores(reference(pixel_values=x))
        _, head = detach_head(reference)
        if head is None:
            raise RuntimeError(f"{info.architecture}: no classifier/head module to detach")
        # A head starting with Flatten (ResNet, RegNet) flattens our (B, D) feature to itself.
        parity["hf_vs_wrapped_logits"] = _max_diff(expected, head(features))
    if not torch.isfinite(features).all():
        raise RuntimeError(f"{info.architecture}: the pooled features are not finite")
    return MappingResult(
        mapping="wrapped",
        family=info.model_type,
        backbone={"kind": "hf", "folder": "hf", "task": info.task, "image_size": info.image_size},
        embed_dim=wrapper.embed_dim,
        parity=parity,
        note=f"{info.architecture} wrapped (pooled feature: the input of its head, dim {wrapper.embed_dim})",
    )


@torch.no_grad()
def map_task(info: SourceInfo, entry_dir: Path) -> MappingResult:
    """A model trained whole (detection, segmentation, depth, text-conditioned, or a classifier
    whose head does not detach): copied whole (backbone, neck, head) into the entry; check: the
    copy's task outputs equal the source's.

    Raises:
        RuntimeError: the model does not return its task's outputs (e.g. a text-region map).
    """
    from foveal.networks.hf_task.model import TASK_OUTPUTS

    copy_hf_folder(Path(info.folder), entry_dir / "hf")
    x = example_input(info)
    names = TASK_OUTPUTS[info.task]
    model = _load(info.folder, info.task)
    produced = model(x) if hasattr(model, "input_ids") else model(pixel_values=x)
    missing = [n for n in names if getattr(produced, n, None) is None]
    if missing:
        found = [k for k, v in produced.items() if v is not None] if hasattr(produced, "items") else []
        raise RuntimeError(
            f"{info.architecture} returns {', '.join(found) or 'other outputs'}, not the {info.task} outputs "
            f"{', '.join(names)} (e.g. a text-region probability map instead of boxes)"
        )
    source = _graph(model, info.task)
    copied = _graph(_load(entry_dir / "hf", info.task), info.task)
    expected, ours = source(x), copied(x)
    parity = {f"copy_vs_source_{name}": _max_diff(a, b) for name, a, b in zip(names, expected, ours, strict=True)}
    for name, value in zip(names, ours, strict=True):
        if not torch.isfinite(value).all():
            raise RuntimeError(f"{info.architecture}: output {name} is not finite")
    shapes = ", ".join(f"{n} {tuple(v.shape)}" for n, v in zip(names, ours, strict=True))
    return MappingResult(
        mapping="whole",
        family=info.model_type,
        backbone={},
        embed_dim=0,
        parity=parity,
        note=f"{info.architecture} trained whole with its own head ({shapes})",
    )


def _head_detaches(info: SourceInfo) -> bool:
    """Whether the classifier's head is a module on its pooled feature (see detach_head)."""
    from foveal.nn.hf_backbone import detach_head, load_hf_model

    return detach_head(load_hf_model(info.folder, info.task))[0] is not None


def map_source(info: SourceInfo, entry_dir: Path, prefer_native: bool = True) -> MappingResult:
    """Whole for a detection/segmentation/depth model; else native where the architecture allows
    and the conversion works, else wrapped."""
    from foveal.port.inspect import WHOLE_MODEL_TASKS

    if info.task in WHOLE_MODEL_TASKS:
        return map_task(info, entry_dir)
    if info.task == "image-classification" and not _head_detaches(info):
        return map_task(info, entry_dir)  # trained whole, with its own head (Perceiver's decoder)
    if prefer_native and info.model_type in NATIVE_TYPES:
        try:
            return map_native(info, entry_dir)
        except (ValueError, RuntimeError, KeyError) as exc:
            logger.warning("native conversion of %s failed (%s); wrapping it instead", info.model_type, exc)
            (entry_dir / "backbone.safetensors").unlink(missing_ok=True)
    return map_wrapped(info, entry_dir)
