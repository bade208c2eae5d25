"""AutoML across machines: several `foveal automl` workers on one study in a shared storage (a real
PostgreSQL on loopback, Optuna's journal file), no trial run twice, and a worker killed mid-trial
leaving nothing Running: its trial is rerun by the surviving worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foveal.cli.main import main
from foveal.jobs.process import pid_alive, read_launch_file

pytestmark = pytest.mark.integration


def _worker(ws: Path, storage: str, overrides: list[str], *extra: str) -> subprocess.Popen:
    # The URL (with its password) in the environment, not on the command line where ps shows it.
    args = ["automl", "mae", "-w", str(ws), "--study", "shared", "--algorithm", "random",
            "--max-trials", "6", "--max-concurrent", "1", "--heartbeat", "1", "--params", "train.optim.lr",
            *extra, *overrides]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "foveal.cli.main", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FOVEAL_AUTOML_STORAGE": storage},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _trials(storage: str) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name="shared", storage=storage).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_two_workers_share_a_postgres_study_and_survive_a_killed_one(postgres_url, tmp_path, tiny_mae):
    overrides = tiny_mae(4)
    first = _worker(tmp_path, postgres_url, overrides)
    _wait_for(lambda: len(_trials(postgres_url)) >= 1, 120, "the first worker's study")
    second = _worker(tmp_path, postgres_url, overrides)
    password = postgres_url.split(":")[2].split("@")[0]
    assert password not in Path(f"/proc/{second.pid}/cmdline").read_bytes().decode(errors="replace")
    try:
        _wait_for(
            lambda: sum(t.state.name == "RUNNING" for t in _trials(postgres_url)) == 2, 120, "a trial per worker"
        )
        # Kill the first worker outright; its trial's job (its own process group) is orphaned.
        victim = next(t for t in _trials(postgres_url) if t.state.name == "RUNNING" and t.number == 0)
        orphan = read_launch_file(victim.user_attrs["results_dir"])
        first.kill()
        first.wait(10)
        _, err = second.communicate(timeout=420)
    finally:
        for worker in (first, second):
            if worker.poll() is None:
                worker.kill()
    assert second.returncode == 0, err[-2000:]
    trials = _trials(postgres_url)
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and "WAITING" not in states
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6 and len({t.number for t in complete}) == 6  # six distinct trials
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    assert [t.number for t in interrupted] == [victim.number]
    (rerun,) = [t for t in trials if t.user_attrs.get("restart_of") == victim.number]
    assert rerun.state.name == "COMPLETE" and rerun.params == victim.params
    assert rerun.user_attrs["job_id"] == victim.user_attrs["job_id"]  # the job resumed, not restarted
    assert not pid_alive(orphan["pid"])  # the dead worker's trial process was stopped
    assert password not in err  # the password never printed


def test_journal_storage_and_bad_storages(tmp_path, tiny_mae, capsys):
    storage = f"journal://{tmp_path / 'study.log'}"
    args = ["automl", "mae", "-w", str(tmp_path), "--storage", storage, "--study", "j", "--algorithm", "random",
            "--max-trials", "2", "--params", "train.optim.lr", *tiny_mae(1)]  # fmt: skip
    assert main(args) == 0
    assert (tmp_path / "study.log").is_file() and (tmp_path / "automl" / "j" / "report.html").is_file()
    # A second worker on the finished study joins it, finds the budget spent and ends at once.
    assert main(args) == 0
    capsys.readouterr()
    bad = [
        ("redis://localhost/0", "expected an RDB URL"),
        (f"journal://{tmp_path / 'missing' / 'x.log'}", "does not exist"),
        ("postgresql://user:hunter2@127.0.0.1:1/db", "cannot open the study storage"),
    ]
    for url, message in bad:
        assert main(["automl", "mae", "-w", str(tmp_path), "--storage", url, "--study", "b", *tiny_mae(1)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "hunter2" not in err[0], err
