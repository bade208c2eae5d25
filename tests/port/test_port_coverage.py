"""The port of classifier variants: a backbone folder (feature extraction) and another input size.

The whole image-classification mapping is ported in ``test_port_task_coverage.py``."""

from __future__ import annotations

import json

import pytest

from foveal.port import port_hf

pytestmark = pytest.mark.integration

@pytest.mark.parametrize(
    "arch",
    ["resnet", pytest.param("dinov2", marks=pytest.mark.slow), pytest.param("swin", marks=pytest.mark.slow)],
)
def test_port_feature_extractor(arch, tmp_path):
    """A backbone folder (``...Model``): task feature-extraction, pooled output as the feature."""
    from tiny_models import save_tiny_model

    folder = save_tiny_model(arch, tmp_path / arch, base=True)
    report = port_hf(str(folder), f"fe_{arch}", workspace=tmp_path / "ws")
    phases = {p["phase"]: p for p in report.phases}
    assert report.status == "passed" and "task feature-extraction" in phases["inspect"]["message"]
    assert report.mapping == ("native" if arch == "dinov2" else "wrapped")
    ort = phases["verify.onnxruntime"]["figures"]
    assert ort["blame"] is None and ort["features_absmax"] > 0.1 and ort["ort_features_max_abs_diff"] <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "native"), [("vit", True), ("vit", False), ("deit", False)])
def test_port_at_another_input_size(arch, native, tmp_path, tiny_model):
    """--image-size 64 on 32-px models: position tables are resampled (native) or interpolated by
    the HF model (interpolate_pos_encoding), and that survives tracing into ONNX."""
    report = port_hf(str(tiny_model(arch)), f"big_{arch}", workspace=tmp_path / "ws", image_size=64,
                     prefer_native=native)  # fmt: skip
    assert report.status == "passed" and report.mapping == ("native" if native else "wrapped")
    network = json.loads((tmp_path / "ws" / "networks" / f"big_{arch}" / "network.json").read_text())
    assert network["defaults"]["dataset.img_size"] == 64
    ort = next(p for p in report.phases if p["phase"] == "verify.onnxruntime")["figures"]
    assert ort["blame"] is None and ort["ort_features_max_abs_diff"] <= 1e-4
