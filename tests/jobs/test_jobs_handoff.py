"""Handoff contract: every reader gets the real output of its writer (tiny real runs, no fixtures of
what a writer used to write). The parent decides: a train job *starts from* a train parent's selected
checkpoint, downstream actions take the parent train job's checkpoint, a wrong or unfinished parent
is one line before any job exists."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from foveal.data.synthetic import make_demo_dataset
from foveal.engine import CheckpointIndex, load_checkpoint
from foveal.errors import HandoffError
from foveal.jobs import JobRegistry, JobStatus, Workspace, apply_handoff
from foveal.jobs.lifecycle import prepare_job, run_job

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "networks"))
from nvdinov2_tiny import TRAIN as NVDINOV2_TINY  # noqa: E402
from tiny_jobs import CLASSIFICATION, MAE, tiny_backbones  # noqa: E402

pytestmark = pytest.mark.integration

CLS = CLASSIFICATION


@pytest.fixture(scope="module")
def tiny():
    """Every network builds the same tiny ViT, so weights can flow between them."""
    with tiny_backbones():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
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
def ws(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def jobs(tiny, data, ws):
    """nvdinov2 train, mae pretrain -> finetune, classification from each: real tiny runs."""
    val = f"dataset.val_dataset.images_dir={data['labeled_val']}"
    out = {}
    out["nvdinov2"] = run_job(
        "nvdinov2",
        "train",
        overrides=[
            f"dataset.train_dataset.images_dir={data['images_train']}",
            *NVDINOV2_TINY,
            "train.num_epochs=1",
        ],
        workspace=ws,
    )
    out["pretrain"] = run_job(
        "mae", "train", overrides=[*MAE, f"dataset.train_data_sources={data['images_train']}"], workspace=ws
    )
    out["finetune"] = run_job(
        "mae",
        "train",
        parent_id=out["pretrain"].id,
        workspace=ws,
        overrides=[
            *MAE,
            "train.stage=finetune",
            f"dataset.train_data_sources={data['labeled_train']}",
            f"dataset.val_data_sources={data['labeled_val']}",
            "dataset.augmentation.mixup=0",
            "dataset.augmentation.cutmix=0",
        ],
    )
    train = f"dataset.train_dataset.images_dir={data['labeled_train']}"
    out["cls_from_nvdinov2"] = run_job(
        "classification",
        "train",
        parent_id=out["nvdinov2"].id,
        workspace=ws,
        overrides=[*CLS, train, val, "model.backbone.type=vit_t", "model.backbone.patch_size=16"],
    )
    out["cls_from_finetune"] = run_job(
        "classification",
        "train",
        parent_id=out["finetune"].id,
        workspace=ws,
        overrides=[*CLS, train, val, "model.backbone.type=vit_tiny_patch16"],
    )
    out["cls_from_cls"] = run_job(
        "classification",
        "train",
        parent_id=out["cls_from_finetune"].id,
        workspace=ws,
        overrides=[*CLS, train, val, "model.backbone.type=vit_tiny_patch16"],
    )
    for name, job in out.items():
        assert job.status is JobStatus.DONE, name
    return out


def _index(job) -> CheckpointIndex:
    return CheckpointIndex.read(job.results_dir)


def test_the_index_the_engine_wrote_names_every_file_and_the_best(jobs):
    index = _index(jobs["finetune"])
    assert (index.network, index.monitor, index.mode) == ("mae", "val_top1", "max")
    entry = index.entries[-1]
    assert entry.files == {"full": "model_epoch_001_step_00002.pth"} and "val_top1" in entry.metrics
    # nvdinov2's backbone files are written by the engine beside the full checkpoint, in the index
    nvd = _index(jobs["nvdinov2"])
    assert nvd.monitor is None and set(nvd.entries[-1].files) == {"full", "student", "teacher"}
    for kind, name in nvd.entries[-1].files.items():
        ckpt = load_checkpoint(Path(jobs["nvdinov2"].results_dir) / name, network="nvdinov2")
        assert ckpt["kind"] == kind and (ckpt["epoch"], ckpt["global_step"]) == (1, nvd.entries[-1].step)
    # ... and the job records what the index says
    assert jobs["finetune"].artifacts["best_checkpoint"] == str(index.select("best"))
    assert jobs["nvdinov2"].artifacts["student"] == str(nvd.select("latest", "student"))
    assert "best_checkpoint" not in jobs["nvdinov2"].artifacts  # no metric picks an SSL "best"


@pytest.mark.parametrize(
    "child, parent, key, kind",
    [
        ("finetune", "pretrain", "train.pretrained_model_path", "full"),  # mae pretrain -> mae finetune
        ("cls_from_nvdinov2", "nvdinov2", "model.backbone.pretrained_backbone_path", "student"),
        ("cls_from_finetune", "finetune", "model.backbone.pretrained_backbone_path", "full"),
        ("cls_from_cls", "cls_from_finetune", "train.pretrained_model_path", "full"),
    ],
)
def test_a_train_job_starts_from_its_parents_selected_checkpoint(jobs, child, parent, key, kind):
    section, *rest = key.split(".")
    value = jobs[child].spec[section]
    for part in rest:
        value = value[part]
    assert value == str(_index(jobs[parent]).select("best", kind))
    assert jobs[child].spec["train"]["resume_training_checkpoint_path"] is None  # never a resume
    assert jobs[child].parent_id == jobs[parent].id
    log = (Path(jobs[child].results_dir) / "logs" / "train.log").read_text()
    assert "loaded" in log and Path(value).name in log


def _refused(ws, *args, **kwargs) -> str:
    before = len(JobRegistry(ws.db_path).list())
    with pytest.raises(HandoffError) as caught:
        prepare_job(*args, workspace=ws, **kwargs)
    assert len(JobRegistry(ws.db_path).list()) == before  # refused before the job exists
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_nvdinov2_cannot_start_mae_and_the_line_says_what_can(jobs, ws, data):
    message = _refused(ws, "mae", "train", parent_id=jobs["nvdinov2"].id, overrides=MAE)
    assert f"job {jobs['nvdinov2'].id} (a nvdinov2 train job, Done) cannot start a mae train job" in message
    assert "a mae train job starts from a finished mae train (train.stage=pretrain) job" in message
    assert "train.pretrained_model_path" in message


def test_a_mae_finetune_job_cannot_start_more_mae_training(jobs, ws):
    message = _refused(ws, "mae", "train", parent_id=jobs["finetune"].id, overrides=MAE)
    assert "train.stage=finetune" in message and "mae train (train.stage=pretrain)" in message


def test_an_unfinished_parent_is_refused(jobs, ws):
    registry = JobRegistry(ws.db_path)
    running = registry.create(
        "mae", "train", {"train": {"stage": "pretrain"}}, results_dir=str(ws.root / "r")
    )
    registry.mark_running(running.id, os.getpid())
    message = _refused(ws, "mae", "train", parent_id=running.id, overrides=MAE)
    assert f"job {running.id} (a mae train job, train.stage=pretrain, Running) has not finished" in message
    failed = registry.create("classification", "train", {}, results_dir=str(ws.root / "f"))
    registry.finish(failed.id, JobStatus.ERROR, message="boom")
    assert "did not finish" in _refused(ws, "classification", "export", parent_id=failed.id)


def test_downstream_actions_take_a_train_job_of_their_own_network(jobs, ws):
    assert "pass a finished mae train job" in _refused(ws, "mae", "export", parent_id=jobs["cls_from_cls"].id)
    export = run_job("classification", "export", parent_id=jobs["cls_from_cls"].id, workspace=ws)
    assert "cannot start a train job" in _refused(ws, "classification", "train", parent_id=export.id)
    # gen_trt_engine takes the export job: its ONNX file is what the export recorded
    prepared = prepare_job("classification", "gen_trt_engine", parent_id=export.id, workspace=ws, new=True)
    assert prepared.config.gen_trt_engine.onnx_file == export.artifacts["onnx"]
    assert "recorded no ONNX file" in _refused(
        ws, "classification", "gen_trt_engine", parent_id=jobs["cls_from_cls"].id
    )


def test_a_bad_parent_checkpoint_selection_is_one_line(jobs, ws):
    message = _refused(
        ws, "classification", "export", parent_id=jobs["cls_from_cls"].id, parent_checkpoint="newest"
    )
    assert "--parent-checkpoint" in message and "best, latest or epoch:N" in message
    message = _refused(
        ws, "classification", "export", parent_id=jobs["cls_from_cls"].id, parent_checkpoint="epoch:9"
    )
    assert "no full training (model_epoch_*.pth) checkpoint of epoch 9; epochs: 1" in message


def test_explicit_keys_win_but_the_parent_is_still_checked(jobs, ws, tmp_path):
    mine = tmp_path / "mine.pth"
    prepared = prepare_job(
        "classification",
        "export",
        parent_id=jobs["cls_from_cls"].id,
        workspace=ws,
        new=True,
        overrides=[f"export.checkpoint={mine}"],
    )
    assert prepared.config.export.checkpoint == str(mine)
    _refused(
        ws, "classification", "export", parent_id=jobs["nvdinov2"].id, overrides=[f"export.checkpoint={mine}"]
    )


def test_apply_handoff_merges_without_clobbering():
    spec = {"train": {"num_epochs": 3}, "export": {"checkpoint": "mine.pth"}}
    out = apply_handoff(
        spec, {"export.checkpoint": "x.pth", "export.onnx_file": "y.onnx"}, {"export.checkpoint"}
    )
    assert out["export"] == {"checkpoint": "mine.pth", "onnx_file": "y.onnx"} and spec["export"] == {
        "checkpoint": "mine.pth"
    }
    with pytest.raises(HandoffError, match="train.num_epochs is a int"):
        apply_handoff(spec, {"train.num_epochs.x": 1})
