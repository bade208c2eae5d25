"""nvdinov2 end to end through the CLI at toy size: train, then inference / export / evaluate with
``--parent``, each printing its job id and results folder; handoff picks the right files."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from nvdinov2_tiny import TINY_VIT, TRAIN

from foveal.cli.main import main
from foveal.data.synthetic import make_demo_dataset
from foveal.jobs import JobRegistry, Workspace
from foveal.jobs.handoff import resolve_handoff
from foveal.networks.nvdinov2 import NETWORK, backbones

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # the tiny train job alone takes ~40 s here

JOB_LINE = re.compile(r"^job (\S+) (\w+): (\S+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def tiny_backbones():
    real = backbones.create_backbone
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backbones, "create_backbone", lambda name, **kw: real(name, **{**kw, **TINY_VIT}))
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("shapes")
    return make_demo_dataset(
        out, num_train=32, num_val=16, num_test=8, image_size=32, num_classes=2, num_workers=1
    )


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ws")


def _cli(ws: Path, capsys, *args: str) -> tuple[str, Path]:
    """Run ``foveal -w ws nvdinov2 ...``; returns the printed (job id, results folder)."""
    capsys.readouterr()
    assert main(["-w", str(ws), "nvdinov2", *args]) == 0
    captured = capsys.readouterr()
    match = JOB_LINE.search(captured.out)
    assert match is not None and match.group(2) == "Done", captured.out
    assert f"job {match.group(1)}" in captured.err  # the "running job <id>: ... -> <dir>" line
    return match.group(1), Path(match.group(3))


@pytest.fixture(scope="module")
def trained(tiny_backbones, data, ws) -> tuple[str, Path]:
    assert (
        main(
            [
                "-w",
                str(ws),
                "nvdinov2",
                "train",
                *TRAIN,
                f"dataset.train_dataset.images_dir={data['images_train.tar.gz']}",
            ]
        )
        == 0
    )
    registry = JobRegistry(Workspace(ws).db_path)
    (job,) = [j for j in registry.list() if j.action == "train"]
    return job.id, Path(job.results_dir)


def test_inference_from_parent(trained, data, ws, capsys):
    train_id, train_dir = trained
    job_id, results = _cli(
        ws,
        capsys,
        "inference",
        "--parent",
        train_id,
        f"dataset.test_dataset.images_dir={data['images_test.tar.gz']}",
        "dataset.workers=0",
        "inference.batch_size=3",
    )
    rows = list(csv.DictReader((results / "inference.csv").open()))
    assert len(rows) == 8 and len(json.loads(rows[0]["features"])) == TINY_VIT["embed_dim"]
    assert np.load(results / "features.npy").shape == (8, TINY_VIT["embed_dim"])
    assert (results / "pca.png").is_file()
    log = (results / "logs" / "inference.log").read_text()
    assert "student vit_t backbone (epoch 2, step 8)" in log and str(train_dir) in log


def test_export_from_parent(trained, ws, capsys):
    from foveal.export import OnnxPredictor

    train_id, _ = trained
    job_id, results = _cli(ws, capsys, "export", "--parent", train_id)
    onnx_file = results / "nvdinov2.onnx"
    predictor = OnnxPredictor(onnx_file)
    # The export job's spec says nothing about the model: the size comes from the checkpoint.
    assert predictor.input_shapes["input"] == ["batch", 3, 32, 32]
    registry = JobRegistry(Workspace(ws).db_path)
    job = registry.get(job_id)
    assert job.kpis["onnx_max_abs_diff"] <= 1e-4 and job.artifacts["onnx"] == str(onnx_file)
    out = predictor.run(np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32))
    assert out["cls_token"].shape == (5, 32) and out["patch_tokens"].shape == (5, 4, 32)


def test_evaluate_from_parent(trained, data, ws, capsys):
    train_id, _ = trained
    job_id, results = _cli(
        ws,
        capsys,
        "evaluate",
        "--parent",
        train_id,
        f"dataset.val_dataset.images_dir={data['labeled_val.tar.gz']}",
        f"dataset.train_dataset.images_dir={data['labeled_train']}",
        "dataset.workers=0",
    )
    report = json.loads((results / "results.json").read_text())
    assert report["num_reference"] == 32 and report["num_evaluated"] == 16
    assert 0.0 <= report["knn_top1"] <= 1.0 and 0.0 <= report["linear_probe_top1"] <= 1.0
    job = JobRegistry(Workspace(ws).db_path).get(job_id)
    assert job.kpis == {"knn_top1": report["knn_top1"], "linear_probe_top1": report["linear_probe_top1"]}


def test_handoff_picks_student_files_and_a_child_train_job_starts_from_one(trained, ws, tmp_path):
    train_id, train_dir = trained
    parent = JobRegistry(Workspace(ws).db_path).get(train_id)
    for selection, name in (
        ("best", "student_epoch_002_step_00008.pth"),
        ("latest", "student_epoch_002_step_00008.pth"),
        ("epoch:1", "student_epoch_001_step_00004.pth"),
    ):
        for action in ("inference", "export", "evaluate"):
            values = resolve_handoff(NETWORK, action, parent, job_results_dir=tmp_path, selection=selection)
            assert Path(values[f"{action}.checkpoint"]).name == name, (action, selection)
    # a train job with a train parent starts from it (never resumes it), from the selected student
    train = resolve_handoff(NETWORK, "train", parent, job_results_dir=tmp_path, selection="epoch:1")
    assert Path(train["train.pretrained_model_path"]).name == "student_epoch_001_step_00004.pth"
    assert "train.resume_training_checkpoint_path" not in train
