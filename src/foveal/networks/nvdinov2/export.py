"""nvdinov2 export: the backbone to ONNX (checked against PyTorch), and the TensorRT engine.

The graph has one input, ``input`` (B, 3, H, W), ImageNet-normalised, and two outputs:
``cls_token`` (B, D), the normalised class token (DINOv2's ``x_norm_clstoken``, what
inference writes), and ``patch_tokens`` (B, N, D), the normalised patch tokens
(N = H/p * W/p). ``export.batch_size: -1`` makes B dynamic (checked at two batch sizes).

Input size: ``export.input_width`` / ``input_height`` when set (checked against the
checkpoint's patch size), else the checkpoint's ``model.backbone.img_size`` (the grid its
position table is built for, so the graph needs no resampling at the default size). The export
job's own ``model`` section is not used: a ``--parent`` job's spec does not describe the trained
model, the checkpoint does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foveal.networks.nvdinov2.checkpoints import LoadedBackbone, load_backbone_file
from foveal.networks.nvdinov2.config import NVDINOv2Config
from foveal.networks.registry import ActionContext, ActionResult
from foveal.networks.trt import trt_engine_action
from foveal.spec import SpecError, SpecIssue, required

logger = logging.getLogger(__name__)
NETWORK = "nvdinov2"
OUTPUT_NAMES = ("cls_token", "patch_tokens")
ONNX_ATOL = 1e-4


class BackboneTokens(nn.Module):
    """Export view of a backbone: images (B, C, H, W) -> (cls_token (B, D), patch_tokens (B, N, D))."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone: Any = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.backbone.forward_features(x)
        return out["x_norm_clstoken"], out["x_norm_patchtokens"]


def export_input_size(cfg: NVDINOv2Config, loaded: LoadedBackbone) -> tuple[int, int]:
    """(height, width) of the exported graph (see the module docstring)."""
    trained = int(loaded.cfg.model.backbone.img_size)
    height = cfg.export.input_height or trained
    width = cfg.export.input_width or trained
    patch = loaded.backbone.patch_size
    for key, value in (("export.input_height", height), ("export.input_width", width)):
        if value % patch:
            lower = value - value % patch
            raise SpecError(
                SpecIssue(
                    key,
                    f"{value} is not divisible by the checkpoint's patch size {patch}",
                    f"use {lower} or {lower + patch}",
                )
            )
    return height, width


def export(cfg: NVDINOv2Config, ctx: ActionContext) -> ActionResult:
    """Export the checkpoint's backbone to ONNX and report ONNX Runtime vs PyTorch."""
    from foveal.export import check_input_channels, export_batch_settings, export_onnx, note_export_device

    loaded = load_backbone_file(required(cfg.export.checkpoint, "export.checkpoint"), key="export.checkpoint")
    onnx_file = Path(cfg.export.onnx_file or ctx.results_dir / f"{NETWORK}.onnx")
    if onnx_file.exists() and not cfg.export.overwrite:
        raise SpecError(
            SpecIssue(
                "export.onnx_file", f"{onnx_file} already exists", "set export.overwrite=true to replace it"
            )
        )
    height, width = export_input_size(cfg, loaded)
    batch, dynamic = export_batch_settings(cfg.export.batch_size)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(batch, cfg.export.input_channel, height, width, generator=generator)
    metadata = {
        "network": NETWORK,
        "kind": loaded.kind,
        "arch": loaded.arch,
        "patch_size": str(loaded.backbone.patch_size),
        "num_register_tokens": str(loaded.backbone.num_register_tokens),
        "input_size": json.dumps([height, width]),
        "mean": json.dumps([0.485, 0.456, 0.406]),
        "std": json.dumps([0.229, 0.224, 0.225]),
        "checkpoint": str(loaded.path),
    }
    note_export_device(cfg.export.on_cpu, cfg.export.gpu_id)
    check_input_channels(cfg.export.input_channel)
    report = export_onnx(
        BackboneTokens(loaded.backbone),
        example,
        onnx_file,
        opset_version=cfg.export.opset_version,
        verbose=cfg.export.verbose,
        dynamic_batch=dynamic,
        input_names=("input",),
        output_names=OUTPUT_NAMES,
        metadata=metadata,
        atol=ONNX_ATOL,
    )
    diff = max(report.max_abs_diff.values()) if report.max_abs_diff else float("nan")
    report_file = ctx.results_dir / "export_report.json"
    report_file.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    shapes = ", ".join(f"{name} {report.output_shapes.get(name)}" for name in OUTPUT_NAMES)
    return ActionResult(
        kpis={"onnx_max_abs_diff": diff},
        artifacts={"onnx": str(onnx_file), "export_report": str(report_file)},
        message=f"exported the {loaded.kind} {loaded.arch} backbone to {onnx_file}: input 'input' "
        f"{report.input_shapes.get('input')}, outputs {shapes}; ONNX Runtime vs PyTorch max |diff| "
        f"{diff:.2e} at batch {report.verified_batch_sizes}",
    )


# The input size defaults to the ONNX file's own (static) height and width: this job's spec does
# not describe the trained model.
gen_trt_engine = trt_engine_action(NETWORK)
