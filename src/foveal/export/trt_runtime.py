"""Run a serialized TensorRT engine (TAO-Deploy's ``evaluate`` / ``inference`` on ``*.engine``).

`TrtPredictor` deserializes an engine built by ``gen_trt_engine``, binds torch tensors on the GPU
as its inputs and outputs and runs it on the current CUDA stream (TensorRT >= 8.5 name-based
I/O: ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``). Batches larger than the
engine's optimization profile are run in chunks; an engine with a static batch gets its last
chunk zero-padded. Outputs come back as float32 CPU tensors in the engine's output order.

`build_trt_engine` writes ``<engine>.json`` beside every engine: the ONNX file's metadata
(network, classes, input size, mean/std, output kind) and how the engine was built, since a
TensorRT engine keeps none of it. Actions read it with `engine_metadata` to preprocess images the
way the model was trained and to name the classes.

`agreement` compares engine outputs with PyTorch's on the same images; the tolerances in
`TOLERANCES` are relative to the largest reference magnitude (fp32 engines are built without
TF32, so they match PyTorch to float rounding; fp16 to half precision; int8 is only reported).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from foveal.errors import EngineFileError, RunError, TensorRTUnavailableError

logger = logging.getLogger(__name__)

# data type -> max |engine - pytorch| / max(1, max |pytorch|) that counts as agreement
TOLERANCES: dict[str, float | None] = {"fp32": 1e-4, "fp16": 2e-2, "int8": None}


def sidecar_path(engine_file: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    path = Path(engine_file)
    return path.with_name(path.name + ".json")


def write_engine_metadata(engine_file: str | os.PathLike, info: Mapping[str, Any], onnx_metadata: Mapping[str, str]) -> Path:
    """Write ``<engine>.json``: the build ``info`` and the ONNX file's ``metadata_props``."""
    out = sidecar_path(engine_file)
    record = {**{k: v for k, v in info.items() if k != "seconds"}, "metadata": dict(onnx_metadata)}
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, out)
    return out


def engine_metadata(engine_file: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of an engine (``{}`` when it has none, e.g. one built by TAO-Deploy)."""
    path = sidecar_path(engine_file)
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("%s is not readable JSON; the engine is run without its metadata", path)
        return {}
    return record if isinstance(record, dict) else {}


def meta_value(meta: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """A value of the ONNX metadata in a sidecar, JSON-decoded where it is JSON."""
    raw = (meta.get("metadata") or {}).get(key)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return raw


def _import_tensorrt(engine_file: Path) -> Any:
    try:
        import tensorrt
    except ImportError:
        raise TensorRTUnavailableError(
            f"TensorRT is not installed, so {engine_file} cannot run here: pip install 'foveal[tensorrt]' on a "
            "machine with an NVIDIA GPU, or run the checkpoint instead (leave trt_engine empty)"
        ) from None
    return tensorrt


class TrtPredictor:
    """Inference with a serialized TensorRT engine.

    Args:
        engine_file: from ``gen_trt_engine``.
        device: where the I/O tensors live; default ``cuda`` (the current device) when there is one.

    Example:
        >>> predictor = TrtPredictor("classification.engine")
        >>> predictor.run(images)["logits"].shape  # images: (B, 3, H, W)
    """

    def __init__(self, engine_file: str | os.PathLike, device: str | torch.device | None = None):
        self.engine_file = Path(engine_file)
        if not self.engine_file.is_file():
            raise EngineFileError(
                f"TensorRT engine not found: {self.engine_file}; build one with the network's gen_trt_engine action"
            )
        trt = _import_tensorrt(self.engine_file)
        self._trt = trt
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(self.engine_file.read_bytes())
        if engine is None:
            raise EngineFileError(
                f"{self.engine_file} is not an engine TensorRT {trt.__version__} can load on this GPU (engines are "
                "tied to the TensorRT version and GPU that built them); rebuild it with gen_trt_engine here"
            )
        self._runtime, self._engine = runtime, engine
        self.context = engine.create_execution_context()
        self.metadata = engine_metadata(self.engine_file)
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._dtypes: dict[str, torch.dtype] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.input_names if is_input else self.output_names).append(name)
            self._dtypes[name] = torch.from_numpy(np.zeros(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            self._shapes[name] = tuple(int(d) for d in engine.get_tensor_shape(name))
        self.batch_range = self._batch_range()

    def _batch_range(self) -> tuple[int, int]:
        """(smallest, largest) batch one execution takes: the profile's, or the static batch."""
        low, high = 1, 2**31
        for name in self.input_names:
            first = self._shapes[name][0] if self._shapes[name] else 1
            if first > 0:
                low, high = max(low, first), min(high, first)
            else:
                shapes = self._engine.get_tensor_profile_shape(name, 0)
                low, high = max(low, int(shapes[0][0])), min(high, int(shapes[2][0]))
        if low > high:
            raise EngineFileError(f"{self.engine_file}: its inputs take no common batch size ({low} > {high})")
        return low, high

    @property
    def input_shapes(self) -> dict[str, list[int]]:
        """Declared input shapes, -1 for a dynamic dimension."""
        return {name: list(self._shapes[name]) for name in self.input_names}

    @property
    def data_type(self) -> str | None:
        return self.metadata.get("data_type")

    def _inputs(self, inputs: torch.Tensor | np.ndarray | Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if isinstance(inputs, Mapping):
            if set(inputs) != set(self.input_names):
                raise ValueError(f"inputs must be exactly {self.input_names}, got {sorted(inputs)}")
            raw = dict(inputs)
        else:
            if len(self.input_names) != 1:
                raise ValueError(f"the engine takes {len(self.input_names)} inputs {self.input_names}: pass a mapping")
            raw = {self.input_names[0]: inputs}
        out = {}
        for name, value in raw.items():
            tensor = torch.as_tensor(value)
            want = self._shapes[name]
            if len(want) != tensor.dim() or any(w > 0 and w != g for w, g in zip(want[1:], tensor.shape[1:], strict=False)):
                raise ValueError(f"input '{name}' of {self.engine_file.name} is {list(want)} (-1: any), got {list(tensor.shape)}")
            out[name] = tensor
        return out

    def _execute(self, chunk: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keep = {}
        for name, value in chunk.items():
            tensor = value.to(self.device, self._dtypes[name]).contiguous()
            keep[name] = tensor  # alive until the run ends
            if any(d < 0 for d in self._shapes[name]):
                self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, int(tensor.data_ptr()))
        outputs = {}
        for name in self.output_names:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
            self.context.set_tensor_address(name, int(outputs[name].data_ptr()))
        cuda = self.device.type == "cuda"
        stream = torch.cuda.current_stream(self.device).cuda_stream if cuda else 0
        if not self.context.execute_async_v3(stream):
            raise RunError(f"TensorRT failed to run {self.engine_file}; see the TensorRT log above")
        if cuda:
            torch.cuda.current_stream(self.device).synchronize()
        del keep
        return outputs

    def run(self, inputs: torch.Tensor | np.ndarray | Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Run the engine on a batch of any size.

        Returns:
            ``{output name: float32 CPU tensor}`` in the engine's output order.
        """
        feeds = self._inputs(inputs)
        total = next(iter(feeds.values())).shape[0]
        low, high = self.batch_range
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in self.output_names}
        for start in range(0, total, high):
            size = min(high, total - start)
            chunk = {name: t[start : start + size] for name, t in feeds.items()}
            if size < low:  # a static or minimum batch: pad with zeros, drop their outputs
                chunk = {
                    name: torch.cat([t, t.new_zeros((low - size, *t.shape[1:]))]) for name, t in chunk.items()
                }
            for name, value in self._execute(chunk).items():
                parts[name].append(value[:size].float().cpu())
        return {name: torch.cat(values) for name, values in parts.items()}

    __call__ = run

    def __repr__(self) -> str:
        return f"TrtPredictor({str(self.engine_file)!r}, inputs={self.input_names}, outputs={self.output_names})"


class EngineBackbone(nn.Module):
    """An engine of an exported backbone standing in for the backbone: ``forward_features(images)``
    gives the backbone's dict (``x_norm_clstoken``, ``x_norm_patchtokens``, ...) from the engine's
    outputs, so feature extraction, kNN and PCA code runs on it unchanged.

    Args:
        predictor: the engine.
        names: ``{engine output: forward_features key}``.
        patch_size: the ViT's patch size (0: not a ViT).
        has_class_token: whether the exported backbone had one (``cls_token`` is then a marker
            tensor, as `foveal.engine.features.has_class_token` looks for).
        reference: the PyTorch backbone the engine was exported from, or None: when given, each
            batch also runs it and `agreement` reports how far the two are apart on ``compare``.
        compare: the ``forward_features`` key compared, and what to call it in the report.
    """

    def __init__(
        self,
        predictor: TrtPredictor,
        names: Mapping[str, str],
        *,
        patch_size: int = 0,
        has_class_token: bool = False,
        reference: Any = None,
        compare: tuple[str, str] = ("x_norm_clstoken", "class token"),
    ) -> None:
        super().__init__()
        missing = sorted(set(names) - set(predictor.output_names))
        if missing:
            raise EngineFileError(
                f"{predictor.engine_file} has outputs {predictor.output_names}, not {missing}: build it from this "
                "network's export"
            )
        self.predictor, self.names, self.patch_size = predictor, dict(names), patch_size
        self.cls_token = torch.zeros(1) if has_class_token else None
        self.key = compare[0]
        self.references = (reference,) if reference is not None else ()  # not a submodule of this view
        self.meter = AgreementMeter(predictor.data_type, compare[1]) if reference is not None else None

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.predictor.run(x)
        features = {key: out[name] for name, key in self.names.items()}
        for reference in self.references:
            assert self.meter is not None
            self.meter.add(reference.forward_features(x)[self.key], features[self.key])
        return features

    def agreement(self) -> dict[str, Any] | None:
        """The engine-vs-PyTorch report (None without a reference)."""
        return self.meter.report() if self.meter is not None else None


class AgreementMeter:
    """Engine-vs-PyTorch differences accumulated over batches (see `agreement`)."""

    def __init__(self, data_type: str | None, what: str = "output") -> None:
        self.data_type, self.what = data_type, what
        self.max_abs = self.sum_abs = self.scale = 0.0
        self.count = self.rows = self.top1_same = 0
        self.classes = False

    def add(self, reference: torch.Tensor, engine: torch.Tensor) -> None:
        ref, got = reference.detach().float().cpu(), engine.detach().float().cpu()
        if ref.shape != got.shape:
            raise ValueError(f"engine output {list(got.shape)} and PyTorch output {list(ref.shape)} differ in shape")
        if not ref.numel():
            return
        diff = (ref - got).abs()
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.sum_abs += float(diff.sum())
        self.count += diff.numel()
        self.scale = max(self.scale, float(ref.abs().max()))
        if ref.dim() == 2:
            self.classes = True
            self.rows += ref.shape[0]
            self.top1_same += int((ref.argmax(1) == got.argmax(1)).sum())

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "compared": self.what,
            "data_type": self.data_type,
            "max_abs_diff": self.max_abs,
            "mean_abs_diff": self.sum_abs / self.count if self.count else 0.0,
            "relative_max_diff": self.max_abs / max(1.0, self.scale),
        }
        if self.classes:
            report["top1_agreement"] = self.top1_same / self.rows if self.rows else 1.0
        tolerance = TOLERANCES.get(self.data_type or "")
        report["tolerance"] = tolerance
        report["within_tolerance"] = None if tolerance is None else report["relative_max_diff"] <= tolerance
        return report


def agreement(reference: torch.Tensor, engine: torch.Tensor, data_type: str | None) -> dict[str, Any]:
    """How far engine outputs are from PyTorch's on the same inputs.

    Returns:
        ``max_abs_diff``, ``mean_abs_diff``, ``relative_max_diff`` (over ``max(1, max |ref|)``),
        ``top1_agreement`` for (B, C) outputs, and ``tolerance`` / ``within_tolerance`` for the
        engine's data type (`TOLERANCES`; int8: none, reported only).
    """
    meter = AgreementMeter(data_type)
    meter.add(reference, engine)
    return meter.report()
