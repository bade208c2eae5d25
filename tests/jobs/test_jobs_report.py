"""report.html's parts from a job's own files, `foveal report` on bad targets, and the browser probe
itself (a broken figure is caught, so the browser tests can fail)."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from foveal.cli.main import main
from foveal.engine.status import StatusWriter
from foveal.jobs.report import (
    embed_png,
    epoch_curves,
    html_page,
    job_report_html,
    pictures,
    spec_differences,
    write_report,
)


def test_epoch_curves_keep_the_last_value_of_each_epoch_and_skip_non_numbers():
    lines = [
        {"status": "STARTED", "epoch": 0},
        {"status": "RUNNING", "epoch": 1, "kpi": {"train_loss": 2.0, "note": "x", "flag": True}},
        {"status": "RUNNING", "epoch": 2, "kpi": {"train_loss": 1.5, "val_knn_top1": float("nan")}},
        {"status": "RUNNING", "epoch": 2, "kpi": {"train_loss": 1.4}},  # a resumed run's epoch 2
        {"status": "SUCCESS", "kpi": {"train_loss": 9.0}},
    ]
    assert epoch_curves(lines) == {"train_loss": [(1, 2.0), (2, 1.4)]}


def test_spec_differences_name_every_changed_leaf():
    spec = {"train": {"num_epochs": 3, "optim": {"lr": 0.1, "wd": 0.0}}, "dataset": {"root": "/d"}}
    defaults = {"train": {"num_epochs": 10, "optim": {"lr": 0.1, "wd": 0.0}}, "dataset": {"root": None}}
    assert spec_differences(spec, defaults) == [
        {"key": "dataset.root", "value": "/d", "default": None},
        {"key": "train.num_epochs", "value": 3, "default": 10},
    ]


def test_pictures_prefer_named_figures_and_cap_each_folder(tmp_path):
    for name in ("confusion_matrix.png", *(f"overlays/{i}.png" for i in range(6))):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    found = [p.relative_to(tmp_path).as_posix() for _, p in pictures([tmp_path])]
    assert found[0] == "confusion_matrix.png" and len(found) == 5  # 1 + 4 of the 6 overlays


def test_a_job_without_curves_still_has_a_page(tmp_path):
    StatusWriter(tmp_path / "status.json").write("SUCCESS", "done", kpi={"top1": 0.5})
    page = job_report_html(tmp_path)
    assert "top1" in page and "logged no metric curves" in page and "<img" not in page


def test_report_of_an_unknown_target_is_one_line(tmp_path, capsys):
    assert main(["-w", str(tmp_path), "report", "nosuchjob"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nosuchjob: not a job of" in err[0] and "foveal jobs list" in err[0]


@pytest.mark.integration
def test_the_browser_probe_catches_a_broken_figure_and_a_blank_page(tmp_path, render_page):
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), (20, 60, 160)).save(buffer, format="PNG")
    good = embed_png(buffer.getvalue(), "a blue figure")
    broken = embed_png(b"not a png", "a broken figure")
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "blank").mkdir()
    shown = render_page(write_report(tmp_path / "good" / "report.html", html_page("t", [good])))
    assert (shown["images"], shown["decoded"], shown["errors"]) == (1, 1, 0) and shown["drawn"] > 0.01
    shown = render_page(write_report(tmp_path / "bad" / "report.html", html_page("t", [good, broken])))
    assert (shown["images"], shown["decoded"]) == (2, 1)
    shown = render_page(write_report(tmp_path / "blank" / "report.html", "<html><body></body></html>"))
    assert shown["images"] == 0 and not math.isclose(shown["drawn"], 1.0) and shown["drawn"] < 0.01
