"""Coverage of the whole auto-mapping: for each ported task, every architecture the installed
``transformers`` lists for it (``MODEL_FOR_<TASK>_MAPPING_NAMES``) that builds from a tiny config on
CPU (:mod:`auto_tiny`) goes through the whole port: inspect, sanity export, map, generate, then
train -> evaluate -> export -> ONNX Runtime parity on the synthetic data of its task.

An architecture that cannot be built from a tiny config is skipped with its reason (it is not
counted). Known failures are strict xfails with their reason: one that starts passing fails the
run, so the list below stays true. ``test_coverage_targets`` checks the rate the list implies:
100% of image classification, at least 90% of every other task. Each run also writes
``port_task_coverage.json`` (status, seconds and reason per architecture) in the session's
temporary folder and prints the table.
"""

from __future__ import annotations

import json
import time

import pytest
from auto_tiny import MAPPINGS, NotBuildable, architectures, save_tiny, unbuildable

from foveal.port import port_hf
from foveal.port.mapping import NATIVE_TYPES

# port_coverage: ~6 min on 2 cores, outside the README's suite; .ci/run runs it as its own step
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.port_coverage]

# (task, model_type) -> why the port fails (measured; see the module docstring)
_NO_TRAINING = "transformers' head does not train (\"does not support training\"): no loss of its own to port"
_TEXT_MAP = "a PP-OCR text detector: returns a text-region probability map, not logits and pred_boxes"
KNOWN_FAILURES: dict[tuple[str, str], str] = {
    ("object-detection", "deformable_detr"): "ONNX Runtime's grid_sample (deformable attention) is 1.02e-4 from "
    "PyTorch on the synthetic images (rel. 2e-4), just over the 1e-4 bar; PyTorch fp32 is 1.3e-7 from fp64",
    ("object-detection", "pp_doclayout_v2"): _NO_TRAINING,
    ("object-detection", "pp_doclayout_v3"): _NO_TRAINING,
    ("object-detection", "pp_doclayout_v4"): "its loss fails on the labels the other DETRs take (ValueError: "
    "too many values to unpack)",
    ("object-detection", "pp_ocrv5_mobile_det"): _TEXT_MAP,
    ("object-detection", "pp_ocrv5_server_det"): _TEXT_MAP,
    ("object-detection", "pp_ocrv6_medium_det"): _TEXT_MAP,
    ("object-detection", "pp_ocrv6_small_det"): _TEXT_MAP,
}
TARGETS = {"image-classification": 1.0, "object-detection": 0.9, "semantic-segmentation": 0.9,
           "depth-estimation": 0.9}  # fmt: skip
_RESULTS: dict[str, dict] = {}
NOT_BUILDABLE_BY_TASK = {task: unbuildable(task) for task in MAPPINGS}


def _params():
    for task in MAPPINGS:
        for model_type, _ in architectures(task):
            reason = KNOWN_FAILURES.get((task, model_type))
            marks = (pytest.mark.xfail(reason=reason, strict=True),) if reason else ()
            yield pytest.param(task, model_type, marks=marks, id=f"{task}:{model_type}")


@pytest.fixture(scope="module")
def coverage_ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("task_coverage") / "ws"
    yield ws
    if not _RESULTS:
        return
    out = ws.parent / "port_task_coverage.json"
    by_task: dict[str, dict[str, int]] = {}
    for record in _RESULTS.values():
        slot = by_task.setdefault(record["task"], {"passed": 0, "failed": 0, "not_buildable": 0})
        slot[record["status"]] = slot.get(record["status"], 0) + 1
    out.write_text(json.dumps({"by_task": by_task, "results": _RESULTS}, indent=2))
    print(f"\nport task coverage ({out}):")
    for task, slot in by_task.items():
        built = slot["passed"] + slot["failed"]
        print(f"  {task:22} {slot['passed']}/{built} buildable passed ({slot['not_buildable']} not buildable)")
    for key, r in _RESULTS.items():
        print(f"  {key:45} {r['status']:13} {r['seconds']:6.1f} s  {r['reason']}")


@pytest.mark.parametrize(("task", "model_type"), list(_params()))
def test_port_every_architecture_of_the_mapping(task, model_type, coverage_ws, tmp_path):
    start = time.perf_counter()
    record = {"task": task, "status": "failed", "seconds": 0.0, "reason": ""}
    key = f"{task}:{model_type}"
    try:
        try:
            folder = save_tiny(task, model_type, tmp_path / "hf")
        except NotBuildable as exc:
            record.update(status="not_buildable", reason=str(exc)[:300])
            pytest.skip(f"not buildable from a tiny config: {exc}")
        name = "cov_" + "".join(c if c.isalnum() else "_" for c in model_type.lower())[:40]
        report = port_hf(str(folder), name, workspace=coverage_ws, force=True)
        record["status"] = "passed" if report.status == "passed" else "failed"
        record["reason"] = "; ".join(f"{p['phase']}: {p['message']}" for p in report.phases
                                     if p["status"] == "warn")[:300]  # fmt: skip
    except pytest.skip.Exception:
        raise
    except Exception as exc:
        record["reason"] = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise
    finally:
        record["seconds"] = round(time.perf_counter() - start, 1)
        _RESULTS[key] = record
    assert report.status == "passed"
    parity = next(p for p in report.phases if p["phase"] == "verify.onnxruntime")
    assert parity["status"] in ("pass", "warn") and parity["figures"]["blame"] != "export"
    ort = parity["figures"]
    if report.mapping in ("native", "wrapped"):  # a classifier on a Foveal backbone
        assert report.mapping == ("native" if model_type in NATIVE_TYPES else "wrapped")
        assert ort["features_absmax"] > 1e-3, "features near zero would hide export errors"
        if ort["blame"] is None:
            assert ort["ort_features_max_abs_diff"] <= 1e-4 and ort["ort_logits_max_abs_diff"] <= 1e-4
    else:  # trained whole: every named output, relative to its scale too
        assert report.mapping == "whole" and ort["outputs_absmax"] > 0
        if ort["blame"] is None:
            assert ort["ort_outputs_max_abs_diff"] <= 1e-4


@pytest.mark.parametrize(
    "task",
    [
        pytest.param(task, marks=pytest.mark.xfail(
            strict=True, reason="11 of 19 buildable detectors port: 7 PaddlePaddle document-layout and OCR "
            "models cannot train or return no boxes, Deformable DETR misses the parity bar by 2e-6"))
        if task == "object-detection" else task
        for task in TARGETS
    ],
)  # fmt: skip
def test_coverage_targets(task):
    """The known failures leave each task at or above its target pass rate (100% of image
    classification, 90% of the others), counting the architectures that build from a tiny config."""
    buildable = len(architectures(task)) - len(NOT_BUILDABLE_BY_TASK.get(task, ()))
    failing = sum(1 for t, _ in KNOWN_FAILURES if t == task)
    assert (buildable - failing) / buildable >= TARGETS[task], (task, failing, buildable)
