"""build_trt_engine without TensorRT: the unavailable error, argument checks, profile planning,
and the builder control flow against a fake ``tensorrt`` module (monkeypatched into sys.modules;
it records calls, it does not build anything)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from foveal.errors import EncryptionKeyError, OnnxFileError
from foveal.export import EngineBuildError, TensorRTUnavailableError, build_trt_engine, plan_profiles

pytestmark = pytest.mark.unit


def _identity_onnx(path, dims, name="input", qdq=False):
    """A one-node ONNX file whose input has `dims` (ints static, strings dynamic)."""
    nodes = [helper.make_node("Identity", [name], ["output"])]
    initializers = []
    if qdq:
        initializers = [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1])]
        nodes = [
            helper.make_node("QuantizeLinear", [name, "scale"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "scale"], ["output"]),
        ]
    graph = helper.make_graph(
        nodes,
        "identity",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, dims)],
        initializer=initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def dynamic_onnx(tmp_path):
    return _identity_onnx(tmp_path / "model.onnx", ["batch", 3, 48, 48])


def test_missing_tensorrt_raises_one_helpful_line(dynamic_onnx, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    with pytest.raises(TensorRTUnavailableError) as caught:
        build_trt_engine(dynamic_onnx, tmp_path / "model.engine", max_batch=4)
    assert str(caught.value) == (
        "TensorRT is not installed: pip install tensorrt (needs an NVIDIA GPU); "
        f"the ONNX file {dynamic_onnx} can be used with ONNX Runtime meanwhile"
    )
    assert not (tmp_path / "model.engine").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"data_type": "bf16"}, ValueError, "data_type must be one of"),
        ({"workspace_size_mb": 0}, ValueError, "workspace_size_mb"),
        ({"min_batch": 0}, ValueError, "1 <= min_batch <= opt_batch <= max_batch"),
        ({"min_batch": 4, "opt_batch": 2, "max_batch": 8}, ValueError, "got 4, 2, 8"),
        ({"opt_batch": 16, "max_batch": 8}, ValueError, "got 1, 16, 8"),
        ({"data_type": "int8"}, ValueError, "int8_calibrator"),
        ({"input_shape": (3, 64, 64)}, ValueError, "conflicts with the static shape"),
        ({"input_shape": (3, 48)}, ValueError, "must be 3 positive ints"),
        ({"input_shape": {"images": (3, 48, 48)}}, ValueError, "are not inputs"),
    ],
)
def test_bad_arguments_fail_before_tensorrt_is_needed(
    dynamic_onnx, tmp_path, monkeypatch, kwargs, error, match
):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(error, match=match):
        build_trt_engine(dynamic_onnx, tmp_path / "model.engine", **kwargs)


def test_missing_onnx_file(tmp_path):
    with pytest.raises(OnnxFileError, match="nothing.onnx"):
        build_trt_engine(tmp_path / "nothing.onnx", tmp_path / "model.engine")


def test_profiles_for_dynamic_and_static_inputs(tmp_path):
    dynamic = _identity_onnx(tmp_path / "dynamic.onnx", ["batch", 3, "height", "width"])
    assert plan_profiles(dynamic, min_batch=1, opt_batch=4, max_batch=8, input_shape=(3, 224, 224)) == {
        "input": {"min": [1, 3, 224, 224], "opt": [4, 3, 224, 224], "max": [8, 3, 224, 224]}
    }
    with pytest.raises(ValueError, match="dynamic dims .* pass input_shape"):
        plan_profiles(dynamic, max_batch=8)

    static = _identity_onnx(tmp_path / "static.onnx", [2, 3, 48, 48])
    assert plan_profiles(static) == {"input": {key: [2, 3, 48, 48] for key in ("min", "opt", "max")}}


def _fake_tensorrt(version="10.3.0", parse_ok=True, engine=b"serialized-engine", input_shape=(-1, 3, 48, 48),
                   input_name="input"):  # fmt: skip
    """A stand-in for the ``tensorrt`` module that records what the builder was asked to do."""
    calls: dict = {"flags": [], "profiles": {}}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING = "warning"

        def __init__(self, level):
            calls["log_level"] = level

    class Network:
        num_inputs = 1

        def get_input(self, i):
            return types.SimpleNamespace(name=input_name, shape=input_shape)

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"] = path
            return parse_ok

        def parse(self, model_bytes):
            calls["parsed_bytes"] = model_bytes
            return parse_ok

        def get_error(self, i):
            return "In node 0: unsupported operator Foo"

    class Profile:
        def set_shape(self, name, min_shape, opt_shape, max_shape):
            calls["profiles"][name] = (list(min_shape), list(opt_shape), list(max_shape))

    class Config:
        int8_calibrator = None

        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = (pool, size)

        def set_flag(self, flag):
            calls["flags"].append(flag)

        def add_optimization_profile(self, profile):
            calls["profile_added"] = True

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            calls["config"] = Config()
            return calls["config"]

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return engine

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8")
    return trt, calls


def test_engine_build_flow_with_a_dynamic_batch(dynamic_onnx, tmp_path, monkeypatch):
    trt, calls = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    result = build_trt_engine(
        dynamic_onnx,
        tmp_path / "out" / "model.engine",
        workspace_size_mb=512,
        min_batch=1,
        opt_batch=4,
        max_batch=8,
    )

    assert (tmp_path / "out" / "model.engine").read_bytes() == b"serialized-engine"
    assert calls["parsed"] == str(dynamic_onnx) and calls["network_flags"] == 0  # TensorRT 10: explicit batch
    assert calls["workspace"] == ("workspace", 512 * 2**20) and calls["flags"] == ["FP16"]
    assert calls["profiles"] == {"input": ([1, 3, 48, 48], [4, 3, 48, 48], [8, 3, 48, 48])}
    assert calls["profile_added"]
    assert result["tensorrt_version"] == "10.3.0" and result["data_type"] == "fp16"
    assert result["file_size_bytes"] == len(b"serialized-engine")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.engine", "model.engine.json"]


def test_tensorrt_8_gets_the_explicit_batch_flag_and_int8_its_calibrator(tmp_path, monkeypatch):
    onnx_file = _identity_onnx(tmp_path / "static.onnx", [2, 3, 48, 48])
    trt, calls = _fake_tensorrt(version="8.6.1", input_shape=(2, 3, 48, 48))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    calibrator = object()
    build_trt_engine(onnx_file, tmp_path / "model.engine", data_type="int8", int8_calibrator=calibrator)

    assert calls["network_flags"] == 1 << 0
    assert calls["flags"] == ["FP16", "INT8"] and calls["config"].int8_calibrator is calibrator
    assert calls["profiles"] == {} and "profile_added" not in calls  # static shapes need no profile


def test_int8_without_a_calibrator_is_allowed_for_qdq_models(tmp_path, monkeypatch):
    onnx_file = _identity_onnx(tmp_path / "qdq.onnx", ["batch", 3, 48, 48], qdq=True)
    trt, calls = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    build_trt_engine(onnx_file, tmp_path / "model.engine", data_type="int8", max_batch=2)
    assert calls["flags"] == ["FP16", "INT8"] and calls["config"].int8_calibrator is None


def test_parser_errors_are_reported(dynamic_onnx, tmp_path, monkeypatch):
    trt, _ = _fake_tensorrt(parse_ok=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(EngineBuildError, match="could not parse .*unsupported operator Foo"):
        build_trt_engine(dynamic_onnx, tmp_path / "model.engine")


def test_a_failed_build_keeps_the_previous_engine(dynamic_onnx, tmp_path, monkeypatch):
    (tmp_path / "model.engine").write_bytes(b"previous engine")
    trt, _ = _fake_tensorrt(engine=None)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(EngineBuildError, match="failed to build"):
        build_trt_engine(dynamic_onnx, tmp_path / "model.engine")
    assert (tmp_path / "model.engine").read_bytes() == b"previous engine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine", "model.onnx"]


def test_an_encrypted_onnx_file_is_parsed_from_its_decrypted_bytes(dynamic_onnx, tmp_path, monkeypatch):
    from foveal import secrets

    plain = Path(dynamic_onnx).read_bytes()
    sealed = tmp_path / "sealed.onnx"
    sealed.write_bytes(secrets.encrypt_bytes(plain, "k"))
    trt, calls = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.delenv(secrets.ENV_KEY, raising=False)
    with pytest.raises(EncryptionKeyError, match="sealed.onnx is encrypted"):
        build_trt_engine(sealed, tmp_path / "a.engine")
    with secrets.key_scope("k"):
        build_trt_engine(sealed, tmp_path / "b.engine")
    assert calls["parsed_bytes"] == plain and "parsed" not in calls
