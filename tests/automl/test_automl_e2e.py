"""`foveal automl` end to end on tiny mae pretraining runs: failures and the all-fail stop,
Hyperband pruning with the best checkpoint kept, and resume after the study process is killed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foveal.cli.main import main
from foveal.engine.status import read_status
from foveal.jobs import JobRegistry, JobStatus, Workspace
from foveal.tuning import StudyRequest, run_study
from foveal.tuning.study import AutoMLError

pytestmark = pytest.mark.integration


def _rows(study_dir: Path) -> list[dict]:
    return json.loads((study_dir / "trials.json").read_text())["trials"]


def test_every_trial_failing_stops_with_the_first_error(tmp_path, tiny_mae, capsys):
    base = ["automl", "mae", "-w", str(tmp_path), "--algorithm", "random", "--max-trials", "3"]
    # A warm-up range that the spec's 2 epochs leave empty is refused before any trial.
    args = [*base, "--params", "train.optim.warmup_epochs", "--range", "train.optim.warmup_epochs=2:5"]
    assert main([*args, *tiny_mae(2, "train.optim.lr_scheduler=cosine")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --range train.optim.warmup_epochs: empty range [2, 1] after math_cond "
        "'< train.num_epochs' (< 2 in this spec); widen the range or change the spec"
    )
    # With num_epochs searched too (1-2), the bound is not known up front: every sampled warm-up
    # (2-5) is rejected by the spec when the trial is prepared, before any process starts.
    args = [*base, "--params", "train.optim.warmup_epochs,train.num_epochs"]
    args += ["--range", "train.optim.warmup_epochs=2:5", "--range", "train.num_epochs=1:2"]
    args += tiny_mae(2, "train.optim.lr_scheduler=cosine")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(
        "error: study mae-random: all 3 trials failed; first error (trial 0): spec error:"
    )
    assert "train.optim.warmup_epochs" in err[0]
    rows = _rows(tmp_path / "automl" / "mae-random")
    assert [r["state"] for r in rows] == ["FAIL"] * 3  # failures count against --max-trials
    assert all("warm-up epochs" in r["error"] for r in rows)
    assert JobRegistry(Workspace(tmp_path).db_path).list() == []


@pytest.mark.slow
def test_trials_failing_in_their_process_record_the_error(tmp_path, tiny_mae):
    missing = tmp_path / "no-such-images"
    request = StudyRequest(
        network="mae",
        workspace=tmp_path,
        overrides=[*tiny_mae(1), f"dataset.train_data_sources={missing}"],
        algorithm="random",
        max_trials=2,
        params=["train.optim.lr"],
    )
    with pytest.raises(AutoMLError, match="all 2 trials failed") as info:
        run_study(request)
    assert str(missing) in str(info.value)
    jobs = JobRegistry(Workspace(tmp_path).db_path).list()
    assert len(jobs) == 2 and all(j.status is JobStatus.ERROR for j in jobs)


@pytest.mark.slow
def test_hyperband_prunes_and_keeps_the_best_checkpoint(tmp_path, tiny_mae, capsys):
    args = ["automl", "mae", "-w", str(tmp_path), "--algorithm", "hyperband", "--max-trials", "5"]
    args += ["--params", "train.optim.lr", "--range", "train.optim.lr=1e-6:1e-1:log"]
    args += ["--study", "hb", "--delete-intermediate-ckpt", "--format", "json"]
    # one checkpoint per trial (less disk); no warm-up, so the first epoch already tells the lrs apart.
    # A trial whose process has already ended is not pruned (its compute is spent), so the trials
    # must outlive the first rungs (epochs 1 and 3): 6 epochs (3 were seen to finish too fast in CI).
    args += tiny_mae(6, "train.checkpoint_interval=6", "train.optim.warmup_epochs=0")
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["metric"], result["direction"]) == ("train_loss", "minimize")
    states = [t["state"] for t in result["trials"]]
    assert len(states) == 5 and "PRUNED" in states
    pruned = [t for t in result["trials"] if t["state"] == "PRUNED"]
    assert all(t["pruned_at_epoch"] < 6 and t["epochs_reported"] < 6 for t in pruned)
    complete = [t for t in result["trials"] if t["state"] == "COMPLETE"]
    best = min(complete, key=lambda t: t["value"])  # minimize: the smallest value wins
    assert result["best_trial"] == best["number"] and result["best_value"] == best["value"]
    assert result["best_params"] == best["params"]
    # The pruned trials' jobs were canceled (or, when the tiny job finished its last epoch before the
    # cancel reached it, are Done: seen once in CI), the others finished.
    registry = JobRegistry(Workspace(tmp_path).db_path)
    for t in result["trials"]:
        expected = (JobStatus.CANCELED, JobStatus.DONE) if t["state"] == "PRUNED" else (JobStatus.DONE,)
        assert registry.get(t["job_id"]).status in expected
    # best_model/ holds the best trial's last checkpoint; the other trials' were deleted.
    best_ckpt = Path(result["best_checkpoint"])
    assert best_ckpt.parent == tmp_path / "automl" / "hb" / "best_model" and best_ckpt.is_file()
    record = json.loads((best_ckpt.parent / "best_trial.json").read_text())
    assert record["job_id"] == best["job_id"]
    for t in result["trials"]:
        left = list(Path(t["results_dir"]).rglob("*.pth"))
        assert bool(left) == (t["number"] == best["number"])
    study = tmp_path / "automl" / "hb"
    with open(study / "trials.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 5
    for png in ("optimization_history.png", "param_importance.png"):
        assert (study / png).read_bytes()[:4] == b"\x89PNG"


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _epoch_done(folder: Path) -> bool:
    return any(line.get("status") == "RUNNING" for line in read_status(folder / "status.json"))


def _succeeded(folder: Path) -> bool:
    return any(line.get("status") == "SUCCESS" for line in read_status(folder / "status.json"))


@pytest.mark.slow
def test_resume_after_the_study_process_is_killed(tmp_path, tiny_mae):
    overrides = tiny_mae(3)
    args = ["automl", "mae", "-w", str(tmp_path), "--algorithm", "random", "--max-trials", "3"]
    args += ["--params", "train.optim.lr", "--study", "rs", *overrides]
    trials = tmp_path / "automl" / "rs" / "trials"
    process = subprocess.Popen(
        [sys.executable, "-m", "foveal.cli.main", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _wait_for(
            lambda: _succeeded(trials / "trial_000") and _epoch_done(trials / "trial_001"), 400, "trial 1"
        )
    finally:
        process.send_signal(signal.SIGKILL)  # no cleanup at all: trial 1's process is orphaned
        process.wait()
    first_job = JobRegistry(Workspace(tmp_path).db_path).list()[-1]

    result = run_study(
        StudyRequest(
            network="mae",
            workspace=tmp_path,
            overrides=overrides,
            algorithm="random",
            max_trials=3,
            params=["train.optim.lr"],
            study_name="rs",
            resume=True,
        )
    )
    by_number = {t["number"]: t for t in result.trials}
    assert by_number[0]["state"] == "COMPLETE" and by_number[1]["state"] == "INTERRUPTED"
    restarts = [t for t in result.trials if t["restart_of"] == 1]
    assert len(restarts) == 1 and restarts[0]["state"] == "COMPLETE"
    assert restarts[0]["params"] == by_number[1]["params"]
    assert restarts[0]["job_id"] == by_number[1]["job_id"]  # the same job, resumed
    counted = [t for t in result.trials if t["state"] in ("COMPLETE", "PRUNED", "FAIL")]
    assert len(counted) == 3
    lrs = [t["params"]["train.optim.lr"] for t in counted]
    assert len(set(lrs)) == 3  # no finished trial was run again

    registry = JobRegistry(Workspace(tmp_path).db_path)
    jobs = registry.list()
    assert len(jobs) == 3 and all(j.status is JobStatus.DONE for j in jobs)
    done_first = read_status(Path(first_job.results_dir) / "status.json")
    assert first_job.id == by_number[0]["job_id"]
    assert [line["status"] for line in done_first].count("SUCCESS") == 1  # trial 0 not redone
    resumed = read_status(Path(by_number[1]["results_dir"]) / "status.json")
    assert any("resumed" in line["message"] for line in resumed if line["status"] == "STARTED")
    assert result.best_value == min(t["value"] for t in counted if t["state"] == "COMPLETE")


def test_timeout_stops_running_trials_for_a_later_resume(tmp_path, tiny_mae):
    request = StudyRequest(
        network="mae",
        workspace=tmp_path,
        overrides=tiny_mae(50),
        algorithm="random",
        max_trials=2,
        timeout_s=2.0,
        params=["train.optim.lr"],
    )
    result = run_study(request)
    assert result.best_trial is None
    (trial,) = result.trials
    assert trial["state"] == "RUNNING"  # not counted: --resume runs it again
    job = JobRegistry(Workspace(tmp_path).db_path).get(trial["job_id"])
    assert job.status is JobStatus.CANCELED


def test_ctrl_c_cancels_concurrent_trials_and_leaves_them_to_resume(tmp_path, tiny_mae):
    args = ["automl", "mae", "-w", str(tmp_path), "--algorithm", "random", "--max-trials", "4"]
    args += ["--max-concurrent", "2", "--params", "train.optim.lr", "--study", "cc", *tiny_mae(50)]
    process = subprocess.Popen(
        [sys.executable, "-m", "foveal.cli.main", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job inherits SIGINT ignored, and Python then never raises
        # KeyboardInterrupt: give the child the terminal's default, as a user's Ctrl-C meets it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    registry = JobRegistry(Workspace(tmp_path).db_path)
    try:
        _wait_for(
            lambda: (
                registry.db_path.exists()
                and len([j for j in registry.list() if j.status is JobStatus.RUNNING]) == 2
            ),
            120,
            "two trials running at once",
        )
        assert len(registry.list()) == 2  # --max-concurrent 2: no third job yet
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err  # typer maps Ctrl-C to exit code 130
    jobs = registry.list()
    assert len(jobs) == 2 and all(j.status is JobStatus.CANCELED for j in jobs)
    rows = _rows(tmp_path / "automl" / "cc")
    assert [r["state"] for r in rows] == ["RUNNING", "RUNNING"]  # --resume restarts them
