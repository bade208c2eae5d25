"""TAO-Deploy's gen_trt_engine keys reach the engine builder (a recording fake here; the real
TensorRT runs in the device check of issue 18), and the builder options work on fake TensorRT
objects: per-layer precision, the timing cache, INT8 calibration from images or a cache."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from PIL import Image

from foveal.errors import EngineBuildError, SpecError
from foveal.export.trt_options import (
    CalibrationSettings,
    TimingCache,
    apply_layers_precision,
    calibration_images,
    make_calibrator,
    parse_layers_precision,
)
from foveal.networks.classification.actions import gen_trt_engine
from foveal.networks.classification.config import ClassificationConfig
from foveal.spec.loader import load_spec

pytestmark = pytest.mark.unit


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    """A static (1, 3, 32, 32)-input ONNX file and a recording build_trt_engine."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 32, 32])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    seen: dict = {}

    def fake_build(onnx_file, engine, **kwargs):
        seen.update(kwargs, onnx_file=onnx_file, engine=engine)
        return {"data_type": kwargs["data_type"]}

    monkeypatch.setattr("foveal.export.tensorrt.build_trt_engine", fake_build)
    return tmp_path / "m.onnx", seen


def _run(tmp_path, onnx_file, *overrides):
    cfg = load_spec(ClassificationConfig, None, [f"gen_trt_engine.onnx_file={onnx_file}", *overrides])
    return gen_trt_engine(cfg, types.SimpleNamespace(results_dir=tmp_path))


def test_tao_deploy_keys_reach_the_builder(tmp_path, recorded):
    onnx_file, seen = recorded
    _run(
        tmp_path,
        onnx_file,
        "gen_trt_engine.tensorrt.data_type=FP16",
        "gen_trt_engine.tensorrt.layers_precision=['/head/Gemm:fp32', '*:fp16']",
        f"gen_trt_engine.timing_cache={tmp_path / 'cache.bin'}",
        "gen_trt_engine.verbose=true",
        "gen_trt_engine.tensorrt.workspace_size=2048",
        "gen_trt_engine.tensorrt.min_batch_size=1",
        "gen_trt_engine.tensorrt.opt_batch_size=4",
        "gen_trt_engine.tensorrt.max_batch_size=8",
    )
    assert seen["data_type"] == "fp16" and seen["workspace_size_mb"] == 2048
    assert seen["layers_precision"] == ["/head/Gemm:fp32", "*:fp16"]
    assert seen["timing_cache"] == str(tmp_path / "cache.bin") and seen["verbose"] is True
    assert (seen["min_batch"], seen["opt_batch"], seen["max_batch"]) == (1, 4, 8)
    assert seen["input_shape"] is None and seen["int8_calibrator"] is None  # the file's own size
    assert Path(seen["engine"]) == tmp_path / "classification.engine"


def test_batch_size_fixes_the_profile_and_sizes_come_in_pairs(tmp_path, recorded):
    onnx_file, seen = recorded
    _run(tmp_path, onnx_file, "gen_trt_engine.batch_size=2", "gen_trt_engine.tensorrt.max_batch_size=16")
    assert (seen["min_batch"], seen["opt_batch"], seen["max_batch"]) == (2, 2, 2)
    _run(tmp_path, onnx_file, "gen_trt_engine.input_height=64", "gen_trt_engine.input_width=48")
    assert seen["input_shape"] == (3, 64, 48)
    with pytest.raises(SpecError, match="gen_trt_engine.input_width: empty while the other input side is set"):
        _run(tmp_path, onnx_file, "gen_trt_engine.input_height=64")
    with pytest.raises(SpecError, match="needs min_batch_size <= opt_batch_size <= max_batch_size"):
        _run(tmp_path, onnx_file, "gen_trt_engine.tensorrt.opt_batch_size=4")
    with pytest.raises(SpecError, match="gen_trt_engine.tensorrt.layers_precision: .*precision must be one of"):
        _run(tmp_path, onnx_file, "gen_trt_engine.tensorrt.data_type=fp16",
             "gen_trt_engine.tensorrt.layers_precision=['conv:fp8']")  # fmt: skip


def test_int8_needs_calibration_and_gets_a_calibrator_factory(tmp_path, recorded):
    onnx_file, seen = recorded
    with pytest.raises(SpecError, match="int8 needs calibration images or a calibration cache"):
        _run(tmp_path, onnx_file, "gen_trt_engine.tensorrt.data_type=int8")
    images = tmp_path / "cal"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 20), (i * 60, 0, 0)).save(images / f"{i}.png")
    _run(
        tmp_path,
        onnx_file,
        "gen_trt_engine.tensorrt.data_type=int8",
        f"gen_trt_engine.tensorrt.calibration.cal_image_dir=['{images}']",
        "gen_trt_engine.tensorrt.calibration.cal_batch_size=2",
        "gen_trt_engine.tensorrt.calibration.cal_batches=2",
    )
    factory = seen["int8_calibrator"]
    assert callable(factory)
    trt = types.SimpleNamespace(IInt8EntropyCalibrator2=object)
    calibrator = factory(trt)
    assert calibrator.get_batch_size() == 2
    assert calibrator.read_calibration_cache() is None  # no cache yet: the images are read


def test_calibration_reads_a_cache_without_images_and_counts_images(tmp_path):
    cache = tmp_path / "cal.bin"
    cache.write_bytes(b"scales")
    settings = CalibrationSettings(("/nowhere",), str(cache), batch_size=8, batches=4)
    calibrator = make_calibrator(types.SimpleNamespace(IInt8EntropyCalibrator2=object), settings, None)
    assert calibrator.read_calibration_cache() == b"scales" and calibrator.get_batch(["input"]) is None
    calibrator.write_calibration_cache(b"new")
    assert cache.read_bytes() == b"new"
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    with pytest.raises(EngineBuildError, match="1 images in .* but cal_batches x cal_batch_size = 4"):
        calibration_images(CalibrationSettings((str(folder),), str(tmp_path / "x.bin"), 2, 2))
    with pytest.raises(EngineBuildError, match="is not a folder"):
        calibration_images(CalibrationSettings((str(tmp_path / "missing"),), "c", 1, 1))


def test_layers_precision_and_timing_cache_on_fake_tensorrt(tmp_path):
    assert parse_layers_precision(["a:b:FP16", "*:fp32"]) == {"a:b": "fp16", "*": "fp32"}
    with pytest.raises(ValueError, match="is not '<layer name>:<precision>'"):
        parse_layers_precision(["conv"])

    layers = [types.SimpleNamespace(name=n, precision=None) for n in ("conv", "relu", "fc")]
    network = types.SimpleNamespace(num_layers=3, get_layer=lambda i: layers[i])
    flags: list = []
    config = types.SimpleNamespace(set_flag=flags.append)
    trt = types.SimpleNamespace(
        float32="f32", float16="f16", int8="i8", int32="i32",
        BuilderFlag=types.SimpleNamespace(PREFER_PRECISION_CONSTRAINTS="prefer"),
    )  # fmt: skip
    assert apply_layers_precision(trt, network, config, {"fc": "fp32", "*": "fp16"}) == 3
    assert [layer.precision for layer in layers] == ["f16", "f16", "f32"] and flags == ["prefer"]
    with pytest.raises(EngineBuildError, match="layers the network does not have: head"):
        apply_layers_precision(trt, network, config, {"head": "fp32"})

    class Cache:
        def __init__(self, data: bytes):
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+timed"

    store: dict = {}
    builder_config = types.SimpleNamespace(
        create_timing_cache=lambda data: Cache(data),
        set_timing_cache=lambda cache, ignore_mismatch: store.update(cache=cache),
        get_timing_cache=lambda: store["cache"],
    )
    path = tmp_path / "sub" / "timing.cache"
    for expected in (b"+timed", b"+timed+timed"):  # a second build starts from the first's cache
        timing = TimingCache(path)
        timing.attach(builder_config)
        timing.save(builder_config)
        assert path.read_bytes() == expected
