"""Online evaluation of self-supervised runs: the monitors on known inputs, the warnings, and an
nvdinov2 run whose status.json carries val_knn_top1 and the collapse monitors at every interval,
equal to the offline evaluate action's kNN on the same checkpoint."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from nvdinov2_tiny import TINY_VIT, TRAIN

from foveal.cli.main import main
from foveal.data.synthetic import make_demo_dataset
from foveal.engine.online_eval import (
    KnnProtocol,
    LearningWatch,
    OnlineEvaluation,
    effective_rank,
    feature_std,
    mean_entropy,
    split_knn_top1,
)
from foveal.engine.status import read_status
from foveal.networks.nvdinov2 import backbones


def test_feature_std_is_zero_on_collapse_and_one_over_sqrt_d_when_spread():
    collapsed = torch.ones(64, 16) + 1e-9 * torch.randn(64, 16)
    assert feature_std(collapsed) < 1e-6
    spread = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0))
    assert feature_std(spread) == pytest.approx(1 / math.sqrt(16), rel=0.05)


def test_effective_rank_counts_the_directions_used():
    gen = torch.Generator().manual_seed(0)
    line = torch.randn(256, 1, generator=gen) @ torch.randn(1, 32, generator=gen)  # rank 1 (fp32 rounding)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-4)
    basis = torch.eye(32)[:4]  # four orthogonal directions, equal energy
    rows = torch.cat([basis * s for s in (1.0,) * 8])
    assert effective_rank(rows) == pytest.approx(4.0, rel=1e-6)
    assert effective_rank(torch.randn(512, 32, generator=gen)) > 25


def test_mean_entropy_of_a_uniform_teacher_is_ln_k():
    assert mean_entropy(torch.full((8, 512), 1 / 512)) == pytest.approx(math.log(512))
    assert mean_entropy(torch.eye(8)) == pytest.approx(0.0, abs=1e-9)


def test_online_knn_separates_classes_and_compute_empties_the_buffer():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=gen) * 5
    labels = [i % 3 for i in range(60)]
    feats = centres[labels] + 0.1 * torch.randn(60, 8, generator=gen)
    online = OnlineEvaluation(KnnProtocol(k=5))
    online.add(feats[:30], torch.tensor(labels[:30]))
    online.add(feats[30:], labels[30:])
    metrics = online.compute()
    assert metrics["val_knn_top1"] == 1.0 and set(metrics) == {"val_knn_top1", "val_feature_std", "val_effective_rank"}
    assert len(online) == 0 and online.compute() == {}
    shuffled = [labels[i] for i in torch.randperm(60, generator=gen).tolist()]
    assert split_knn_top1(feats, shuffled, KnnProtocol(k=5)) < 0.7  # labels unrelated to features
    online.add(feats, None)  # unlabeled: monitors only
    assert "val_knn_top1" not in online.compute()


def test_learning_watch_says_each_failure_once_with_what_to_try(caplog):
    watch = LearningWatch(num_prototypes=512, feature_dim=64, hints={"uniform_teacher": "Try X."})
    with caplog.at_level(logging.WARNING):
        assert watch.check({"dino_loss": 6.20}, epoch=1, max_epochs=10) == []  # too early to tell
        (line,) = watch.check({"dino_loss": 6.20, "teacher_entropy": 6.2}, epoch=4, max_epochs=10)
        assert "ln K = 6.238" in line and line.endswith("Try X.")
        assert watch.check({"teacher_entropy": 6.2}, epoch=5, max_epochs=10) == []  # said once
        assert watch.check({"val_feature_std": 1e-3}, epoch=5, max_epochs=10) == []  # low from the start
        (collapse,) = watch.check({"val_feature_std": 1e-4}, epoch=5, max_epochs=10)
        assert "fell from 1.00e-03" in collapse and "collapsing" in collapse
    watch.knn_at_init = 0.5
    assert watch.check({"val_knn_top1": 0.6}, epoch=6, max_epochs=10) == []
    (regressed,) = watch.check({"val_knn_top1": 0.4}, epoch=6, max_epochs=10)
    assert "below its value at initialisation (0.5000)" in regressed
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 3  # one per rule


# ------------------------------------------------------------------------------ nvdinov2 run


@pytest.fixture(scope="module")
def tiny_backbones():
    real = backbones.create_backbone
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backbones, "create_backbone", lambda name, **kw: real(name, **{**kw, **TINY_VIT}))
        yield


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    return make_demo_dataset(
        tmp_path_factory.mktemp("shapes"),
        num_train=32,
        num_val=24,
        num_test=0,
        image_size=32,
        num_classes=3,
        num_workers=1,
        archives=False,
    )


@pytest.mark.integration
def test_nvdinov2_reports_online_knn_and_monitors_every_interval(tiny_backbones, shapes, tmp_path, capsys):
    ws = tmp_path / "ws"
    code = main(
        [
            "-w",
            str(ws),
            "nvdinov2",
            "train",
            *TRAIN,
            "train.num_epochs=3",
            f"dataset.train_dataset.images_dir={shapes['images_train']}",
            f"dataset.val_dataset.images_dir={shapes['labeled_val']}",
        ]
    )
    assert code == 0
    (results,) = [p for p in (ws / "results").iterdir() if p.is_dir()]
    epochs = [line for line in read_status(results / "status.json") if line.get("status") == "RUNNING"]
    assert len(epochs) == 3
    for line in epochs:
        kpi = line["kpi"]
        assert 0.0 <= kpi["val_knn_top1"] <= 1.0
        assert kpi["val_feature_std"] > 0 and kpi["val_effective_rank"] >= 1
        assert 0 < kpi["teacher_entropy"] <= math.log(128) + 1e-6 and kpi["feature_std"] > 0
    online = epochs[-1]["kpi"]["val_knn_top1"]

    # the offline evaluate action on the same teacher checkpoint and data: the same figure
    (teacher,) = sorted(results.glob("teacher_epoch_003_*.pth"))
    code = main(
        [
            "-w",
            str(ws),
            "nvdinov2",
            "evaluate",
            *TRAIN,
            f"evaluate.checkpoint={teacher}",
            f"dataset.val_dataset.images_dir={shapes['labeled_val']}",
            "evaluate.linear_probe_steps=0",
        ]
    )
    assert code == 0
    evaluated = max((ws / "results").iterdir(), key=lambda p: p.stat().st_mtime)
    offline = [line for line in read_status(evaluated / "status.json") if line.get("kpi")][-1]["kpi"]["knn_top1"]
    assert abs(online - offline) <= 0.01, (online, offline)


@pytest.mark.integration
def test_nvdinov2_without_labels_still_reports_the_collapse_monitors(tiny_backbones, shapes, tmp_path):
    ws = tmp_path / "ws"
    code = main(
        [
            "-w",
            str(ws),
            "nvdinov2",
            "train",
            *TRAIN,
            "train.num_epochs=1",
            f"dataset.train_dataset.images_dir={shapes['images_train']}",
            f"dataset.val_dataset.images_dir={shapes['images_train']}",  # no class folders
        ]
    )
    assert code == 0
    (results,) = [p for p in (ws / "results").iterdir() if p.is_dir()]
    (line,) = [x for x in read_status(results / "status.json") if x.get("status") == "RUNNING"]
    assert "val_knn_top1" not in line["kpi"] and line["kpi"]["val_effective_rank"] >= 1


@pytest.mark.integration
def test_report_page_of_an_nvdinov2_run_opens_in_a_browser(tiny_backbones, shapes, tmp_path, render_page):
    """The train job's report.html (written when it ends, and again by `foveal report`) loads in
    headless Chromium with every figure decoded: the curves, the online kNN and collapse monitors."""
    ws = tmp_path / "ws"
    data = [f"dataset.train_dataset.images_dir={shapes['images_train']}",
            f"dataset.val_dataset.images_dir={shapes['labeled_val']}"]  # fmt: skip
    assert main(["-w", str(ws), "nvdinov2", "train", *TRAIN, *data]) == 0
    (results,) = [p for p in (ws / "results").iterdir() if p.is_dir()]
    page = results / "report.html"
    text = page.read_text()
    for part in ("KPIs", "val_knn_top1", "differ from the defaults", "learning monitors (online kNN and collapse)"):
        assert part in text
    page.unlink()
    assert main(["-w", str(ws), "report", results.name[:12]]) == 0 and page.is_file()
    shown = render_page(page)
    assert shown["images"] >= 4 and shown["decoded"] == shown["images"] and shown["errors"] == 0
    assert shown["drawn"] > 0.02  # a blank page: < 0.01
