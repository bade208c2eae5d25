"""nvdinov2 train end to end at toy size: CLI run on the demo archive, handoff files, resume,
distillation from a student file, and the one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from nvdinov2_tiny import TINY_VIT

from foveal.cli.main import main
from foveal.data.synthetic import make_demo_dataset
from foveal.engine import load_checkpoint
from foveal.engine.callbacks import NonFiniteLossError
from foveal.jobs import JobStatus, Workspace
from foveal.jobs.lifecycle import run_job
from foveal.networks.nvdinov2 import backbones
from foveal.networks.nvdinov2.method import NVDINOv2Method
from foveal.spec import SpecError

pytestmark = pytest.mark.integration

SPEC = """\
model:
  backbone: {patch_size: 16, img_size: 32, drop_path_rate: 0.1}
  head: {hidden_dim: 64, bottleneck_dim: 32}
dataset:
  batch_size: 8
  workers: 0
  transform: {global_crops_size: 32, local_crops_size: 16, n_local_crops: 2}
train:
  num_epochs: 2
  precision: fp32
  num_prototypes: 128
  schedulers:
    learning_rate: {val_base: 0.001, warm_up_steps: 2}
    last_layer_learning_rate: {val_base: 0.001, warm_up_steps: 2, freeze_steps: 2}
    teacher_temperature: {warm_up_steps: 4, max_decay_steps: 4}
"""
SIZES = ["model.backbone.teacher_type=vit_t", "model.backbone.student_type=vit_t"]


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
        out, num_train=32, num_val=0, num_test=8, image_size=32, num_classes=2, num_workers=1, archives=True
    )


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "nvdinov2.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def trained(tiny_backbones, data, spec, ws) -> Path:
    code = main(
        [
            "-w",
            str(ws),
            "nvdinov2",
            "train",
            "-e",
            str(spec),
            f"dataset.train_dataset.images_dir={data['images_train.tar.gz']}",
            *SIZES,
        ]
    )
    assert code == 0
    (results,) = [p for p in (ws / "results").iterdir() if p.is_dir()]
    return results


def test_cli_train_writes_full_and_backbone_checkpoints(trained):
    names = {p.name for p in trained.iterdir()}
    for epoch, step in ((1, 4), (2, 8)):
        stem = f"epoch_{epoch:03d}_step_{step:05d}.pth"
        assert {f"model_{stem}", f"student_{stem}", f"teacher_{stem}"} <= names
    assert (trained / "nvdinov2_model_latest.pth").resolve().name == "model_epoch_002_step_00008.pth"
    assert not (trained / "nvdinov2_latest.pth").exists()  # one link, TAO's name

    full = load_checkpoint(trained / "model_epoch_002_step_00008.pth", network="nvdinov2", kind="full")
    state = full["state_dict"]
    assert {
        "student.backbone.pos_embed",
        "teacher.backbone.pos_embed",
        "student.dino_head.last_layer.weight",
    } <= set(state)
    for kind in ("student", "teacher"):
        obj = torch.load(trained / f"{kind}_epoch_002_step_00008.pth", weights_only=True)
        assert (obj["network"], obj["kind"], obj["arch"], obj["epoch"], obj["global_step"]) == (
            "nvdinov2",
            kind,
            "vit_t",
            2,
            8,
        )
        assert obj["config"]["model"]["backbone"]["img_size"] == 32
        prefix = f"{kind}.backbone."
        expected = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        assert obj["state_dict"].keys() == expected.keys()
        assert all(torch.equal(obj["state_dict"][k], v) for k, v in expected.items())
        model = backbones.build_backbone(_cfg(obj["config"]), kind)
        model.load_state_dict(obj["state_dict"])  # a plain VisionTransformer state dict, no prefix
    # the teacher is an EMA of a student that moved: close, not equal
    s, t = (
        state["student.backbone.blocks.0.mlp.fc1.weight"],
        state["teacher.backbone.blocks.0.mlp.fc1.weight"],
    )
    assert not torch.equal(s, t) and (s - t).abs().max() < 0.1


def _cfg(config: dict):
    from foveal.networks.nvdinov2.config import NVDINOv2Config
    from foveal.spec import build_config

    return build_config(NVDINOv2Config, config)


def test_status_reports_train_loss_every_epoch(trained):
    lines = [json.loads(line) for line in (trained / "status.json").read_text().splitlines()]
    running = [line for line in lines if line["status"] == "RUNNING" and "kpi" in line]
    assert [line["epoch"] for line in running] == [1, 2]
    assert all({"train_loss", "dino_loss", "ibot_loss", "koleo_loss"} <= set(line["kpi"]) for line in running)
    assert all(torch.isfinite(torch.tensor(line["kpi"]["train_loss"])) for line in running)
    assert lines[-1]["status"] == "SUCCESS"
    log = (trained / "logs" / "train.log").read_text()
    assert "train.schedulers.momentum.max_decay_steps=2500000 > 8 steps in this run" in log


def test_resume_continues_from_the_full_checkpoint(trained, data, spec, ws):
    job = run_job(
        "nvdinov2",
        "train",
        spec_file=spec,
        overrides=[
            f"dataset.train_dataset.images_dir={data['images_train']}",
            *SIZES,
            "train.num_epochs=3",
            f"train.resume_training_checkpoint_path={trained / 'model_epoch_002_step_00008.pth'}",
        ],
        workspace=Workspace(ws),
    )
    assert job.status is JobStatus.DONE
    names = {p.name for p in Path(job.results_dir).iterdir()}
    assert {"model_epoch_003_step_00012.pth", "student_epoch_003_step_00012.pth"} <= names
    assert not any("epoch_001" in n or "epoch_002" in n for n in names)
    resumed = load_checkpoint(Path(job.results_dir) / "model_epoch_003_step_00012.pth")
    assert resumed["global_step"] == 12


def test_distillation_from_a_student_file_at_batch_size_one(trained, data, spec, ws):
    student_file = trained / "student_epoch_002_step_00008.pth"
    job = run_job(
        "nvdinov2",
        "train",
        spec_file=spec,
        overrides=[
            f"dataset.train_dataset.images_dir={data['images_test']}",
            *SIZES,
            "model.distill.enable=true",
            f"model.distill.pretrained_non_distill_pl_model_path={student_file}",
            "dataset.batch_size=1",
            "train.num_epochs=1",
        ],
        workspace=Workspace(ws),
    )
    assert job.status is JobStatus.DONE and torch.isfinite(torch.tensor(job.kpis["train_loss"]))
    results = Path(job.results_dir)
    names = {p.name for p in results.iterdir()}
    assert "student_epoch_001_step_00008.pth" in names and not any(n.startswith("teacher_") for n in names)
    state = load_checkpoint(results / "model_epoch_001_step_00008.pth")["state_dict"]
    loaded = torch.load(student_file, weights_only=True)["state_dict"]
    assert all(torch.equal(state[f"teacher.backbone.{k}"], v) for k, v in loaded.items())  # frozen
    assert any(k.startswith("student_ema.backbone.") for k in state)
    student_out = torch.load(results / "student_epoch_001_step_00008.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(student_out[k], state[f"student_ema.backbone.{k}"]) for k in student_out)


def test_distillation_without_a_teacher_file_is_one_spec_error(tiny_backbones, data, spec, ws):
    with pytest.raises(SpecError, match="model.distill.pretrained_non_distill_pl_model_path"):
        run_job(
            "nvdinov2",
            "train",
            spec_file=spec,
            overrides=[
                f"dataset.train_dataset.images_dir={data['images_test']}",
                *SIZES,
                "model.distill.enable=true",
            ],
            workspace=Workspace(ws),
        )


def test_nonfinite_loss_stops_with_what_to_change(tiny_backbones, data, spec, ws, monkeypatch):
    real = NVDINOv2Method.compute_losses

    def poisoned(self, *args, **kwargs):
        losses = real(self, *args, **kwargs)
        losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(NVDINOv2Method, "compute_losses", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan .*koleo_loss_weight=0"):
        run_job(
            "nvdinov2",
            "train",
            spec_file=spec,
            overrides=[
                f"dataset.train_dataset.images_dir={data['images_test']}",
                *SIZES,
                "train.num_epochs=1",
            ],
            workspace=Workspace(ws),
        )


def test_pretrained_model_path_starts_student_and_teacher(trained):
    from foveal.networks.nvdinov2.train import build_method

    student_file = trained / "student_epoch_002_step_00008.pth"
    obj = torch.load(student_file, weights_only=True)
    method = build_method(_cfg(obj["config"]), start=str(student_file))
    for part in (method.student, method.teacher):
        state = part["backbone"].state_dict()
        assert all(torch.equal(state[k], v) for k, v in obj["state_dict"].items())


def test_device_side_augmentation_and_packed_crops_train(tiny_backbones, data, spec, ws):
    """dataset.transform.gpu_augmentation (workers crop and flip, the colour work runs batched on
    the training device: the CPU here) with train.pack_crops: a train job with loader workers."""
    job = run_job(
        "nvdinov2",
        "train",
        spec_file=spec,
        overrides=[
            f"dataset.train_dataset.images_dir={data['images_train']}",
            *SIZES,
            "train.num_epochs=1",
            "dataset.workers=1",
            "dataset.transform.gpu_augmentation=true",
            "train.pack_crops=true",
        ],
        workspace=Workspace(ws),
        new=True,
    )
    assert job.status is JobStatus.DONE and math.isfinite(job.kpis["train_loss"])
