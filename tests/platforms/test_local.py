"""The local platform: jobs in subprocesses with their own logs, cancel (handle and CLI),
a process that dies, and the concurrency limit."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from foveal.cli.main import main
from foveal.data.synthetic import make_demo_dataset
from foveal.engine.status import read_status
from foveal.errors import EXIT_TERMINATED
from foveal.jobs import JobStatus, Workspace
from foveal.jobs.lifecycle import prepare_job
from foveal.jobs.process import pid_alive, read_launch_file
from foveal.platforms.local import LocalPool, launch_job

pytestmark = pytest.mark.integration

TINY = [
    "model.arch=vit_tiny_patch16",
    "model.decoder_embed_dim=16",
    "dataset.augmentation.input_size=32",
    "dataset.batch_size=8",
    "dataset.num_workers_per_gpu=0",
]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local-shapes")
    return make_demo_dataset(out, num_train=16, num_val=4, num_test=4, image_size=32, num_workers=1)[
        "images_train"
    ]


def _prepare(ws: Workspace, images: Path, epochs: int):
    overrides = [*TINY, f"train.num_epochs={epochs}", f"dataset.train_data_sources={images}"]
    return prepare_job("mae", "train", overrides=overrides, workspace=ws, new=True)


def _wait_for(predicate, timeout: float = 240.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _first_epoch_done(results_dir: Path) -> bool:
    return any(line.get("status") == "RUNNING" for line in read_status(results_dir / "status.json"))


def test_job_runs_in_its_own_process_with_its_own_log(tmp_path, images):
    ws = Workspace(tmp_path)
    handle = launch_job(_prepare(ws, images, 1), ws)
    assert handle.pid != os.getpid()
    assert handle.wait(timeout=300) == 0
    job = handle.job()
    assert job.status is JobStatus.DONE and job.pid == handle.pid
    assert "train_loss" in job.kpis
    record = read_launch_file(handle.results_dir)
    assert record["pid"] == handle.pid and record["pgid"] == handle.pid
    assert "foveal.jobs.execute" in record["command"]
    assert handle.log_path.is_file() and "done" in handle.log_path.read_text()
    assert read_status(handle.results_dir / "status.json")[-1]["status"] == "SUCCESS"


@pytest.mark.slow
def test_cancel_from_the_handle_and_from_the_cli(tmp_path, images, capsys):
    ws = Workspace(tmp_path)
    first = launch_job(_prepare(ws, images, 200), ws)
    second = launch_job(_prepare(ws, images, 200), ws)
    _wait_for(
        lambda: _first_epoch_done(first.results_dir) and _first_epoch_done(second.results_dir),
        what="both jobs to finish an epoch",
    )

    job = first.cancel(grace_s=30)
    assert job.status is JobStatus.CANCELED
    assert first.poll() is not None and not pid_alive(first.pid)
    last = read_status(first.results_dir / "status.json")[-1]
    assert last["status"] == "FAILURE" and "SIGTERM" in last["message"]  # the runner closed it itself

    assert main(["jobs", "cancel", second.job_id, "-w", str(ws.root)]) == 0
    assert "Canceled (process stopped)" in capsys.readouterr().out
    _wait_for(lambda: second.poll() is not None, timeout=30, what="the CLI-canceled process to end")
    assert second.job().status is JobStatus.CANCELED
    with pytest.raises(ProcessLookupError):
        os.killpg(second.pid, 0)  # the whole process group is gone


def test_a_killed_process_closes_its_row_as_error(tmp_path, images):
    ws = Workspace(tmp_path)
    handle = launch_job(_prepare(ws, images, 200), ws)
    _wait_for(lambda: handle.job().status is JobStatus.RUNNING, what="the job to start")
    os.kill(handle.pid, signal.SIGKILL)
    assert handle.wait(timeout=30) == -signal.SIGKILL
    job = handle.job()
    assert job.status is JobStatus.ERROR
    assert "exited with code -9" in job.message


def test_pool_limits_concurrency(tmp_path, images):
    ws = Workspace(tmp_path)
    pool = LocalPool(ws, max_concurrent=1)
    handle = pool.submit(_prepare(ws, images, 200))
    assert pool.free_slots == 0
    with pytest.raises(RuntimeError, match="already run"):
        pool.submit(_prepare(ws, images, 1))
    pool.cancel_all(grace_s=10)
    assert pool.free_slots == 1
    assert handle.job().status is JobStatus.CANCELED
    assert json.loads((handle.results_dir / "launch.json").read_text())["pid"] == handle.pid


def test_sigterm_that_surfaces_as_a_library_error_is_still_recorded_as_sigterm(tmp_path, images, monkeypatch):
    # torch.save's writer turns the SIGTERM exception raised inside it into its own RuntimeError
    # ("unexpected pos ..."): the job must still read as terminated by SIGTERM, exit code 143.
    from foveal.jobs import execute

    ws = Workspace(tmp_path)
    prepared = _prepare(ws, images, 1)

    def interrupted_save(*args, **kwargs):
        execute._CURRENT["terminated"] = True  # what the SIGTERM handler records
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 56340672 vs 56340564")

    monkeypatch.setattr(
        execute, "execute_job", lambda prepared, **kw: _fail_as_runner(prepared, ws, interrupted_save)
    )
    monkeypatch.setattr(execute, "_CURRENT", {})
    assert execute.main([prepared.job.id, "-w", str(tmp_path)]) == EXIT_TERMINATED
    last = read_status(Path(prepared.job.results_dir) / "status.json")[-1]
    assert last["status"] == "FAILURE" and "SIGTERM" in last["message"]


def _fail_as_runner(prepared, ws, action):
    """What the runner does with an action's exception: a FAILURE line with its text, then re-raise."""
    from foveal.engine.status import StatusWriter

    try:
        action()
    except RuntimeError as exc:
        StatusWriter(Path(prepared.job.results_dir) / "status.json").write(
            "FAILURE", str(exc), verbosity="ERROR"
        )
        ws.open_registry().finish(prepared.job.id, JobStatus.ERROR, message=str(exc))
        raise


def test_concurrent_jobs_get_disjoint_gpu_sets(tmp_path, images, monkeypatch):
    """4 GPUs injected, 2 per job: two jobs run at once, each on its own pair; a third waits."""
    monkeypatch.setenv("FOVEAL_LOCAL_GPUS", "4")
    ws = Workspace(tmp_path)
    pool = LocalPool(ws, max_concurrent=None, gpus_per_job=2)
    assert pool.max_concurrent == 2 and pool.free_slots == 2
    first, second = pool.submit(_prepare(ws, images, 200)), pool.submit(_prepare(ws, images, 200))
    assert pool.free_slots == 0
    sets = []
    for handle in (first, second):
        environ = Path(f"/proc/{handle.pid}/environ").read_bytes().split(b"\0")
        (line,) = [e.decode() for e in environ if e.startswith(b"CUDA_VISIBLE_DEVICES=")]
        sets.append(set(line.split("=", 1)[1].split(",")))
        record = read_launch_file(handle.results_dir)
        assert record["resources"]["CUDA_VISIBLE_DEVICES"] == line.split("=", 1)[1]
    assert sets[0] | sets[1] == {"0", "1", "2", "3"} and not sets[0] & sets[1]
    _wait_for(lambda: all(h.job().status is JobStatus.RUNNING for h in (first, second)), what="both running")
    pool.cancel_all(grace_s=10)
    assert pool.free_slots == 2 and pool.free_gpus == ["0", "1", "2", "3"]


def test_gpus_and_threads_are_shared_out(tmp_path, monkeypatch):
    monkeypatch.delenv("FOVEAL_LOCAL_GPUS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    from foveal.errors import UsageError
    from foveal.platforms.local import visible_gpus

    assert visible_gpus() == ["3", "5"]
    with pytest.raises(UsageError, match="train.num_gpus=4 but 2 GPU.s. are visible here"):
        LocalPool(tmp_path, None, gpus_per_job=4)
    assert LocalPool(tmp_path, None, gpus_per_job=1).job_env() == {"CUDA_VISIBLE_DEVICES": "3"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a CPU machine: threads are what is shared
    cpu = LocalPool(tmp_path, 2, cores=8)
    assert cpu.job_env() == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4"}
    assert LocalPool(tmp_path, 3, cores=2).job_env()["OMP_NUM_THREADS"] == "1"
    assert LocalPool(tmp_path, 1, cores=8).job_env() == {}  # alone: torch's own default
    assert LocalPool(tmp_path, None).max_concurrent == 1
