"""A stand-in ``tensorrt`` module that builds and runs engines with ONNX Runtime on the CPU.

The builder parses the ONNX file, honours the optimization profile, drives an INT8 calibrator
through every batch it gives (reading the image memory at the addresses it returns) and
"serializes" an engine that is the ONNX bytes behind a small JSON header. The runtime
deserializes it and executes by reading its inputs from, and writing its outputs to, the raw
addresses bound with ``set_tensor_address``, so the binding code of `TrtPredictor` is exercised
for real. An fp16 engine rounds its outputs to half precision. Install with `install(monkeypatch)`.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

MAGIC = b"FAKETRT1\n"
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def _session(onnx_bytes: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


def _dims(shape: list) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in shape)


def _read(address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffer = (ctypes.c_char * count).from_address(address)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape).copy()


def build(trt_version: str = "10.3.0") -> tuple[types.ModuleType, dict]:
    """(module, calls): ``calls`` records flags, profiles, calibration batches and cache use."""
    calls: dict[str, Any] = {"flags": [], "cleared": [], "profiles": {}, "calibration_batches": []}
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # libraries probing find_spec
    trt.__version__ = trt_version
    trt.float32, trt.float16, trt.int8, trt.int32 = np.float32, np.float16, np.int8, np.int32
    trt.nptype = lambda dtype: dtype
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(
        FP16="FP16", INT8="INT8", TF32="TF32", PREFER_PRECISION_CONSTRAINTS="PREFER", OBEY_PRECISION_CONSTRAINTS="OBEY"
    )

    class Logger:
        WARNING, VERBOSE = "warning", "verbose"

        def __init__(self, level: str) -> None:
            self.level = level

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass

    class Network:
        def __init__(self) -> None:
            self.onnx: bytes = b""
            self.inputs: list[Any] = []
            self.num_layers = 0

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Any:
            return self.inputs[i]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network

        def parse(self, model: bytes) -> bool:
            self.network.onnx = bytes(model)
            session = _session(self.network.onnx)
            self.network.inputs = [types.SimpleNamespace(name=i.name, shape=_dims(i.shape)) for i in session.get_inputs()]
            return True

        def parse_from_file(self, path: str) -> bool:
            return self.parse(Path(path).read_bytes())

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
            self.shapes[name] = (list(low), list(opt), list(high))
            calls["profiles"][name] = self.shapes[name]

    class Config:
        int8_calibrator = None

        def __init__(self) -> None:
            self.flags: set[str] = set()
            self.profile: Profile | None = None

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            calls["workspace"] = size

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)
            calls["flags"].append(flag)

        def clear_flag(self, flag: str) -> None:
            self.flags.discard(flag)
            calls["cleared"].append(flag)

        def add_optimization_profile(self, profile: Profile) -> None:
            self.profile = profile

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            calibrator = config.int8_calibrator
            if "INT8" in config.flags and calibrator is not None:
                self._calibrate(network, calibrator)
            profiles = config.profile.shapes if config.profile else {}
            header = {"fp16": "FP16" in config.flags, "profiles": profiles}
            return MAGIC + json.dumps(header).encode() + b"\n" + network.onnx

        @staticmethod
        def _calibrate(network: Network, calibrator: Any) -> None:
            cache = calibrator.read_calibration_cache()
            if cache:
                calls["calibration_cache_read"] = bytes(cache)
                return
            shape = [d for d in network.inputs[0].shape]
            shape[0] = calibrator.get_batch_size()
            while (pointers := calibrator.get_batch([network.inputs[0].name])) is not None:
                batch = _read(pointers[0], tuple(shape), np.float32)
                calls["calibration_batches"].append((batch.shape, float(batch.mean())))
            calibrator.write_calibration_cache(b"fake-calibration-table")

    class Engine:
        def __init__(self, header: dict, onnx_bytes: bytes) -> None:
            self.header, self.session = header, _session(onnx_bytes)
            self.io = [(i.name, "input", i) for i in self.session.get_inputs()]
            self.io += [(o.name, "output", o) for o in self.session.get_outputs()]

        @property
        def num_io_tensors(self) -> int:
            return len(self.io)

        def get_tensor_name(self, i: int) -> str:
            return self.io[i][0]

        def _meta(self, name: str) -> Any:
            return next(entry for entry in self.io if entry[0] == name)

        def get_tensor_mode(self, name: str) -> str:
            return self._meta(name)[1]

        def get_tensor_dtype(self, name: str) -> Any:
            return _ORT_TYPES[self._meta(name)[2].type]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return _dims(self._meta(name)[2].shape)

        def get_tensor_profile_shape(self, name: str, index: int) -> tuple:
            return tuple(tuple(s) for s in self.header["profiles"][name])

        def create_execution_context(self) -> Context:
            return Context(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            low, _, high = self.engine.get_tensor_profile_shape(name, 0)
            if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)):
                raise AssertionError(f"shape {shape} outside the profile {low}..{high}")  # TensorRT refuses
            self.shapes[name] = tuple(shape)
            return True

        def _input_shape(self, name: str) -> tuple[int, ...]:
            return self.shapes.get(name) or self.engine.get_tensor_shape(name)

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            if self.engine.get_tensor_mode(name) == "input":
                return self._input_shape(name)
            batch = self._input_shape(self.engine.io[0][0])[0]
            return tuple(batch if d < 0 else d for d in self.engine.get_tensor_shape(name))

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream: int) -> bool:
            calls["executions"] = calls.get("executions", 0) + 1
            feeds = {}
            for name, mode, meta in self.engine.io:
                if mode == "input":
                    feeds[name] = _read(self.addresses[name], self._input_shape(name), _ORT_TYPES[meta.type])
            results = self.engine.session.run(None, feeds)
            outputs = [entry for entry in self.engine.io if entry[1] == "output"]
            for (name, _, meta), value in zip(outputs, results, strict=True):
                value = np.ascontiguousarray(value, dtype=_ORT_TYPES[meta.type])
                if self.engine.header["fp16"]:
                    value = value.astype(np.float16).astype(value.dtype)
                assert value.shape == self.get_tensor_shape(name), (value.shape, self.get_tensor_shape(name))
                ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
            return True

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            if not data.startswith(MAGIC):
                return None
            header, _, onnx_bytes = data[len(MAGIC) :].partition(b"\n")
            return Engine(json.loads(header), onnx_bytes)

    for item in (Logger, IInt8EntropyCalibrator2, OnnxParser, Builder, Runtime):
        setattr(trt, item.__name__, item)
    return trt, calls


def install(monkeypatch: Any, trt_version: str = "10.3.0") -> dict:
    """Put the fake in ``sys.modules['tensorrt']`` for one test; returns its ``calls``."""
    trt, calls = build(trt_version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return calls
