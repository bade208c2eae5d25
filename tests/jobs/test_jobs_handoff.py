import json
from dataclasses import dataclass

import pytest

from foveal.jobs import HandoffError, Job, JobStatus, apply_handoff, resolve_handoff, select_checkpoint
from foveal.networks.registry import Network

pytestmark = pytest.mark.unit


@dataclass
class DummyConfig:
    results_dir: str = ""


def _action(cfg, ctx):  # never called: handoff only reads the descriptor
    raise AssertionError


ACTIONS = {a: _action for a in ("train", "evaluate", "export", "gen_trt_engine")}

DINO = Network(
    name="dino",
    config_cls=DummyConfig,
    actions=ACTIONS,
    checkpoint_globs={
        "student": "student_epoch_*.pth",
        "teacher": "teacher_epoch_*.pth",
        "model": "model_epoch_*.pth",
    },
    handoff={
        "train": {
            "train.resume_training_checkpoint_path": "resume_model",
            "train.pretrained_model_path": "ptm_if_no_resume_model",
        },
        "evaluate": {"evaluate.checkpoint": "parent_model", "evaluate.parent_folder": "parent_model_folder"},
        "export": {
            "export.checkpoint": "parent_model",
            "export.onnx_file": "create_onnx_file",
            "results_dir": "output_dir",
            "encryption_key": "key",
        },
        "gen_trt_engine": {"gen_trt_engine.onnx_file": "parent_onnx_file"},
    },
)
MAE = Network(
    name="mae",
    config_cls=DummyConfig,
    actions=ACTIONS,
    handoff={"export": {"export.checkpoint": "parent_model"}},
)


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def _job(tmp_path, network="dino", action="train", status=JobStatus.DONE, **kw) -> Job:
    results = tmp_path / f"{network}-{action}"
    results.mkdir(exist_ok=True)
    return Job(
        id=f"{network}-{action}-1",
        network=network,
        action=action,
        status=status,
        results_dir=str(results),
        **kw,
    )


@pytest.fixture
def dino_parent(tmp_path):
    parent = _job(tmp_path, spec={"encryption_key": "secret"})
    folder = tmp_path / "dino-train"
    for epoch in (1, 2, 3):
        _touch(
            folder,
            f"student_epoch_{epoch:03d}_step_{epoch * 10:05d}.pth",
            f"teacher_epoch_{epoch:03d}_step_{epoch * 10:05d}.pth",
            f"model_epoch_{epoch:03d}_step_{epoch * 10:05d}.pth",
        )
    _touch(folder, "model_latest.pth")
    return parent


def _write_index(folder, best):
    index = {"checkpoints": [{"path": best, "epoch": 2, "step": 20, "metrics": {"loss": 0.1}}], "best": best}
    (folder / "checkpoints.json").write_text(json.dumps(index))


def test_selection_latest_epoch_and_best_fallback(dino_parent):
    assert select_checkpoint(DINO, dino_parent, "latest").name == "student_epoch_003_step_00030.pth"
    assert (
        select_checkpoint(DINO, dino_parent, "best").name == "student_epoch_003_step_00030.pth"
    )  # no record
    for choice in ("epoch:1", 1, "1"):
        assert select_checkpoint(DINO, dino_parent, choice).name == "student_epoch_001_step_00010.pth"
    with pytest.raises(
        HandoffError, match="no student_epoch_\\*.pth checkpoint for epoch 9; epochs available: 1, 2, 3"
    ):
        select_checkpoint(DINO, dino_parent, "epoch:9")
    with pytest.raises(HandoffError, match="use best, latest or epoch:N"):
        select_checkpoint(DINO, dino_parent, "newest")


def test_best_from_checkpoints_json(dino_parent, tmp_path):
    _write_index(tmp_path / "dino-train", "student_epoch_002_step_00020.pth")
    assert select_checkpoint(DINO, dino_parent, "best").name == "student_epoch_002_step_00020.pth"


def test_best_of_another_kind_maps_to_same_epoch(dino_parent, tmp_path):
    _write_index(tmp_path / "dino-train", "student_epoch_003_step_00030.pth")
    # The artifact wins over checkpoints.json; it names a full checkpoint, the student twin is used.
    dino_parent.artifacts["best_checkpoint"] = str(tmp_path / "dino-train" / "model_epoch_001_step_00010.pth")
    assert select_checkpoint(DINO, dino_parent, "best").name == "student_epoch_001_step_00010.pth"


def test_checkpoints_one_folder_down(tmp_path):
    parent = _job(tmp_path, network="mae")
    _touch(tmp_path / "mae-train" / "train", "model_epoch_004.pth", "model_epoch_010.pth")
    assert select_checkpoint(MAE, parent, "latest").name == "model_epoch_010.pth"


def test_export_rules(dino_parent, tmp_path):
    out = tmp_path / "export-job"
    overrides = resolve_handoff(DINO, "export", dino_parent, job_results_dir=out, selection="epoch:2")
    assert overrides == {
        "export.checkpoint": str(tmp_path / "dino-train" / "student_epoch_002_step_00020.pth"),
        "export.onnx_file": str(out / "dino.onnx"),
        "results_dir": str(out),
        "encryption_key": "secret",
    }


def test_evaluate_parent_model_folder(dino_parent, tmp_path):
    overrides = resolve_handoff(DINO, "evaluate", dino_parent, job_results_dir=tmp_path / "e")
    assert overrides["evaluate.parent_folder"] == dino_parent.results_dir
    assert overrides["evaluate.checkpoint"].endswith("student_epoch_003_step_00030.pth")


def test_wrong_checkpoint_kind_names_the_right_one(tmp_path):
    mae_parent = _job(tmp_path, network="mae")
    _touch(tmp_path / "mae-train", "model_epoch_001.pth")
    with pytest.raises(HandoffError) as info:
        resolve_handoff(DINO, "export", mae_parent, job_results_dir=tmp_path / "x")
    assert str(info.value) == (
        "job mae-train-1 (mae train) has no student_epoch_*.pth checkpoint; pick a dino train job"
    )


def test_parent_must_be_done(dino_parent, tmp_path):
    dino_parent.status = JobStatus.RUNNING
    with pytest.raises(HandoffError, match="job dino-train-1 is Running; wait for it or pick a finished job"):
        resolve_handoff(DINO, "export", dino_parent, job_results_dir=tmp_path / "x")
    dino_parent.status = JobStatus.ERROR
    with pytest.raises(HandoffError, match="ended with Error; pick a Done job"):
        resolve_handoff(DINO, "evaluate", dino_parent, job_results_dir=tmp_path / "x")


def test_action_mismatch(tmp_path):
    export_parent = _job(tmp_path, action="export", artifacts={"onnx": "/r/dino.onnx"})
    with pytest.raises(HandoffError, match="needs a train job as parent.*is a export job"):
        resolve_handoff(DINO, "evaluate", export_parent, job_results_dir=tmp_path / "x")
    assert resolve_handoff(DINO, "gen_trt_engine", export_parent, job_results_dir=tmp_path / "x") == {
        "gen_trt_engine.onnx_file": "/r/dino.onnx"
    }
    train_parent = _job(tmp_path)
    with pytest.raises(HandoffError, match="recorded no ONNX file; pick a dino export job"):
        resolve_handoff(DINO, "gen_trt_engine", train_parent, job_results_dir=tmp_path / "x")
    # An action without handoff rules gets nothing filled (the runner checks availability).
    assert resolve_handoff(DINO, "inference", train_parent, job_results_dir=tmp_path / "x") == {}


def test_resume_model_wins_over_ptm_even_from_a_killed_parent(dino_parent, tmp_path):
    dino_parent.status = JobStatus.ERROR  # killed mid-run: resuming it is the point
    overrides = resolve_handoff(DINO, "train", dino_parent, job_results_dir=tmp_path / "t")
    assert overrides == {
        "train.resume_training_checkpoint_path": str(
            tmp_path / "dino-train" / "model_epoch_003_step_00030.pth"
        )
    }


def test_ptm_when_parent_has_no_full_checkpoint(tmp_path):
    parent = _job(tmp_path)
    _touch(tmp_path / "dino-train", "student_epoch_005.pth")
    overrides = resolve_handoff(DINO, "train", parent, job_results_dir=tmp_path / "t")
    assert overrides == {
        "train.pretrained_model_path": str(tmp_path / "dino-train" / "student_epoch_005.pth")
    }


def test_explicit_keys_win(dino_parent, tmp_path):
    # An explicit resume path suppresses both rules: resume is the user's, ptm must stay unset.
    explicit = {"train.resume_training_checkpoint_path"}
    assert (
        resolve_handoff(DINO, "train", dino_parent, job_results_dir=tmp_path / "t", explicit_keys=explicit)
        == {}
    )
    # An explicit checkpoint skips its rule, so a parent without that kind is no error.
    mae_parent = _job(tmp_path, network="mae")
    overrides = resolve_handoff(
        DINO, "export", mae_parent, job_results_dir=tmp_path / "x", explicit_keys={"export.checkpoint"}
    )
    assert "export.checkpoint" not in overrides and overrides["results_dir"] == str(tmp_path / "x")


def test_no_parent_fills_only_own_paths(tmp_path):
    overrides = resolve_handoff(DINO, "export", None, job_results_dir=tmp_path / "x")
    assert overrides == {
        "export.onnx_file": str(tmp_path / "x" / "dino.onnx"),
        "results_dir": str(tmp_path / "x"),
    }


def test_apply_handoff_merges_without_clobbering():
    spec = {"export": {"checkpoint": "mine.pth", "opset_version": 17}, "results_dir": None, "train": None}
    overrides = {
        "export.checkpoint": "parent.pth",
        "export.onnx_file": "/r/x.onnx",
        "results_dir": "/r",
        "train.pretrained_model_path": "p.pth",
        "evaluate.checkpoint": "e.pth",
    }
    merged = apply_handoff(spec, overrides, {"export.checkpoint", "evaluate"})
    assert merged == {
        "export": {"checkpoint": "mine.pth", "opset_version": 17, "onnx_file": "/r/x.onnx"},
        "results_dir": "/r",
        "train": {"pretrained_model_path": "p.pth"},
    }
    assert spec["export"] == {"checkpoint": "mine.pth", "opset_version": 17}  # input untouched
    with pytest.raises(HandoffError, match="cannot set export.checkpoint.x: export.checkpoint is a str"):
        apply_handoff(spec, {"export.checkpoint.x": 1}, set())
