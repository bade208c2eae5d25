"""OnnxPredictor: metadata round trip, input handling, parity with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from foveal.errors import OnnxFileError
from foveal.export import OnnxPredictor, export_onnx

pytestmark = pytest.mark.unit

METADATA = {
    "network": "tiny_vit",
    "class_names": ["cat", "dog", "fox", "owl", "yak"],
    "input_size": [3, 48, 48],
    "mean": "0.485,0.456,0.406",
    "std": "0.229,0.224,0.225",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, make_tiny_vit, images):
    model = make_tiny_vit(return_dict=True)
    report = export_onnx(model, images, tmp_path_factory.mktemp("onnx") / "vit.onnx", metadata=METADATA)
    return model, report


def test_metadata_round_trips_through_the_file(exported):
    _, report = exported
    predictor = OnnxPredictor(report.onnx_file)

    assert predictor.metadata == report.metadata
    assert predictor.metadata["network"] == "tiny_vit" and predictor.metadata["mean"] == METADATA["mean"]
    assert json.loads(predictor.metadata["class_names"]) == METADATA["class_names"]
    assert json.loads(predictor.metadata["input_size"]) == [3, 48, 48]
    assert predictor.providers[-1] == "CPUExecutionProvider"


def test_names_shapes_and_outputs_match_pytorch(exported):
    model, report = exported
    predictor = OnnxPredictor(report.onnx_file, providers=["CPUExecutionProvider"])
    assert predictor.input_names == ["input"] and predictor.input_shapes == {"input": ["batch", 3, 48, 48]}
    assert predictor.output_names == ["logits", "embedding"]
    assert predictor.output_shapes == {"logits": ["batch", 5], "embedding": ["batch", 32]}

    images = np.random.default_rng(0).standard_normal((4, 3, 48, 48))  # float64: cast to float32
    outputs = predictor.run(images)
    with torch.no_grad():
        expected = model(torch.from_numpy(images).float())
    assert list(outputs) == ["logits", "embedding"] and outputs["logits"].dtype == np.float32
    for name in outputs:
        np.testing.assert_allclose(outputs[name], expected[name].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(predictor.run({"input": images})["logits"], outputs["logits"])
    np.testing.assert_array_equal(predictor.run([images])["logits"], outputs["logits"])


def test_wrong_inputs_are_reported_by_name(exported, tmp_path):
    predictor = OnnxPredictor(exported[1].onnx_file)
    images = np.zeros((1, 3, 48, 48), np.float32)
    with pytest.raises(ValueError, match="unknown \\['images'\\], missing \\['input'\\]"):
        predictor.run({"images": images})
    with pytest.raises(ValueError, match="takes 1 inputs"):
        predictor.run([images, images])
    with pytest.raises(OnnxFileError, match="missing.onnx"):
        OnnxPredictor(tmp_path / "missing.onnx")
