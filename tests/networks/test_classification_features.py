"""classification at toy size with EMA, Mixup/CutMix, RandAugment and an nvdinov2 backbone file:
train -> resume (EMA restored) -> evaluate (PNG) -> inference (one file, an archive) -> export
with softmax."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foveal.data.synthetic import make_demo_dataset
from foveal.engine import load_checkpoint, save_weights_only
from foveal.jobs import JobStatus, Workspace
from foveal.jobs.lifecycle import run_job
from foveal.nn import create_backbone

pytestmark = pytest.mark.integration

COMMON = [
    "model.backbone.type=vit_tiny_patch16",
    "dataset.img_size=32",
    "dataset.num_classes=0",
    "dataset.batch_size=8",
    "dataset.workers=0",
    "train.precision=fp32",
    "train.enable_ema=true",
    "train.ema_decay=0.9",
    "dataset.augmentation.mixup_cutmix=true",
    "dataset.augmentation.mixup_alpha=0.8",
    "dataset.augmentation.random_aug.policy=rand-m9-mstd0.5-inc1",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("shapes")
    return make_demo_dataset(
        out, num_train=24, num_val=8, num_test=6, image_size=32, num_classes=2, num_workers=1
    )


def _latest(job) -> dict:
    return load_checkpoint(Path(job.results_dir) / "classifier_model_latest.pth")


def test_features_train_resume_evaluate_infer_export(tmp_path, data):
    ws = Workspace(tmp_path / "ws")
    student = save_weights_only(
        create_backbone("vit_tiny_patch16", img_size=64).state_dict(),
        tmp_path / "student_epoch_001.pth",
        network="nvdinov2",
        config={"model": {"backbone": {"student_type": "vit_t", "patch_size": 16}}},
        kind="student",
    )
    dirs = [
        f"dataset.train_dataset.images_dir={data['labeled_train']}",
        f"dataset.val_dataset.images_dir={data['labeled_val']}",
    ]
    first = run_job(
        "classification",
        "train",
        overrides=[
            *COMMON,
            *dirs,
            "train.num_epochs=1",
            f"model.backbone.pretrained_backbone_path={student}",
        ],
        workspace=ws,
    )
    assert first.status is JobStatus.DONE
    log = (Path(first.results_dir) / "logs" / "train.log").read_text()
    assert "from foveal nvdinov2 student backbone (vit_t)" in log and "weight EMA on" in log
    assert "train augmentation: SquashResize -> RandomFlips -> RandAugment -> RandomRotate" in log
    ckpt = _latest(first)
    assert ckpt["ema_updates"] == ckpt["global_step"] == 3
    live = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    assert set(ckpt["ema_state_dict"]) == set(live)
    assert not torch.equal(ckpt["ema_state_dict"]["head.1.weight"], live["head.1.weight"])

    resumed = run_job(
        "classification",
        "train",
        overrides=[
            *COMMON,
            *dirs,
            "train.num_epochs=2",
            f"train.resume_training_checkpoint_path={Path(first.results_dir) / 'classifier_model_latest.pth'}",
        ],
        workspace=ws,
    )
    ckpt = _latest(resumed)
    # The average went on from the saved one: one update per optimizer step over both runs.
    assert ckpt["epoch"] == 2 and ckpt["ema_updates"] == ckpt["global_step"] == 6

    ev = run_job(
        "classification",
        "evaluate",
        parent_id=resumed.id,
        workspace=ws,
        overrides=[f"dataset.val_dataset.images_dir={data['labeled_test.tar.gz']}"],
    )
    results = Path(ev.results_dir)
    report = json.loads((results / "results.json").read_text())
    assert report["weights"] == "ema" and report["num_images"] == 6
    with Image.open(results / "confusion_matrix.png") as im:
        assert im.format == "PNG" and min(im.size) > 100
    status = [json.loads(line) for line in (results / "status.json").read_text().splitlines()]
    assert status[-1]["status"] == "SUCCESS" and status[-1]["kpi"]["top1"] == report["top1"]

    one_file = sorted(Path(data["images_test"]).rglob("*.png"))[0]
    for source, count in ((one_file, 1), (data["images_test.tar.gz"], 6)):
        inf = run_job(
            "classification",
            "inference",
            parent_id=resumed.id,
            workspace=ws,
            overrides=[f"dataset.test_dataset.images_dir={source}"],
        )
        rows = list(csv.DictReader((Path(inf.results_dir) / "result.csv").open()))
        assert len(rows) == count and {r["pred_label"] for r in rows} <= {"circle", "square"}
    assert rows and all(r["img_name"].endswith(".png") for r in rows)

    exp = run_job(
        "classification", "export", parent_id=resumed.id, workspace=ws, overrides=["export.softmax=true"]
    )
    assert exp.kpis["onnx_max_abs_diff"] <= 1e-4
    from foveal.export import OnnxPredictor

    predictor = OnnxPredictor(exp.artifacts["onnx"])
    assert predictor.metadata["output"] == "probabilities" and predictor.metadata["weights"] == "ema"
    probs = predictor.run(torch.randn(3, 3, 32, 32).numpy())["probabilities"]
    assert probs.shape == (3, 2) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
