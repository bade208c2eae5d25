"""Monitoring: status lines from status.json, the background monitor, and `foveal jobs watch`."""

from __future__ import annotations

import re
import time

import pytest

from foveal.engine.status import StatusWriter
from foveal.errors import UsageError
from foveal.jobs import JobRegistry, JobStatus, Workspace
from foveal.jobs.monitor import (
    Monitor,
    automl_line,
    format_eta,
    job_line,
    parse_interval,
    read_progress,
    watch_job,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300.0), ("30s", 30.0), ("1h", 3600.0), ("2", 120.0), ("0.5s", 0.5), (5, 300.0)],
)
def test_parse_interval(text, seconds):
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "-1m", "0", "m"])
def test_bad_interval_is_one_line(text):
    with pytest.raises(UsageError, match="interval .*(expected a duration|more than zero)"):
        parse_interval(text)


@pytest.fixture
def running_job(tmp_path):
    ws = Workspace(tmp_path).ensure()
    registry = JobRegistry(ws.db_path)
    job = registry.create("mae", "train", {"a": 1}, results_dir=ws.results_dir("j1"), job_id="j1")
    registry.mark_running(job.id, pid=__import__("os").getpid())
    writer = StatusWriter(ws.results_dir("j1") / "status.json")
    return registry, job, writer


def test_progress_folds_status_lines(running_job):
    registry, job, writer = running_job
    assert read_progress(job.results_dir).status is None
    writer.write("STARTED", "mae train started", epoch=0, max_epoch=10, step=0, max_step=200)
    writer.write(
        "RUNNING", "Epoch 2/10 done", kpi={"train_loss": 0.5, "val_loss": 0.4213}, epoch=2, max_epoch=10,
        step=40, max_step=200, eta=100.0,
    )  # fmt: skip
    writer.write(
        "RUNNING", "Epoch 3/10 done", kpi={"train_loss": 0.45}, epoch=3, max_epoch=10, step=60, eta=80.0
    )
    progress = read_progress(job.results_dir)
    assert (progress.epoch, progress.max_epoch, progress.step, progress.max_step) == (3, 10, 60, 200)
    assert progress.kpi == {"train_loss": 0.45, "val_loss": 0.4213} and progress.eta == 80.0
    line = job_line("train", registry.get(job.id), progress, metric="val_loss")
    assert line == "train j1 Running: epoch 3/10, step 60/200, val_loss=0.4213, ETA 0:01:20"
    assert format_eta(3725) == "1:02:05" and format_eta(None) == "?"


def test_automl_line():
    state = {"trials_done": 3, "trials_total": 8, "running": [4, 5], "best_value": 0.40123, "best_trial": 2}
    assert (
        automl_line(state, "val_loss")
        == "automl: trials 3/8 done (2 running), best val_loss=0.4012 (trial 2)"
    )
    assert automl_line({"trials_done": 0, "trials_total": 4}) == "automl: trials 0/4 done"


def test_monitor_emits_every_interval_from_a_thread(running_job):
    registry, job, writer = running_job
    writer.write("RUNNING", "Epoch 1/4 done", kpi={"train_loss": 0.9}, epoch=1, max_epoch=4, eta=3.0)
    lines: list[str] = []
    with Monitor(registry, 0.05, lines.append, metric="train_loss") as monitor:
        time.sleep(0.12)
        assert lines == []  # nothing is watched yet
        monitor.watch("train", job.id)
        time.sleep(0.2)
        monitor.automl({"trials_done": 1, "trials_total": 2})
        time.sleep(0.2)
    assert len(lines) >= 4
    assert re.fullmatch(
        r"\[\d\d:\d\d:\d\d\] train j1 Running: epoch 1/4, train_loss=0.9, ETA 0:00:03", lines[0]
    )
    assert lines[-1].endswith("automl: trials 1/2 done")
    count = len(lines)
    time.sleep(0.15)
    assert len(lines) == count  # stopped


def test_a_failing_tick_is_said_once_and_the_monitor_goes_on(running_job, caplog):
    registry, job, _ = running_job
    lines: list[str] = []
    monitor = Monitor(registry, 60.0, lines.append)
    monitor.watch("train", "no-such-job")
    with caplog.at_level("DEBUG", logger="foveal.jobs.monitor"):
        monitor.tick()
        monitor.tick()
    levels = [r.levelname for r in caplog.records]
    assert levels == ["WARNING", "DEBUG"] and "no status line this time" in caplog.records[0].message
    monitor.watch("train", job.id)
    monitor.tick()
    assert len(lines) == 1 and f"train {job.id}" in lines[0]


def test_watch_returns_when_the_job_ends(running_job):
    registry, job, writer = running_job
    lines: list[str] = []
    sleeps = []

    def finish_later(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:
            writer.write("RUNNING", "Epoch 1/1 done", kpi={"val_loss": 0.3}, epoch=1, max_epoch=1)
        else:
            writer.write("SUCCESS", "train finished", kpi={"val_loss": 0.3})
            registry.finish(job.id, JobStatus.DONE, kpis={"val_loss": 0.3})

    final = watch_job(registry, job.id, 60.0, lines.append, metric="val_loss", sleep=finish_later)
    assert final.status is JobStatus.DONE and sleeps == [60.0, 60.0]
    assert len(lines) == 3
    assert lines[1].endswith("train j1 Running: epoch 1/1, val_loss=0.3")
    assert lines[2].endswith("train j1 Done: epoch 1/1, val_loss=0.3")


def test_jobs_watch_cli_follows_a_job_started_elsewhere(running_job, capsys, tmp_path, monkeypatch):
    from foveal.cli.main import main
    from foveal.jobs import monitor

    registry, job, writer = running_job
    writer.write("RUNNING", "Epoch 1/2 done", kpi={"val_loss": 0.5}, epoch=1, max_epoch=2, eta=1.0)
    reads = []
    real = monitor.read_progress

    def job_fails_after_the_first_line(results_dir):
        reads.append(results_dir)
        progress = real(results_dir)
        if len(reads) == 1:  # "elsewhere", the job dies between two status lines
            writer.write("FAILURE", "boom", verbosity="ERROR")
            registry.finish(job.id, JobStatus.ERROR, message="boom: out of memory")
        return progress

    monkeypatch.setattr(monitor, "read_progress", job_fails_after_the_first_line)
    start = time.monotonic()
    code = main(["jobs", "watch", "j1", "--every", "0.2s", "-w", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1 and time.monotonic() - start >= 0.2
    assert out[0].endswith("train j1 Running: epoch 1/2, val_loss=0.5, ETA 0:00:01")
    assert out[1].endswith("train j1 Error: epoch 1/2, val_loss=0.5")
    assert out[2] == "job j1 failed: boom: out of memory" and len(out) == 3
    assert main(["jobs", "watch", "j1", "--every", "soon", "-w", str(tmp_path)]) == 2
    assert "interval 'soon': expected a duration" in capsys.readouterr().err
