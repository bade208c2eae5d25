"""AutoML for nvdinov2 on a fair objective: trials ranked on the online kNN top-1 of a labeled eval
set, else on train_loss over a space without the parameters that change the loss's scale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foveal.cli.main import main
from foveal.data.synthetic import make_demo_dataset
from foveal.engine.status import read_status
from foveal.tuning import StudyRequest
from foveal.tuning.controller import StudyController

pytestmark = pytest.mark.integration

# vit_t at 32 px (4 patches), small heads: a trial is one short subprocess
TINY = [
    "model.backbone.teacher_type=vit_t",
    "model.backbone.student_type=vit_t",
    "model.backbone.patch_size=16",
    "model.backbone.img_size=32",
    "model.head.hidden_dim=32",
    "model.head.bottleneck_dim=16",
    "dataset.batch_size=8",
    "dataset.workers=0",
    "dataset.transform.global_crops_size=32",
    "dataset.transform.local_crops_size=16",
    "dataset.transform.n_local_crops=0",
    "train.num_epochs=2",
    "train.precision=fp32",
    "train.num_prototypes=64",
    "train.schedulers.learning_rate.warm_up_steps=0",
    "train.schedulers.teacher_temperature.warm_up_steps=2",
    "train.schedulers.teacher_temperature.max_decay_steps=2",
]
LOSS_SCALE = {"train.schedulers.teacher_temperature.val_base", "train.loss.student_temperature"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    return make_demo_dataset(
        tmp_path_factory.mktemp("shapes"),
        num_train=16,
        num_val=18,
        num_test=0,
        image_size=32,
        num_classes=3,
        num_workers=1,
        archives=False,
    )


def test_without_eval_data_the_loss_ranks_over_a_space_without_its_scale(shapes, tmp_path):
    train = f"dataset.train_dataset.images_dir={shapes['images_train']}"
    controller = StudyController(StudyRequest(network="nvdinov2", workspace=tmp_path, overrides=[*TINY, train]))
    assert (controller.metric, controller.direction) == ("train_loss", "minimize")
    searched = {p.key for p in controller.space.params}
    assert searched and not searched & LOSS_SCALE and "train.schedulers.learning_rate.val_base" in searched
    val = f"dataset.val_dataset.images_dir={shapes['labeled_val']}"
    controller = StudyController(
        StudyRequest(network="nvdinov2", workspace=tmp_path, overrides=[*TINY, train, val])
    )
    assert (controller.metric, controller.direction) == ("val_knn_top1", "maximize")
    assert LOSS_SCALE <= {p.key for p in controller.space.params}


def test_naming_a_loss_scale_parameter_when_ranking_on_the_loss_is_one_line(shapes, tmp_path, capsys):
    code = main(
        ["automl", "nvdinov2", "-w", str(tmp_path), "--params", "train.loss.student_temperature", *TINY,
         f"dataset.train_dataset.images_dir={shapes['images_train']}"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "train.loss.student_temperature: changes the scale of train_loss" in err[0]
    assert "dataset.val_dataset.images_dir" in err[0]


@pytest.mark.slow
@pytest.mark.parametrize("labeled", [True, False], ids=["val_knn_top1", "train_loss"])
def test_automl_nvdinov2_four_trials_end_with_a_best_model(shapes, tmp_path, capsys, labeled, render_page):
    data = [f"dataset.train_dataset.images_dir={shapes['images_train']}"]
    if labeled:
        data.append(f"dataset.val_dataset.images_dir={shapes['labeled_val']}")
    args = ["automl", "nvdinov2", "-w", str(tmp_path), "--algorithm", "random", "--max-trials", "4"]
    assert main([*args, "--study", "s", "--format", "json", *TINY, "train.num_epochs=1", *data]) == 0
    result = json.loads(capsys.readouterr().out)
    metric = "val_knn_top1" if labeled else "train_loss"
    assert result["metric"] == metric and result["best_value"] is not None
    assert Path(result["best_checkpoint"]).is_file()
    values = [t["value"] for t in result["trials"] if t["state"] == "COMPLETE"]
    assert len(values) == 4
    best = max(values) if labeled else min(values)
    assert result["best_value"] == best
    searched = set(result["trials"][0]["params"])
    assert bool(searched & LOSS_SCALE) is labeled
    trial_status = read_status(Path(result["trials"][0]["results_dir"]) / "status.json")
    assert (metric in [line for line in trial_status if line.get("kpi")][-1]["kpi"]) is True
    # the study's page: trials table, Optuna's history and the importances, in a real browser
    page = tmp_path / "automl" / "s" / "report.html"
    assert result["artifacts"]["report"] == str(page) and "AutoML study s" in page.read_text()
    shown = render_page(page)
    assert shown["images"] >= 1 and shown["decoded"] == shown["images"] and shown["errors"] == 0
    assert shown["drawn"] > 0.02
    assert (Path(result["trials"][0]["results_dir"]) / "report.html").is_file()  # each trial's own page
