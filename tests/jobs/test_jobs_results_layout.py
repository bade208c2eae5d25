"""TAO's results layout: one top-level ``results_dir`` with an ``<action>/`` folder per action, a
per-action ``results_dir`` honoured as given, and a refusal that names the finished run it
protects."""

from __future__ import annotations

from pathlib import Path

import pytest

from foveal.data.synthetic import make_demo_dataset
from foveal.errors import UsageError
from foveal.jobs import JobStatus, Workspace
from foveal.jobs.lifecycle import run_job

pytestmark = pytest.mark.integration

TINY = [
    "model.backbone.type=vit_tiny_patch16",
    "dataset.img_size=32",
    "dataset.num_classes=0",
    "dataset.batch_size=16",
    "dataset.workers=0",
    "train.num_epochs=1",
]


def test_action_folders_per_action_dirs_and_a_refusal_naming_the_run(tmp_path):
    data = make_demo_dataset(
        tmp_path / "data", num_train=16, num_val=4, num_test=2, image_size=32, num_classes=2, archives=False
    )
    ws = Workspace(tmp_path / "ws")
    results = tmp_path / "results"
    train_args = [*TINY, f"results_dir={results}", f"dataset.train_dataset.images_dir={data['labeled_train']}"]
    train = run_job("classification", "train", overrides=train_args, workspace=ws)
    assert train.status is JobStatus.DONE and Path(train.results_dir) == results / "train"

    # the same command again would overwrite a finished run: refused, naming that run
    with pytest.raises(UsageError) as refused:
        run_job("classification", "train", overrides=train_args, workspace=ws, new=True)
    message = str(refused.value)
    assert f"already holds the finished job {train.id} (classification train)" in message
    assert "set train.results_dir or results_dir" in message and len(message.splitlines()) == 1
    assert (results / "train" / "classifier_model_latest.pth").is_file()  # untouched

    # export next to it, in <results_dir>/export, from the TAO-style path
    exported = run_job(
        "classification",
        "export",
        overrides=[f"results_dir={results}", f"export.checkpoint={results}/train/classifier_model_latest.pth"],
        workspace=ws,
    )
    assert Path(exported.results_dir) == results / "export"
    assert Path(exported.artifacts["onnx"]).parent == results / "export"

    # a per-action results_dir wins over <results_dir>/<action>, verbatim
    elsewhere = tmp_path / "elsewhere"
    ev = run_job(
        "classification",
        "evaluate",
        overrides=[
            f"results_dir={results}",
            f"evaluate.results_dir={elsewhere}",
            f"evaluate.checkpoint={results}/train/classifier_model_latest.pth",
            f"dataset.val_dataset.images_dir={data['labeled_val']}",
            "dataset.workers=0",
        ],
        workspace=ws,
    )
    assert Path(ev.results_dir) == elsewhere and (elsewhere / "result.csv").is_file()
    assert not (results / "evaluate").exists()
