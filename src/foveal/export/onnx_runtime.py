"""Run an exported ONNX file with ONNX Runtime and read the metadata `export_onnx` stored in it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from foveal.errors import OnnxFileError
from foveal.secrets import is_encrypted, read_model_bytes

logger = logging.getLogger(__name__)

# ONNX Runtime's type strings for the input types an exported vision model takes.
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, always with the CPU as the fallback."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]



def session_source(onnx_file: str | os.PathLike[str]) -> str | bytes:
    """What ONNX Runtime, ``onnx`` and TensorRT open: the path, or the decrypted bytes of a file
    written under an encryption key (decrypted in memory; the key is the active one)."""
    return read_model_bytes(onnx_file) if is_encrypted(onnx_file) else str(onnx_file)


def load_onnx_proto(onnx_file: str | os.PathLike[str]) -> Any:
    """The ``onnx.ModelProto`` of a file (external data not loaded), encrypted or not."""
    import onnx

    source = session_source(onnx_file)
    if isinstance(source, bytes):
        return onnx.load_from_string(source)
    return onnx.load(source, load_external_data=False)

class OnnxPredictor:
    """Inference on an ONNX file.

    Args:
        onnx_file: the model.
        providers: ONNX Runtime execution providers; default `default_providers()`.

    Example:
        >>> predictor = OnnxPredictor("model.onnx")
        >>> predictor.run(images)["output"].shape  # images: (B, 3, H, W) float32
    """

    def __init__(self, onnx_file: str | os.PathLike, providers: Sequence[str] | None = None):
        self.onnx_file = Path(onnx_file)
        if not self.onnx_file.is_file():
            raise OnnxFileError(f"ONNX file not found: {self.onnx_file}")
        self.session = ort.InferenceSession(
            session_source(self.onnx_file), providers=list(providers) if providers else default_providers()
        )
        self._inputs = self.session.get_inputs()
        self._outputs = self.session.get_outputs()

    @property
    def metadata(self) -> dict[str, str]:
        """The file's ``metadata_props`` (network name, class names as JSON, ...)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self._inputs]

    @property
    def input_shapes(self) -> dict[str, list[int | str]]:
        """Declared shapes; a dynamic dimension is its name, e.g. ``["batch", 3, 224, 224]``."""
        return {i.name: list(i.shape) for i in self._inputs}

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._outputs]

    @property
    def output_shapes(self) -> dict[str, list[int | str]]:
        return {o.name: list(o.shape) for o in self._outputs}

    def _feeds(self, inputs: np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> dict:
        if isinstance(inputs, Mapping):
            unknown = set(inputs) - set(self.input_names)
            missing = set(self.input_names) - set(inputs)
            if unknown or missing:
                raise ValueError(
                    f"inputs must be exactly {self.input_names}; unknown {sorted(unknown)}, missing {sorted(missing)}"
                )
            arrays = [inputs[name] for name in self.input_names]
        else:
            arrays = (
                [inputs]
                if isinstance(inputs, np.ndarray) or not isinstance(inputs, Sequence)
                else list(inputs)
            )
            if len(arrays) != len(self._inputs):
                raise ValueError(
                    f"the model takes {len(self._inputs)} inputs {self.input_names}, got {len(arrays)}"
                )
        feeds = {}
        for meta, array in zip(self._inputs, arrays, strict=True):
            dtype = _NUMPY_TYPES.get(meta.type)
            feeds[meta.name] = np.ascontiguousarray(array, dtype=dtype)
        return feeds

    def run(
        self, inputs: np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Run the model.

        Args:
            inputs: one array (single-input models), arrays in input order, or ``{name: array}``;
                cast to the declared input type (e.g. float64 → float32).

        Returns:
            ``{output_name: array}`` in the file's output order.
        """
        outputs = self.session.run(None, self._feeds(inputs))
        return dict(zip(self.output_names, outputs, strict=True))

    __call__ = run

    def __repr__(self) -> str:
        return (
            f"OnnxPredictor({str(self.onnx_file)!r}, inputs={self.input_shapes}, "
            f"outputs={self.output_shapes}, providers={self.providers})"
        )
