"""The SLURM platform on a real one-node cluster (tests/conftest.py starts slurmctld, slurmd and munge
on loopback): a normal-train workflow submitted with sbatch runs to Done with its status from the
job itself and the scheduler; a submitted job cancelled with `foveal jobs cancel` is scancel'ed
and recorded Canceled."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foveal.cli.main import main
from foveal.data.synthetic import make_demo_dataset
from foveal.engine.status import read_status
from foveal.jobs import JobRegistry, JobStatus, Workspace

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY_MAE = [
    "model.arch=vit_tiny_patch16",
    "model.decoder_embed_dim=16",
    "dataset.augmentation.input_size=32",
    "dataset.batch_size=8",
    "dataset.num_workers_per_gpu=0",
]


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    """The cluster's config, and the runner settings of a cluster without containers or GPUs:
    the nodes run this Python."""
    for key, value in {**slurm_cluster, "FOVEAL_SLURM_CONTAINER": "none", "FOVEAL_SLURM_GPUS": "0",
                       "FOVEAL_SLURM_PYTHON": sys.executable, "FOVEAL_SLURM_TIME": "00:10:00"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    return slurm_cluster


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slurm-shapes")
    return make_demo_dataset(out, num_train=16, num_val=4, num_test=4, image_size=32, num_workers=1)["images_train"]


def _scheduler_state(job_id: str, env: dict) -> str:
    import os

    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                         env={**os.environ, **env}).stdout  # fmt: skip
    return out.split("JobState=")[1].split()[0] if "JobState=" in out else ""


def test_a_train_job_submitted_with_sbatch_runs_to_done(slurm_env, images, tmp_path, capsys):
    argv = ["workflow", "normal-train", "--model", "mae", "--platform", "slurm", "--automl-policy", "off",
            "--train-dataset-uri", str(images), "-w", str(tmp_path), "--yes", "--format", "json",
            "--poll-interval", "1", "--no-monitor",
            *TINY_MAE, "train.num_epochs=2"]  # fmt: skip
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    (train,) = summary["stages"]
    assert summary["status"] == "done" and train["status"] == "Done", summary
    assert train["submitted"] and train["scheduler_state"] == "DONE" and train["scheduler_id"]
    results = Path(train["results_dir"])
    runner = json.loads((results / "runner.json").read_text())
    assert runner["cancel_argv"] == ["scancel", train["scheduler_id"]]
    assert Path(runner["runner_file"]).read_text().startswith("#!/bin/bash")
    lines = read_status(results / "status.json")
    assert lines[-1]["status"] == "SUCCESS" and {"train_loss"} <= set(lines[-1]["kpi"])
    assert (results / "logs" / f"slurm-{train['scheduler_id']}.out").is_file()
    job = JobRegistry(Workspace(tmp_path).db_path).get(train["job_id"])
    assert job.status is JobStatus.DONE and job.platform == "slurm" and job.kpis["train_loss"] > 0
    assert _scheduler_state(train["scheduler_id"], slurm_env) == "COMPLETED"


def test_a_submitted_job_cancelled_with_scancel_is_recorded_canceled(slurm_env, images, tmp_path, capsys):
    from foveal.platforms.remote import launch_remote, prepare_remote_job
    from foveal.platforms.runner import get_runner

    ws = Workspace(tmp_path)
    job = prepare_remote_job("mae", "train", "slurm", workspace=ws,
                             overrides=[*TINY_MAE, "train.num_epochs=500", f"dataset.train_data_sources={images}"])  # fmt: skip
    outcome = launch_remote(job, get_runner("slurm"), ws, image="local", wait=False)
    assert outcome.submitted and outcome.scheduler_id
    registry = JobRegistry(ws.db_path)
    deadline = time.monotonic() + 120
    while registry.get(job.id).status is not JobStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.5)
    assert registry.get(job.id).status is JobStatus.RUNNING
    assert main(["jobs", "cancel", job.id, "-w", str(tmp_path)]) == 0
    deadline = time.monotonic() + 60
    while not registry.get(job.id).status.is_terminal and time.monotonic() < deadline:
        time.sleep(0.5)
    assert registry.get(job.id).status is JobStatus.CANCELED
    deadline = time.monotonic() + 60  # COMPLETING while slurmd reaps the step
    while _scheduler_state(outcome.scheduler_id, slurm_env) == "COMPLETING" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _scheduler_state(outcome.scheduler_id, slurm_env) == "CANCELLED"


def test_a_two_task_srun_trains_with_ddp(slurm_env, images, tmp_path):
    """`srun --ntasks-per-node=2`: Lightning's SLURM environment ranks the two processes srun started (gloo on
    CPU); 16 images at batch 8 over 2 ranks is one step per epoch, and rank 0 alone saves."""
    import os

    argv = ["srun", "-N", "1", "--ntasks-per-node=2", "--export=ALL", sys.executable, "-m", "foveal.cli.main", "-w", str(tmp_path),
            "mae", "train", *TINY_MAE, "train.num_epochs=1", f"dataset.train_data_sources={images}",
            "train.distributed_strategy=ddp"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "LOCAL_RANK", "NODE_RANK")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    saved = sorted(tmp_path.glob("results/*/model_epoch_*.pth"))
    assert [p.name for p in saved] == ["model_epoch_001_step_00001.pth"]


def test_an_automl_study_runs_its_trials_as_slurm_jobs(slurm_env, images, tmp_path, capsys):
    args = ["automl", "mae", "-w", str(tmp_path), "--platform", "slurm", "--algorithm", "random",
            "--max-trials", "2", "--max-concurrent", "2", "--params", "train.optim.lr", "--study", "onslurm",
            "--format", "json", *TINY_MAE, "train.num_epochs=1", f"dataset.train_data_sources={images}"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert [t["state"] for t in result["trials"]] == ["COMPLETE", "COMPLETE"] and result["best_checkpoint"]
    for trial in result["trials"]:
        record = json.loads((Path(trial["results_dir"]) / "runner.json").read_text())
        assert record["platform"] == "slurm"
        deadline = time.monotonic() + 60  # the job records Done just before its process exits
        while _scheduler_state(record["scheduler_id"], slurm_env) != "COMPLETED" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _scheduler_state(record["scheduler_id"], slurm_env) == "COMPLETED"
