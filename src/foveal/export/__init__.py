"""Export: PyTorch → ONNX (checked against ONNX Runtime), ONNX Runtime inference, TensorRT engines."""

from foveal.errors import EngineBuildError, ExportError, ExportVerificationError, TensorRTUnavailableError
from foveal.export.onnx import (
    ExportReport,
    check_input_channels,
    describe_graph,
    export_batch_settings,
    export_onnx,
    note_export_device,
    verify_onnx,
)
from foveal.export.onnx_runtime import OnnxPredictor
from foveal.export.tensorrt import build_trt_engine, plan_profiles

__all__ = [
    "EngineBuildError",
    "check_input_channels",
    "ExportError",
    "ExportReport",
    "ExportVerificationError",
    "OnnxPredictor",
    "TensorRTUnavailableError",
    "build_trt_engine",
    "export_batch_settings",
    "describe_graph",
    "export_onnx",
    "note_export_device",
    "plan_profiles",
    "verify_onnx",
]
