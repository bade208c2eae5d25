"""TrtPredictor, the engine sidecar and INT8 calibration, on the ONNX Runtime-backed fake TensorRT
(tests/fake_tensorrt.py): engines really are built from the ONNX file and run through the raw
addresses TrtPredictor binds; the real TensorRT runs in tests/gpu (bench/device_check.sh)."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from foveal.errors import EngineFileError, TensorRTUnavailableError
from foveal.export import build_trt_engine
from foveal.export.onnx_runtime import OnnxPredictor
from foveal.export.trt_runtime import TOLERANCES, TrtPredictor, agreement, engine_metadata

pytestmark = pytest.mark.unit


def _pooled_linear(path, batch="batch", metadata=None):
    """(B, 3, 8, 8) -> global average -> (B, 4) logits, with metadata like an export's."""
    weight = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32) * 3
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "weight"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pooled_linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])],
        initializer=[numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (metadata or {"network": "toy", "classes": '["a", "b", "c", "d"]'}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def _images(n, seed=1):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_an_engine_runs_any_batch_in_profile_sized_chunks(tmp_path, fake_tensorrt):
    onnx_file = _pooled_linear(tmp_path / "m.onnx")
    info = build_trt_engine(onnx_file, tmp_path / "m.engine", data_type="fp32", min_batch=1, opt_batch=2, max_batch=3)
    assert fake_tensorrt["cleared"] == ["TF32"]  # fp32 engines do not round through TF32
    predictor = TrtPredictor(tmp_path / "m.engine", device="cpu")
    assert predictor.input_names == ["input"] and predictor.output_names == ["logits"]
    assert predictor.batch_range == (1, 3) and predictor.data_type == "fp32"

    images = _images(7)
    got = predictor.run(images)["logits"]
    expected = OnnxPredictor(onnx_file).run(images.numpy())["logits"]
    assert fake_tensorrt["executions"] == 3  # 3 + 3 + 1
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)
    assert info["metadata_file"] == str(tmp_path / "m.engine.json")
    meta = engine_metadata(tmp_path / "m.engine")
    assert meta["metadata"]["classes"] == '["a", "b", "c", "d"]' and meta["profiles"]["input"]["max"] == [3, 3, 8, 8]


def test_a_static_batch_engine_pads_the_last_chunk(tmp_path, fake_tensorrt):
    onnx_file = _pooled_linear(tmp_path / "m.onnx", batch=4)
    build_trt_engine(onnx_file, tmp_path / "m.engine", data_type="fp32")
    predictor = TrtPredictor(tmp_path / "m.engine", device="cpu")
    assert predictor.batch_range == (4, 4)
    images = _images(6)
    got = predictor.run(images)["logits"]
    reference = images.mean(dim=(2, 3)) @ torch.from_numpy(numpy_helper.to_array(onnx.load(str(onnx_file)).graph.initializer[0]).copy())
    assert got.shape == (6, 4)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)


def test_fp16_agreement_is_within_its_stated_tolerance_and_fp32_is_exact(tmp_path, fake_tensorrt):
    onnx_file = _pooled_linear(tmp_path / "m.onnx")
    images = _images(16)
    reference = torch.from_numpy(OnnxPredictor(onnx_file).run(images.numpy())["logits"])
    reports = {}
    for data_type in ("fp32", "fp16"):
        build_trt_engine(onnx_file, tmp_path / f"{data_type}.engine", data_type=data_type, max_batch=8)
        predictor = TrtPredictor(tmp_path / f"{data_type}.engine", device="cpu")
        reports[data_type] = agreement(reference, predictor.run(images)["logits"], predictor.data_type)
    assert reports["fp32"]["max_abs_diff"] < 1e-6 and reports["fp32"]["within_tolerance"]
    assert 0 < reports["fp16"]["relative_max_diff"] <= TOLERANCES["fp16"] and reports["fp16"]["within_tolerance"]
    assert reports["fp16"]["top1_agreement"] == 1.0
    assert agreement(reference, reference + 1.0, "fp16")["within_tolerance"] is False
    assert agreement(reference, reference, "int8")["within_tolerance"] is None  # reported, not judged
    with pytest.raises(ValueError, match="differ in shape"):
        agreement(reference, reference[:2], "fp32")


def test_bad_engine_files_and_inputs_get_one_line(tmp_path, fake_tensorrt, monkeypatch):
    with pytest.raises(EngineFileError, match="engine not found: .*nothing.engine; build one with"):
        TrtPredictor(tmp_path / "nothing.engine", device="cpu")
    (tmp_path / "other.engine").write_bytes(b"built by another TensorRT")
    with pytest.raises(EngineFileError, match="not an engine TensorRT 10.3.0 can load .*rebuild it"):
        TrtPredictor(tmp_path / "other.engine", device="cpu")
    build_trt_engine(_pooled_linear(tmp_path / "m.onnx"), tmp_path / "m.engine", data_type="fp32", max_batch=2)
    predictor = TrtPredictor(tmp_path / "m.engine", device="cpu")
    with pytest.raises(ValueError, match=r"input 'input' of m.engine is \[-1, 3, 8, 8\]"):
        predictor.run(torch.zeros(2, 3, 16, 16))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TensorRTUnavailableError, match="m.engine cannot run here: pip install 'foveal\\[tensorrt\\]'"):
        TrtPredictor(tmp_path / "m.engine", device="cpu")


def test_int8_calibration_reads_its_batches_then_reuses_the_cache(tmp_path, fake_tensorrt):
    import tensorrt

    from foveal.export.trt_options import CalibrationSettings, make_calibrator

    folder = tmp_path / "cal"
    folder.mkdir()
    for i in range(7):
        Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(folder / f"{i}.png")

    def preprocess(path):
        with Image.open(path) as image:
            return torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 255).permute(2, 0, 1)

    onnx_file = _pooled_linear(tmp_path / "m.onnx")
    settings = CalibrationSettings((str(folder),), str(tmp_path / "cal.bin"), batch_size=3, batches=2)
    build_trt_engine(
        onnx_file, tmp_path / "a.engine", data_type="int8", max_batch=3,
        int8_calibrator=lambda trt: make_calibrator(trt, settings, preprocess),
    )  # fmt: skip
    batches = fake_tensorrt["calibration_batches"]
    assert [shape for shape, _ in batches] == [(3, 3, 8, 8), (3, 3, 8, 8)]  # cal_batches x cal_batch_size
    assert batches[0][1] == pytest.approx(20 / 255)  # images 0, 1, 2: the bytes the calibrator handed over
    assert (tmp_path / "cal.bin").read_bytes() == b"fake-calibration-table"

    for image in folder.iterdir():
        image.unlink()  # the cache alone is enough now
    build_trt_engine(onnx_file, tmp_path / "b.engine", data_type="int8", max_batch=3,
                     int8_calibrator=make_calibrator(tensorrt, settings, None))  # fmt: skip
    assert fake_tensorrt["calibration_cache_read"] == b"fake-calibration-table"
    assert len(fake_tensorrt["calibration_batches"]) == 2
