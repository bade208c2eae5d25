"""Build a TensorRT engine from an exported ONNX file (TAO's ``gen_trt_engine`` step).

Needs the ``tensorrt`` Python package and an NVIDIA GPU; without them
`TensorRTUnavailableError` says so and points at ONNX Runtime. Arguments are checked and the
optimization profile is planned from the ONNX file before TensorRT is imported, so mistakes
show up on any machine.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx

from foveal.errors import EncryptionKeyError, EngineBuildError, OnnxFileError, TensorRTUnavailableError
from foveal.export.trt_options import TimingCache, apply_layers_precision, parse_layers_precision

logger = logging.getLogger(__name__)

DATA_TYPES = ("fp32", "fp16", "int8")

Shape = list[int]


def _load_onnx(onnx_file: Path) -> onnx.ModelProto:
    from foveal.export.onnx_runtime import load_onnx_proto

    try:
        return load_onnx_proto(onnx_file)
    except EncryptionKeyError:
        raise
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types
        raise OnnxFileError(
            f"{onnx_file} is not a readable ONNX model ({type(exc).__name__}); "
            "make one with the network's export action"
        ) from None


def _onnx_input_shapes(proto: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Declared input shapes, dynamic dimensions as their names (or ``"?"`` when unnamed)."""
    initializers = {init.name for init in proto.graph.initializer}
    return {
        v.name: [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in v.type.tensor_type.shape.dim
        ]
        for v in proto.graph.input
        if v.name not in initializers
    }


def _onnx_has_qdq(proto: onnx.ModelProto) -> bool:
    return any(node.op_type == "QuantizeLinear" for node in proto.graph.node)


def _non_batch_dims(name: str, declared: list, input_shape, n_inputs: int) -> list[int]:
    """Dims after the batch: static ones from the file, dynamic ones from `input_shape`."""
    if input_shape is None or isinstance(input_shape, Mapping):
        given = (input_shape or {}).get(name)
    elif n_inputs > 1:
        raise ValueError(f"the ONNX file has {n_inputs} inputs: pass input_shape as {{name: dims}}")
    else:
        given = input_shape
    rest = declared[1:]
    if given is None:
        if any(not isinstance(d, int) or d <= 0 for d in rest):
            raise ValueError(f"input '{name}' has dynamic dims {declared}: pass input_shape (without batch)")
        return list(rest)
    given = [int(d) for d in given]
    if len(given) != len(rest) or any(d <= 0 for d in given):
        raise ValueError(
            f"input_shape for '{name}' must be {len(rest)} positive ints (no batch), got {given}"
        )
    for declared_dim, given_dim in zip(rest, given, strict=True):
        if isinstance(declared_dim, int) and declared_dim > 0 and declared_dim != given_dim:
            raise ValueError(
                f"input_shape {given} conflicts with the static shape {declared} of input '{name}'"
            )
    return given


def _check_batches(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if (
        not all(isinstance(b, int) and b >= 1 for b in (min_batch, opt_batch, max_batch))
        or not min_batch <= opt_batch <= max_batch
    ):
        raise ValueError(
            f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}"
        )


def plan_profiles(
    onnx_file: str | os.PathLike | onnx.ModelProto,
    *,
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 1,
    input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
) -> dict[str, dict[str, Shape]]:
    """``{input: {"min": shape, "opt": shape, "max": shape}}`` for the optimization profile.

    Args:
        onnx_file: the exported model (or its loaded ``ModelProto``); dim 0 of every input is the batch.
        min_batch, opt_batch, max_batch: need ``1 <= min <= opt <= max``; ignored (with a
            warning) for inputs whose batch is static in the file.
        input_shape: dims after the batch, e.g. ``(3, 224, 224)``, for a single input, or
            ``{name: dims}``; needed only where the file leaves those dims dynamic.
    """
    batches = {"min": min_batch, "opt": opt_batch, "max": max_batch}
    _check_batches(min_batch, opt_batch, max_batch)
    proto = onnx_file if isinstance(onnx_file, onnx.ModelProto) else _load_onnx(Path(onnx_file))
    declared = _onnx_input_shapes(proto)
    if isinstance(input_shape, Mapping) and set(input_shape) - set(declared):
        raise ValueError(
            f"input_shape names {sorted(set(input_shape) - set(declared))} are not inputs {list(declared)}"
        )
    profiles = {}
    for name, shape in declared.items():
        if not shape:
            raise ValueError(f"input '{name}' is a scalar; TensorRT export needs a batch dimension")
        rest = _non_batch_dims(name, shape, input_shape, len(declared))
        if isinstance(shape[0], int) and shape[0] > 0:
            if set(batches.values()) != {shape[0]} and (min_batch, opt_batch, max_batch) != (1, 1, 1):
                logger.warning(
                    "input '%s' has a static batch of %d; min/opt/max batch are ignored", name, shape[0]
                )
            profiles[name] = {key: [shape[0], *rest] for key in batches}
        else:
            profiles[name] = {key: [batch, *rest] for key, batch in batches.items()}
    return profiles


def _import_tensorrt(onnx_file: Path):
    try:
        import tensorrt
    except ImportError:
        raise TensorRTUnavailableError(
            f"TensorRT is not installed: pip install tensorrt (needs an NVIDIA GPU); "
            f"the ONNX file {onnx_file} can be used with ONNX Runtime meanwhile"
        ) from None
    return tensorrt


def _parse_onnx(trt, builder, trt_logger, onnx_file: Path):
    """``(network, parser)``; the parser owns weights the network refers to, so keep both."""
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # TensorRT 10 is always explicit-batch
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    from foveal.export.onnx_runtime import session_source

    source = session_source(onnx_file)  # an encrypted file is parsed from its decrypted bytes
    parsed = parser.parse(source) if isinstance(source, bytes) else parser.parse_from_file(source)
    if not parsed:  # from the file when plain, so that external data resolves
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_file}: {errors}")
    return network, parser


def _builder_config(trt, builder, data_type: str, workspace_bytes: int, int8_calibrator):
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    else:  # TensorRT < 8.4
        config.max_workspace_size = workspace_bytes
    if data_type == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default; fp32 engines match PyTorch
    if data_type in ("fp16", "int8"):
        if not getattr(builder, "platform_has_fast_fp16", True):
            logger.warning("this GPU has no fast fp16; TensorRT may pick slower kernels")
        config.set_flag(trt.BuilderFlag.FP16)  # int8 layers without scales fall back to fp16
    if data_type == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if int8_calibrator is not None:
            config.int8_calibrator = int8_calibrator
    return config


def _add_profile(builder, network, config, profiles: dict[str, dict[str, Shape]]) -> None:
    """One optimization profile covering every input with a dynamic dimension."""
    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(d < 0 for d in tensor.shape):
            shapes = profiles[tensor.name]
            profile.set_shape(tensor.name, shapes["min"], shapes["opt"], shapes["max"])
            dynamic = True
    if dynamic:
        config.add_optimization_profile(profile)


def _write_atomically(data, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build_trt_engine(
    onnx_file: str | os.PathLike,
    engine_file: str | os.PathLike,
    *,
    data_type: str = "fp16",
    workspace_size_mb: int = 1024,
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 1,
    input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    int8_calibrator=None,
    layers_precision: Sequence[str] = (),
    timing_cache: str | os.PathLike | None = None,
    verbose: bool = False,
) -> dict:
    """Build and serialize a TensorRT engine; written atomically.

    Args:
        onnx_file: from `export_onnx`.
        engine_file: destination of the serialized engine.
        data_type: ``"fp32"``, ``"fp16"`` or ``"int8"`` (int8 needs `int8_calibrator`, a
            ``tensorrt.IInt8Calibrator``, unless the file has Q/DQ nodes).
        workspace_size_mb: builder workspace memory pool.
        min_batch, opt_batch, max_batch, input_shape: see `plan_profiles`.
        layers_precision: ``"<layer>:<precision>"`` entries (:mod:`foveal.export.trt_options`),
            applied when ``data_type`` is not fp32.
        timing_cache: a timing-cache file, read when it exists and written after the build.
        verbose: TensorRT's verbose log.

    Returns:
        ``engine_file``, ``onnx_file``, ``data_type``, ``tensorrt_version``, ``profiles``,
        ``workspace_size_mb``, ``file_size_bytes``, ``seconds``, ``metadata_file`` (``<engine>.json``:
        this and the ONNX file's metadata, read by evaluate / inference on the engine).

    Raises:
        TensorRTUnavailableError: ``tensorrt`` is not installed.
        EngineBuildError: parsing or building failed.
    """
    start = time.perf_counter()
    onnx_file, engine_file = Path(onnx_file), Path(engine_file)
    if data_type not in DATA_TYPES:
        raise ValueError(f"data_type must be one of {DATA_TYPES}, got {data_type!r}")
    if not isinstance(workspace_size_mb, int) or workspace_size_mb <= 0:
        raise ValueError(f"workspace_size_mb must be a positive int, got {workspace_size_mb!r}")
    if not onnx_file.is_file():
        raise OnnxFileError(f"ONNX file not found: {onnx_file}")
    _check_batches(min_batch, opt_batch, max_batch)
    proto = _load_onnx(onnx_file)  # read once: Q/DQ nodes, input shapes, and the metadata for <engine>.json
    if data_type == "int8" and int8_calibrator is None and not _onnx_has_qdq(proto):
        raise ValueError("data_type 'int8' needs an int8_calibrator or an ONNX file with Q/DQ nodes")
    precisions = parse_layers_precision(layers_precision)
    profiles = plan_profiles(
        proto, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, input_shape=input_shape
    )
    onnx_metadata = {p.key: p.value for p in proto.metadata_props}
    del proto  # the parser reads the file itself: do not hold a second copy through the build
    trt = _import_tensorrt(onnx_file)
    trt_logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    if callable(int8_calibrator):  # a factory that needs the tensorrt module (image calibration)
        int8_calibrator = int8_calibrator(trt)
    builder = trt.Builder(trt_logger)
    network, _parser = _parse_onnx(trt, builder, trt_logger, onnx_file)
    config = _builder_config(trt, builder, data_type, workspace_size_mb * 2**20, int8_calibrator)
    _add_profile(builder, network, config, profiles)
    if data_type != "fp32":
        set_count = apply_layers_precision(trt, network, config, precisions)
        if set_count:
            logger.info("tensorrt.layers_precision: %d layers constrained", set_count)
    elif precisions:
        logger.warning("tensorrt.layers_precision applies to fp16/int8 engines; this fp32 engine ignores it")
    cache = TimingCache(Path(timing_cache) if timing_cache is not None else None)
    cache.attach(config)
    logger.info("building a %s TensorRT %s engine from %s", data_type, trt.__version__, onnx_file)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT failed to build an engine from {onnx_file}; see the TensorRT log above"
        )
    _write_atomically(serialized, engine_file)
    cache.save(config)
    info = {
        "engine_file": str(engine_file),
        "onnx_file": str(onnx_file),
        "data_type": data_type,
        "tensorrt_version": trt.__version__,
        "profiles": profiles,
        "workspace_size_mb": workspace_size_mb,
        "file_size_bytes": engine_file.stat().st_size,
        "seconds": time.perf_counter() - start,
    }
    from foveal.export.trt_runtime import write_engine_metadata

    info["metadata_file"] = str(write_engine_metadata(engine_file, info, onnx_metadata))
    return info
