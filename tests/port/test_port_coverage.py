"""Coverage bar: the whole port on tiny random models of 20 transformers image classifiers.

Weights are re-drawn at a realistic scale (tiny_models.rerandomise) so that a wrong export or
conversion cannot hide behind near-zero outputs. The pass rate and each failure's reason are
written to ``port_coverage.json`` in the session's temporary folder and printed at the end.
ViT, ResNet and DINOv2 run in the fast suite; the rest is marked slow (about 30-60 s each on
two busy cores).
"""

from __future__ import annotations

import json
import time

import pytest
from tiny_models import FAST, TINY_CONFIGS

from foveal.port import port_hf

pytestmark = pytest.mark.integration

_RESULTS: dict[str, dict] = {}


def _params():
    for name in TINY_CONFIGS:
        marks = () if name in FAST else (pytest.mark.slow,)
        yield pytest.param(name, marks=marks, id=name)


@pytest.fixture(scope="module")
def coverage_ws(tmp_path_factory):
    """One workspace for every architecture (the synthetic data is made once)."""
    ws = tmp_path_factory.mktemp("coverage") / "ws"
    yield ws
    if _RESULTS:
        passed = sum(r["status"] == "passed" for r in _RESULTS.values())
        summary = {"pass_rate": f"{passed}/{len(_RESULTS)}", "results": _RESULTS}
        (ws.parent / "port_coverage.json").write_text(json.dumps(summary, indent=2))
        print(f"\nport coverage: {passed}/{len(_RESULTS)} passed ({ws.parent / 'port_coverage.json'})")
        for name, r in _RESULTS.items():
            print(f"  {name:16} {r['status']:7} {r['mapping'] or '-':8} {r['seconds']:6.1f} s  {r['reason']}")


@pytest.mark.parametrize("arch", list(_params()))
def test_port_architecture(arch, coverage_ws, tiny_model):
    start = time.perf_counter()
    folder = tiny_model(arch)
    record = {"status": "failed", "mapping": None, "seconds": 0.0, "reason": ""}
    try:
        report = port_hf(str(folder), f"cov_{arch}", workspace=coverage_ws, force=True)
        record.update(status=report.status, mapping=report.mapping)
        warnings = [f"{p['phase']}: {p['message']}" for p in report.phases if p["status"] == "warn"]
        record["reason"] = "; ".join(warnings)[:300]
    except Exception as exc:
        record["reason"] = str(exc).splitlines()[0][:300]
        raise
    finally:
        record["seconds"] = round(time.perf_counter() - start, 1)
        _RESULTS[arch] = record
    assert report.status == "passed"
    phases = {p["phase"]: p for p in report.phases}
    assert phases["map"]["status"] == "pass" and phases["verify.onnxruntime"]["status"] in ("pass", "warn")
    ort = phases["verify.onnxruntime"]["figures"]
    assert ort["features_absmax"] > 1e-3, "features near zero would hide export errors"
    assert ort["blame"] in (None, "ort_optimiser", "fp32_conditioning")
    if ort["blame"] is None:
        assert ort["ort_features_max_abs_diff"] <= 1e-4 and ort["ort_logits_max_abs_diff"] <= 1e-4
    expected_mapping = "native" if arch in ("vit", "dinov2") else "wrapped"
    assert report.mapping == expected_mapping


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
