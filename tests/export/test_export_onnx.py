"""export_onnx / verify_onnx: parity with PyTorch, batch handling, fallback, atomic writes."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from foveal.export import (
    ExportError,
    ExportVerificationError,
    export_batch_settings,
    export_onnx,
    verify_onnx,
)
from foveal.export import exporters as exporters_module
from foveal.export.onnx import _max_abs_diff

pytestmark = pytest.mark.unit

ATOL = 1e-4


def _randn(*shape: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_export_batch_settings_follow_tao_batch_size():
    assert export_batch_settings(-1) == (2, True)
    assert export_batch_settings(1) == (1, False)
    assert export_batch_settings(8) == (8, False)
    for bad in (0, -2):
        with pytest.raises(ValueError, match="batch_size"):
            export_batch_settings(bad)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_dynamic_batch_export_matches_torch_at_several_batch_sizes(tmp_path, tiny_vit, images, exporter):
    tiny_vit.train()  # export must use eval mode and give the mode back
    report = export_onnx(tiny_vit, images, tmp_path / "vit.onnx", exporter=exporter)

    assert tiny_vit.training and all(m.training for m in tiny_vit.modules())
    assert report.exporter == exporter and report.passed is True
    assert report.opset == 17 and report.verified_batch_sizes == [2, 3]
    assert report.input_shapes == {"input": ["batch", 3, 48, 48]}
    assert report.output_shapes == {"output": ["batch", 5]}
    assert 0 <= report.max_abs_diff["output"] <= ATOL
    assert report.file_size_bytes == (tmp_path / "vit.onnx").stat().st_size > 0
    # Batch sizes that were not seen at export time, including 1.
    for batch in (1, 5):
        diffs = verify_onnx(tmp_path / "vit.onnx", tiny_vit, _randn(batch, 3, 48, 48))
        assert diffs["output"] <= ATOL, (batch, diffs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vit.onnx"]  # embedded weights, no temp left


def test_static_batch_export_fixes_the_batch(tmp_path, tiny_vit):
    batch, dynamic = export_batch_settings(3)
    report = export_onnx(tiny_vit, _randn(batch, 3, 48, 48), tmp_path / "vit.onnx", dynamic_batch=dynamic)

    assert report.input_shapes == {"input": [3, 3, 48, 48]} and report.output_shapes == {"output": [3, 5]}
    assert report.verified_batch_sizes == [3] and report.max_abs_diff["output"] <= ATOL
    session = ort.InferenceSession(str(tmp_path / "vit.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"input": _randn(2, 3, 48, 48).numpy()})


def test_dict_outputs_become_outputs_named_by_key(tmp_path, make_tiny_vit, images):
    model = make_tiny_vit(return_dict=True)
    report = export_onnx(model, images, tmp_path / "vit.onnx")

    assert report.output_names == ["logits", "embedding"]
    assert report.output_shapes == {"logits": ["batch", 5], "embedding": ["batch", 32]}
    assert set(report.max_abs_diff) == {"logits", "embedding"}
    assert max(report.max_abs_diff.values()) <= ATOL


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, features: torch.Tensor, mask: torch.Tensor):
        return self.linear(features) * mask, features.sum(dim=1)


def test_several_inputs_and_tuple_outputs_get_numbered_names(tmp_path):
    torch.manual_seed(0)
    inputs = (_randn(2, 4), (_randn(2, 1) > 0).float())
    report = export_onnx(TwoInputs(), inputs, tmp_path / "two.onnx")

    assert report.input_names == ["input_0", "input_1"] and report.output_names == ["output_0", "output_1"]
    assert report.output_shapes == {"output_0": ["batch", 3], "output_1": ["batch"]}
    assert report.passed and max(report.max_abs_diff.values()) <= ATOL


def test_a_model_in_float64_is_exported_from_a_float32_copy(tmp_path, tiny_vit, images):
    model = tiny_vit.double()
    report = export_onnx(model, images.double(), tmp_path / "vit.onnx")

    assert report.passed
    assert next(model.parameters()).dtype == torch.float64  # the caller's model is untouched
    graph_input = onnx.load(str(tmp_path / "vit.onnx")).graph.input[0]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def _corrupting(exporter):
    """An exporter that writes a subtly wrong file: the classifier bias is shifted by 0.01."""

    def export(module, args, onnx_file, **kwargs):
        exporter(module, args, onnx_file, **kwargs)
        proto = onnx.load(str(onnx_file))
        for init in proto.graph.initializer:
            if init.name.endswith("head.bias"):
                init.CopyFrom(
                    onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) + 0.01, init.name)
                )
                break
        else:
            raise AssertionError("no head.bias initializer to corrupt")
        onnx.save(proto, str(onnx_file))

    return export


def test_a_difference_above_atol_raises_but_keeps_the_file(tmp_path, tiny_vit, images, monkeypatch):
    monkeypatch.setitem(
        exporters_module.EXPORTERS, "torchscript", _corrupting(exporters_module.export_torchscript)
    )

    with pytest.raises(ExportVerificationError) as caught:
        export_onnx(tiny_vit, images, tmp_path / "vit.onnx", exporter="torchscript")

    message = str(caught.value)
    assert "\n" not in message and "0.01" in message and "atol 0.0001" in message
    report = caught.value.report
    assert report.passed is False and report.max_abs_diff["output"] == pytest.approx(0.01, rel=1e-3)
    assert (tmp_path / "vit.onnx").is_file()
    assert verify_onnx(tmp_path / "vit.onnx", tiny_vit, images)["output"] == pytest.approx(0.01, rel=1e-3)


def test_atol_is_respected(tmp_path, tiny_vit, images, monkeypatch):
    monkeypatch.setitem(
        exporters_module.EXPORTERS, "torchscript", _corrupting(exporters_module.export_torchscript)
    )
    report = export_onnx(tiny_vit, images, tmp_path / "vit.onnx", exporter="torchscript", atol=0.02)
    assert report.passed and report.atol == 0.02


def test_auto_falls_back_to_the_next_exporter_and_logs_why(tmp_path, tiny_vit, images, monkeypatch, caplog):
    # Fakes: the first exporter fails; the "dynamo" slot runs the fast torchscript exporter, because
    # this test is about the control flow (the real dynamo exporter is tested above).
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::foo")

    monkeypatch.setitem(exporters_module.EXPORTERS, "torchscript", broken)
    monkeypatch.setitem(exporters_module.EXPORTERS, "dynamo", exporters_module.export_torchscript)

    with caplog.at_level(logging.WARNING, logger="foveal.export.onnx"):
        report = export_onnx(tiny_vit, images, tmp_path / "vit.onnx")

    assert report.exporter == "dynamo" and report.passed
    assert report.fallback_reasons == {"torchscript": "RuntimeError: unsupported operator aten::foo"}
    assert (
        "torchscript exporter failed (RuntimeError: unsupported operator aten::foo); trying dynamo"
        in caplog.text
    )


class BakesTheBatch(nn.Module):
    """`int(...)` turns the batch into a Python constant, which a tracer records as fixed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(int(x.shape[0]), -1).sum(dim=1, keepdim=True)


def test_a_batch_baked_into_the_graph_is_caught_at_the_second_batch(tmp_path):
    with pytest.raises(ExportError, match="torchscript exporter") as caught:
        export_onnx(BakesTheBatch(), _randn(2, 3, 4), tmp_path / "baked.onnx", exporter="torchscript")
    assert not isinstance(caught.value, ExportVerificationError)
    assert not (tmp_path / "baked.onnx").exists() and list(tmp_path.iterdir()) == []


def test_a_failed_export_keeps_the_previous_file(tmp_path, tiny_vit, images, monkeypatch):
    target = tmp_path / "vit.onnx"
    export_onnx(tiny_vit, images, target)
    good = target.read_bytes()

    def writes_half_then_fails(module, args, onnx_file, **kwargs):
        onnx_file.write_bytes(good[: len(good) // 2])
        raise RuntimeError("exporter crashed")

    for name in exporters_module.EXPORTERS:
        monkeypatch.setitem(exporters_module.EXPORTERS, name, writes_half_then_fails)
    with pytest.raises(
        ExportError, match="torchscript exporter: RuntimeError: exporter crashed; dynamo exporter"
    ):
        export_onnx(tiny_vit, images, target)

    assert target.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["vit.onnx"]
    with pytest.raises(ExportError):
        export_onnx(tiny_vit, images, tmp_path / "new.onnx")
    assert not (tmp_path / "new.onnx").exists()


def test_bad_arguments_are_rejected_before_exporting(tmp_path, tiny_vit, images):
    with pytest.raises(ValueError, match="exporter must be"):
        export_onnx(tiny_vit, images, tmp_path / "a.onnx", exporter="tensorflow")
    with pytest.raises(ValueError, match="1 output"):
        export_onnx(tiny_vit, images, tmp_path / "a.onnx", output_names=("a", "b"))
    with pytest.raises(TypeError, match="metadata keys"):
        export_onnx(tiny_vit, images, tmp_path / "a.onnx", metadata={1: "x"})
    with pytest.raises(ValueError, match="share dim 0"):
        export_onnx(TwoInputs(), (_randn(2, 4), _randn(3, 1)), tmp_path / "a.onnx")
    assert list(tmp_path.iterdir()) == []


def test_max_abs_diff_treats_non_finite_values_strictly():
    a = np.array([1.0, np.nan, np.inf, 2.0])
    assert _max_abs_diff(a, a.copy()) == 0.0
    assert _max_abs_diff(a, np.array([1.5, np.nan, np.inf, 2.0])) == 0.5
    assert _max_abs_diff(a, np.array([1.0, 0.0, np.inf, 2.0])) == np.inf
    assert _max_abs_diff(a, np.array([1.0, np.nan, -np.inf, 2.0])) == np.inf
    assert _max_abs_diff(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0


def test_parity_check_runs_in_eval_mode_after_the_legacy_tracer(tmp_path):
    """Regression: the legacy exporter used to leave a fresh wrapper's training mode on the whole
    model, so dropout was active during the parity check (seen as a 1.6 max diff on a ViT)."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)).eval()
    report = export_onnx(model, torch.randn(2, 8), tmp_path / "m.onnx", exporter="torchscript")
    assert report.passed and max(report.max_abs_diff.values()) < 1e-5
    assert not any(m.training for m in model.modules())
