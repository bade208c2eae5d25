"""Contracts between a writer and its readers, fed by real tiny runs (never a hand-made fixture):
status.json -> the monitor and AutoML's per-epoch metric; the checkpoint index -> the job's
artifacts; ONNX metadata -> the ONNX readers and the engine builder's input size."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from foveal.data.synthetic import make_demo_dataset
from foveal.engine import CheckpointIndex
from foveal.engine.status import read_status
from foveal.export.onnx_runtime import OnnxPredictor
from foveal.jobs import JobStatus, Workspace
from foveal.jobs.lifecycle import run_job
from foveal.jobs.monitor import job_line, read_progress
from foveal.networks.nvdinov2 import backbones as nvdinov2_backbones
from foveal.tuning.study import final_value, metric_by_epoch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "networks"))
from nvdinov2_tiny import TINY_VIT, TRAIN  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_dataset(
        tmp_path_factory.mktemp("shapes"),
        num_train=32,
        num_val=16,
        num_test=8,
        image_size=32,
        num_classes=2,
        archives=False,
    )


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def train(data, ws):
    job = run_job(
        "classification",
        "train",
        workspace=ws,
        overrides=[
            "model.backbone.type=vit_tiny_patch16",
            "dataset.img_size=32",
            "dataset.num_classes=0",
            "dataset.workers=0",
            "train.num_epochs=2",
            f"dataset.train_dataset.images_dir={data['labeled_train']}",
            f"dataset.val_dataset.images_dir={data['labeled_val']}",
        ],
    )
    assert job.status is JobStatus.DONE
    return job


def test_status_json_of_a_real_run_feeds_the_monitor_and_automl(train):
    lines = read_status(Path(train.results_dir) / "status.json")
    assert [line["status"] for line in (lines[0], lines[-1])] == ["STARTED", "SUCCESS"]
    by_epoch = metric_by_epoch(lines, "val_top1")
    index = CheckpointIndex.read(train.results_dir)
    # the per-epoch metric AutoML ranks by is the one the checkpoint index recorded for that epoch
    assert by_epoch == {e.epoch: pytest.approx(e.metrics["val_top1"]) for e in index.entries}
    assert final_value(train, by_epoch, "val_top1") == pytest.approx(train.kpis["val_top1"])
    progress = read_progress(train.results_dir)
    assert (progress.epoch, progress.max_epoch) == (2, 2) and progress.status == "SUCCESS"
    line = job_line("train", train, progress, metric="val_top1")
    assert line.startswith(f"train {train.id} Done: epoch 2/2") and "val_top1=" in line


def test_onnx_metadata_written_by_export_is_what_the_readers_read(train, ws):
    export = run_job("classification", "export", parent_id=train.id, workspace=ws)
    predictor = OnnxPredictor(export.artifacts["onnx"])
    meta = predictor.metadata
    trained = CheckpointIndex.read(train.results_dir).select("best")
    import torch

    assert json.loads(meta["classes"]) == torch.load(trained, weights_only=True)["classes"]
    assert (meta["network"], meta["input_size"], meta["output"]) == ("classification", "32", "logits")
    assert predictor.input_names == ["input"]


def test_nvdinov2_engine_builder_takes_the_exported_size_from_the_real_onnx(data, ws, monkeypatch):
    real = nvdinov2_backbones.create_backbone
    monkeypatch.setattr(
        nvdinov2_backbones, "create_backbone", lambda name, **kw: real(name, **{**kw, **TINY_VIT})
    )
    trained = run_job(
        "nvdinov2",
        "train",
        workspace=ws,
        overrides=[f"dataset.train_dataset.images_dir={data['images_train']}", *TRAIN, "train.num_epochs=1"],
    )
    export = run_job("nvdinov2", "export", parent_id=trained.id, workspace=ws)
    asked = {}

    def fake_build(onnx_file, engine, **kwargs):
        asked.update(kwargs, onnx_file=onnx_file)
        Path(engine).write_bytes(b"engine")
        return {"data_type": kwargs["data_type"]}

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr("foveal.export.tensorrt.build_trt_engine", fake_build)
    engine = run_job("nvdinov2", "gen_trt_engine", parent_id=export.id, workspace=ws)
    assert engine.status is JobStatus.DONE and str(asked["onnx_file"]) == export.artifacts["onnx"]
    from foveal.export.tensorrt import plan_profiles

    # no size in the spec: the builder's profile takes the trained img_size from the ONNX graph
    assert asked["input_shape"] is None
    batches = {k: asked[k] for k in ("min_batch", "opt_batch", "max_batch")}
    (profile,) = plan_profiles(asked["onnx_file"], input_shape=None, **batches).values()
    assert all(list(shape)[1:] == [3, 32, 32] for shape in profile.values()), profile
