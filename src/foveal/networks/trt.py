"""The gen_trt_engine action, the same for every network: ONNX file -> TensorRT engine."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from foveal.networks.registry import Action, ActionContext, ActionResult
from foveal.spec import required
from foveal.spec.common import GenTrtEngineConfig


class WithEngineSection(Protocol):
    """Any network's config: it has a ``gen_trt_engine`` section."""

    @property
    def gen_trt_engine(self) -> GenTrtEngineConfig: ...


def trt_engine_action(network: str) -> Action:
    """An action building ``<results_dir>/<network>.engine`` from ``gen_trt_engine.onnx_file``."""

    def gen_trt_engine(cfg: WithEngineSection, ctx: ActionContext) -> ActionResult:
        """Build a TensorRT engine from the exported ONNX file (needs TensorRT and a GPU)."""
        from foveal.export.tensorrt import build_trt_engine

        g = cfg.gen_trt_engine
        engine = Path(g.trt_engine or ctx.results_dir / f"{network}.engine")
        info = build_trt_engine(
            Path(required(g.onnx_file, "gen_trt_engine.onnx_file")),
            engine,
            data_type=g.tensorrt.data_type,
            workspace_size_mb=g.tensorrt.workspace_size,
            min_batch=g.tensorrt.min_batch_size,
            opt_batch=g.tensorrt.opt_batch_size,
            max_batch=g.tensorrt.max_batch_size,
            input_shape=(g.input_channel, g.input_height, g.input_width),
        )
        return ActionResult(artifacts={"trt_engine": str(engine)}, message=f"built {engine}: {info}")

    return gen_trt_engine
