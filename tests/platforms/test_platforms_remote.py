"""Remote jobs: the registry row names the platform; the scheduler's state closes a job that died
before recording its result; the workflow writes kubernetes/docker runner files with --image."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from foveal.cli.main import main
from foveal.jobs import JobRegistry, JobStatus, Workspace
from foveal.platforms.remote import prepare_remote_job, wait_remote
from foveal.platforms.runner import job_command

pytestmark = pytest.mark.unit


class StubRunner:
    """A runner whose scheduler answers from a list (the last answer repeats)."""

    def __init__(self, answers, on_poll=None):
        self.answers = list(answers)
        self.on_poll = on_poll
        self.platform = type("P", (), {"name": "slurm"})()

    def poll(self, scheduler_id):
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if self.on_poll:
            self.on_poll(answer)
        return answer


@pytest.fixture
def prepared(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    ws = Workspace(tmp_path / "ws")
    job = prepare_remote_job(
        "mae", "train", "slurm", overrides=[f"dataset.train_data_sources={images}"], workspace=ws
    )
    return ws, job


def test_prepared_remote_job_is_pending_on_its_platform(prepared):
    ws, job = prepared
    assert job.platform == "slurm" and job.status is JobStatus.PENDING
    assert (Path(job.results_dir) / "experiment.yaml").is_file()
    assert Path(job.results_dir) == ws.results_dir(job.id)


def test_scheduler_end_without_a_record_closes_the_job(prepared):
    ws, job = prepared
    naps = []
    final, state = wait_remote(
        job.id, StubRunner(["PENDING", "RUNNING", "ERROR"]), "42", ws, 5.0, sleep=naps.append
    )
    assert state == "ERROR" and naps == [5.0, 5.0]
    assert final.status is JobStatus.ERROR
    assert final.message.startswith("slurm job 42 ended (ERROR) without the job recording a result")


def test_a_job_that_records_its_end_wins_over_the_scheduler(prepared):
    ws, job = prepared
    registry = JobRegistry(ws.db_path)

    def job_finishes(answer):
        if answer == "DONE":  # the job wrote its own result before the scheduler noticed
            registry.mark_running(job.id, pid=1)
            registry.finish(job.id, JobStatus.DONE, kpis={"train_loss": 0.5})

    final, state = wait_remote(
        job.id, StubRunner(["RUNNING", "DONE"], job_finishes), "42", ws, 0, sleep=lambda s: None
    )
    assert final.status is JobStatus.DONE and final.kpis == {"train_loss": 0.5} and state == "DONE"


@pytest.mark.parametrize(("platform", "file"), [("kubernetes", "job.yaml"), ("docker", "docker_run.sh")])
def test_workflow_writes_runner_files_with_the_given_image(platform, file, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # kubectl / docker hidden: write only
    images = tmp_path / "images"
    images.mkdir()
    ws = tmp_path / "ws"
    code = main(
        [
            "workflow", "normal-train", "--model", "nvdinov2", "--train-dataset-uri", str(images),
            "--platform", platform, "--image", "lab/foveal:7", "--no-monitor", "-w", str(ws), "--format", "json",
        ]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["environment"] == {
        "platform": platform,
        "image": "lab/foveal:7",
        "source": "--image",
        "confirmed": "--image",
    }
    (train,) = summary["stages"]
    path = Path(train["runner_file"])
    assert path == Path(train["results_dir"]) / file and not train["submitted"]
    command = job_command(train["job_id"], ws.absolute())
    if platform == "kubernetes":
        container = yaml.safe_load(path.read_text())["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "lab/foveal:7" and container["command"] == command
    else:
        line = next(x for x in path.read_text().splitlines() if x.startswith("docker run"))
        assert line.endswith(" ".join(shlex.quote(a) for a in ["lab/foveal:7", *command]))
    assert train["next_step"].startswith(("submit it with: kubectl apply -f", "start it where Docker runs"))
