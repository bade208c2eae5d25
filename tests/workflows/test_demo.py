"""``foveal demo`` chains MAE pretrain -> finetune -> evaluate -> export as parent-linked jobs."""

from __future__ import annotations

import json

import pytest

from foveal.cli.main import main
from foveal.jobs.workspace import Workspace
from foveal.workflows import demo

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_demo_runs_the_mae_chain_and_prints_the_summary(tmp_path, monkeypatch, capsys):
    # The real recipe at a size a test affords: 64 training images, two epochs per training stage.
    monkeypatch.setattr(demo, "DEMO_DATA", {**demo.DEMO_DATA, "num_train": 64, "num_val": 16, "num_test": 16})
    monkeypatch.setattr(demo, "DEMO_COMMON", [*demo.DEMO_COMMON, "dataset.batch_size=16"])
    code = main(
        ["-w", str(tmp_path / "ws"), "demo", "--epochs", "2", "--finetune-epochs", "2", "--format", "json"]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["pretrain", "finetune", "evaluate", "export"]
    assert all(s["status"] == "Done" for s in stages.values())
    assert 0.0 <= stages["evaluate"]["kpis"]["top1"] <= 1.0
    assert stages["export"]["kpis"]["onnx_max_abs_diff"] <= 1e-4
    jobs = {j.id: j for j in Workspace(tmp_path / "ws").open_registry().list()}
    assert jobs[stages["finetune"]["job_id"]].parent_id == stages["pretrain"]["job_id"]
    assert jobs[stages["export"]["job_id"]].parent_id == stages["finetune"]["job_id"]
    experiment = (tmp_path / "ws" / "results" / stages["finetune"]["job_id"] / "experiment.yaml").read_text()
    assert "stage: finetune" in experiment and "vit_micro_patch4" in experiment


@pytest.mark.parametrize(
    ("task", "kpi", "outputs"),
    [
        ("detection", "mAP50", "images_annotated"),
        ("segmentation", "mIoU", "overlays"),
        ("depth", "abs_rel", "colour"),
        ("zero-shot", "top1", None),
        ("grounding", "mAP50", "images_annotated"),
        ("instance", "mAP", "overlays"),
    ],
)
def test_demo_task_ports_a_local_model_and_runs_its_chain(task, kpi, outputs, tmp_path, monkeypatch, capsys):
    """``foveal demo --task``: a small Hugging Face model of the task, built locally, is ported, then
    trained, evaluated, run and exported on the annotated synthetic shapes (one epoch here)."""
    monkeypatch.setattr(demo, "TASK_DEMO_DATA", {**demo.TASK_DEMO_DATA, "num_train": 32, "num_val": 16})
    code = main(["-w", str(tmp_path / "ws"), "demo", "--task", task, "--epochs", "1", "--format", "json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["train", "evaluate", "inference", "export"] and summary["port"] == "passed"
    assert all(s["status"] == "Done" for s in stages.values())
    assert kpi in stages["evaluate"]["kpis"] and stages["export"]["kpis"]["onnx_max_abs_diff"] <= 1e-4
    if outputs:
        assert list((tmp_path / "ws").glob(f"results/{stages['inference']['job_id']}/{outputs}/*.png"))


def test_demo_with_an_unknown_task_is_one_line(tmp_path, capsys):
    code = main(["-w", str(tmp_path / "ws"), "demo", "--task", "panoptic"])
    err = capsys.readouterr().err
    assert code == 2 and "--task 'panoptic'" in err and "detection" in err and "Traceback" not in err
