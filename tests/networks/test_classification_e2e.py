"""classification end to end at toy size: train -> evaluate -> inference -> export, resume, URIs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from foveal.data.synthetic import make_demo_dataset
from foveal.engine import load_checkpoint
from foveal.jobs import JobRegistry, JobStatus, Workspace
from foveal.jobs.lifecycle import run_job

pytestmark = pytest.mark.integration

TINY = [
    "model.backbone.type=vit_tiny_patch16",
    "dataset.img_size=32",
    "dataset.num_classes=0",
    "dataset.batch_size=16",
    "dataset.workers=0",
    "train.num_epochs=2",
    "train.precision=fp32",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("shapes")
    return make_demo_dataset(
        out, num_train=48, num_val=16, num_test=12, image_size=32, num_classes=2, num_workers=1
    )


def _train(ws: Workspace, train_uri: str, *extra: str):
    return run_job(
        "classification",
        "train",
        overrides=[*TINY, f"dataset.train_dataset.images_dir={train_uri}", *extra],
        workspace=ws,
    )


def test_train_evaluate_inference_export(tmp_path, data):
    ws = Workspace(tmp_path / "ws")
    train = _train(
        ws, str(data["labeled_train.tar.gz"]), f"dataset.val_dataset.images_dir={data['labeled_val']}"
    )
    assert train.status is JobStatus.DONE
    results = Path(train.results_dir)
    assert (results / "experiment.yaml").is_file()
    assert (results / "model_epoch_002_step_00006.pth").is_file()
    assert (results / "classifier_model_latest.pth").resolve().name == "model_epoch_002_step_00006.pth"
    ckpt = load_checkpoint(results / "classifier_model_latest.pth")
    assert ckpt["network"] == "classification" and ckpt["classes"] == ["circle", "square"]
    assert ckpt["config"]["dataset"]["img_size"] == 32
    assert {"train_loss", "val_top1"} <= set(train.kpis)
    status = [json.loads(line) for line in (results / "status.json").read_text().splitlines()]
    assert status[0]["status"] == "STARTED" and status[-1]["status"] == "SUCCESS"
    assert any(s.get("epoch") == 2 and "kpi" in s for s in status)

    ev = run_job(
        "classification",
        "evaluate",
        parent_id=train.id,
        workspace=ws,
        overrides=[f"dataset.val_dataset.images_dir={data['labeled_test.tar.gz']}"],
    )
    report = json.loads((Path(ev.results_dir) / "results.json").read_text())
    assert report["num_images"] == 12 and sum(map(sum, report["confusion_matrix"])) == 12
    assert set(report["per_class"]) == {"circle", "square"} and 0.0 <= report["top1"] <= 1.0
    assert ev.parent_id == train.id and ev.kpis["top1"] == report["top1"]
    table = list(csv.DictReader((Path(ev.results_dir) / "result.csv").open()))  # TAO's columns
    assert len(table) == 12 and set(table[0]) == {"img_name", "circle", "square", "pred_label", "pred_score", "gt_label"}
    assert sum(r["pred_label"] == r["gt_label"] for r in table) / 12 == pytest.approx(report["top1"])

    inf = run_job(
        "classification",
        "inference",
        parent_id=train.id,
        workspace=ws,
        overrides=[f"dataset.test_dataset.images_dir={data['images_test']}"],
    )
    rows = list(csv.DictReader((Path(inf.results_dir) / "result.csv").open()))
    assert len(rows) == 12 and {r["pred_label"] for r in rows} <= {"circle", "square"}
    assert all(abs(float(r["pred_score"]) + float(r["score_2"]) - 1) < 1e-4 for r in rows)

    exp = run_job("classification", "export", parent_id=train.id, workspace=ws)
    assert exp.kpis["onnx_max_abs_diff"] <= 1e-4
    from foveal.export import OnnxPredictor

    predictor = OnnxPredictor(exp.artifacts["onnx"])
    assert json.loads(predictor.metadata["classes"]) == ["circle", "square"]
    assert predictor.run(torch.randn(3, 3, 32, 32).numpy())["logits"].shape == (3, 2)


def test_unknown_val_class_is_named(tmp_path, data):
    ws = Workspace(tmp_path / "ws")
    val = tmp_path / "val"
    (val / "hexagon").mkdir(parents=True)
    src = next((data["labeled_val"] / "circle").iterdir())
    (val / "hexagon" / src.name).write_bytes(src.read_bytes())
    from foveal.data import DatasetError

    with pytest.raises(DatasetError, match="hexagon"):
        _train(ws, str(data["labeled_train"]), f"dataset.val_dataset.images_dir={val}")


def _final_weights(job) -> dict[str, torch.Tensor]:
    return load_checkpoint(Path(job.results_dir) / "classifier_model_latest.pth")["state_dict"]


def test_archive_folder_and_s3_train_the_same(tmp_path, data, s3):
    ws = Workspace(tmp_path / "ws")
    s3.create_bucket(Bucket="shapes")
    s3.upload_file(str(data["labeled_train.tar.gz"]), "shapes", "labeled_train.tar.gz")
    one_epoch = "train.num_epochs=1"
    from_archive = _final_weights(_train(ws, str(data["labeled_train.tar.gz"]), one_epoch))
    from_folder = _final_weights(_train(ws, str(data["labeled_train"]), one_epoch))
    from_s3 = _final_weights(_train(ws, "s3://shapes/labeled_train.tar.gz", one_epoch))
    for key, value in from_archive.items():
        assert torch.equal(value, from_folder[key]), key
        assert torch.equal(value, from_s3[key]), key


def test_tar_with_parent_entries_is_refused(tmp_path):
    import io
    import tarfile

    bad = tmp_path / "evil.tar.gz"
    with tarfile.open(bad, "w:gz") as tf:
        info = tarfile.TarInfo("../escape.png")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"\x89PNG"))
    from foveal.data import DatasetError

    with pytest.raises(DatasetError, match=r"\.\./escape\.png"):
        _train(Workspace(tmp_path / "ws"), str(bad))
    assert not (tmp_path / "escape.png").exists()


def test_sigkill_then_same_command_resumes(tmp_path, data):
    ws = tmp_path / "ws"
    cmd = [
        sys.executable,
        "-m",
        "foveal.cli.main",
        "-w",
        str(ws),
        "classification",
        "train",
        *TINY[:-2],
        "train.num_epochs=12",
        f"dataset.train_dataset.images_dir={data['labeled_train']}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 240
    while not list(ws.glob("results/*/model_epoch_002_*.pth")):
        assert first.poll() is None, first.stderr.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    (killed_dir,) = ws.glob("results/*")
    done_before = max(int(p.name.split("_")[2]) for p in killed_dir.glob("model_epoch_*.pth"))
    assert done_before < 12

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"resuming job {killed_dir.name}" in second.stderr
    job = JobRegistry(ws / "registry.sqlite").get(killed_dir.name)
    assert job.status is JobStatus.DONE
    # The second run trained only the remaining epochs, starting after the last checkpoint.
    epochs_logged = [
        int(line.split("epoch ")[1].split("/")[0])
        for line in second.stderr.splitlines()
        if line.startswith("epoch ")
    ]
    assert epochs_logged and epochs_logged[0] == done_before + 1 and epochs_logged[-1] == 12
    assert load_checkpoint(killed_dir / "classifier_model_latest.pth")["epoch"] == 12


@pytest.mark.slow
def test_train_with_every_speed_option_on(data, tmp_path):
    """train.activation_checkpointing, channels_last and torch_compile together on ConvNeXt V2: the
    job trains, its checkpoint has the eager model's keys, and evaluate reads it."""
    ws = Workspace(tmp_path / "ws")
    job = _train(ws, str(data["labeled_train"]), "model.backbone.type=convnextv2_atto", "train.num_epochs=1",
                 "train.activation_checkpointing=true", "train.channels_last=true", "train.torch_compile=true")  # fmt: skip
    assert job.status is JobStatus.DONE and job.kpis["train_loss"] > 0
    ev = run_job("classification", "evaluate", parent_id=job.id, workspace=ws,
                 overrides=[f"dataset.val_dataset.images_dir={data['labeled_val']}"])  # fmt: skip
    assert ev.status is JobStatus.DONE and 0 <= ev.kpis["top1"] <= 1
