"""A tiny backbone exports to ONNX, including the position-table resampling, and matches ONNX Runtime."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from foveal.nn import create_backbone

pytestmark = pytest.mark.unit

ort = pytest.importorskip("onnxruntime")


def _exporters() -> list:
    params = [pytest.param(False, id="torchscript")]
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        params.append(pytest.param(True, id="dynamo"))
    return params


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("dynamo", _exporters())
def test_onnx_export_matches_pytorch(tmp_path: Path, dynamo: bool) -> None:
    if dynamo:
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = create_backbone("vit_t", depth=2, embed_dim=48, num_heads=3, img_size=28, num_register_tokens=2)
    model.eval()
    # A grid (3 x 4) other than the native 2 x 2, so the bicubic resampling is in the graph.
    x = torch.randn(1, 3, 42, 56)
    path = tmp_path / "vit.onnx"
    # torch < 2.5 has only the TorchScript exporter and no ``dynamo`` argument.
    kwargs = {"dynamo": dynamo} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["features"], **kwargs)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert onnx_out.shape == (1, 48)
    assert abs(onnx_out - expected).max() <= 1e-4
