"""normal-train end to end on the demo data: plain and AutoML on local, slurm runner files
(write-only without sbatch; a full chain through fake sbatch/srun/sacct that run the script)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foveal.cli.main import main
from foveal.data.synthetic import make_demo_dataset
from foveal.jobs import JobRegistry, JobStatus, Workspace
from foveal.jobs import monitor as monitor_mod
from foveal.networks.mae import models
from foveal.platforms.runner import job_command

pytestmark = pytest.mark.integration

TINY_VIT = {"depth": 1, "embed_dim": 32, "num_heads": 2}
TINY = [
    "model.arch=vit_tiny_patch16",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "dataset.augmentation.input_size=32",
    "dataset.batch_size=16",
    "dataset.num_workers_per_gpu=0",
    "train.optim.warmup_epochs=0",
    "train.num_epochs=1",
]
BASH = shutil.which("bash")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("shapes")
    return make_demo_dataset(
        out, num_train=32, num_val=16, num_test=8, image_size=32, num_classes=2, num_workers=1
    )


@pytest.fixture
def tiny_backbones(monkeypatch):
    real = models.create_backbone
    monkeypatch.setattr(models, "create_backbone", lambda name, **kw: real(name, **{**kw, **TINY_VIT}))


def _workflow(capsys, ws: Path, data, *extra: str) -> tuple[int, dict, str]:
    argv = [
        "workflow", "normal-train", "--model", "mae",
        "--train-dataset-uri", str(data["images_train.tar.gz"]),
        "--eval-dataset-uri", str(data["images_val"]),
        "-w", str(ws), "--format", "json", *extra, *TINY,
    ]  # fmt: skip
    code = main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


@pytest.fixture
def monitor_ticks_during_train(monkeypatch):
    """Hold the train stage until the monitor thread has printed a line about it.

    A tiny train finishes in well under the monitor's interval once the suite has warmed up,
    so without this the periodic line is a matter of timing (seen failing in CI)."""
    real = monitor_mod.Monitor.watch

    def watch(self, stage, job_id):
        real(self, stage, job_id)
        if stage == "train" and job_id is not None:
            seen, deadline = self.lines_emitted, time.monotonic() + 30
            while self.lines_emitted == seen and time.monotonic() < deadline:
                time.sleep(0.01)

    monkeypatch.setattr(monitor_mod.Monitor, "watch", watch)


def test_plain_train_evaluate_export_on_local(
    capsys, tmp_path, data, tiny_backbones, monitor_ticks_during_train
):
    code, summary, err = _workflow(
        capsys, tmp_path, data, "--automl-policy", "off", "--export", "--yes", "--monitor-interval", "0.005"
    )
    assert code == 0, err
    assert summary["status"] == "done" and summary["train_mode"] == "plain" and summary["automl"] is None
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["train", "evaluate", "export"]
    train = stages["train"]
    assert train["status"] == "Done" and {"train_loss", "val_loss"} <= set(train["kpis"])
    assert stages["evaluate"]["parent_id"] == stages["export"]["parent_id"] == train["job_id"]
    assert stages["evaluate"]["kpis"]["reconstruction_loss"] > 0
    assert stages["export"]["kpis"]["onnx_max_abs_diff"] <= 1e-4
    assert Path(summary["artifacts"]["export.onnx"]).is_file()
    assert summary["base_checkpoint"]["source"] == "from scratch (no default declared)"
    assert summary["metric"]["metric"] == "val_loss" and summary["environment"]["platform"] == "local"
    registry = JobRegistry(Workspace(tmp_path).db_path)
    jobs = {j.action: j for j in registry.list()}
    assert jobs["evaluate"].parent_id == jobs["export"].parent_id == jobs["train"].id
    assert all(j.status is JobStatus.DONE for j in jobs.values())
    # Monitoring: timestamped status lines on stderr even though nothing here is a terminal.
    assert any(line.startswith("[") and f"train {train['job_id']}" in line for line in err.splitlines())
    # The workflow's page (and summary.json) beside the stages' own pages, linked from it.
    page = Path(summary["report"])
    assert page.parent.parent == tmp_path / "workflows" and (page.parent / "summary.json").is_file()
    text = page.read_text()
    assert train["job_id"] in text and (Path(train["results_dir"]) / "report.html").as_uri() in text
    assert "The trained model&#x27;s curves" in text or "The trained model's curves" in text


def test_without_eval_or_export_only_train_runs(capsys, tmp_path, data, tiny_backbones):
    argv = [
        "workflow", "normal-train", "--model", "mae", "--train-dataset-uri", str(data["images_train"]),
        "--automl-policy", "off", "--no-monitor", "-w", str(tmp_path), *TINY,
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "normal-train mae on local: done" in out and "train: plain train (--automl-policy off)" in out
    assert "metric train_loss (minimize)" in out  # no eval set: the fallback metric
    assert [j.action for j in JobRegistry(Workspace(tmp_path).db_path).list()] == ["train"]


def test_slurm_with_yes_writes_a_valid_sbatch_script_without_sbatch(capsys, tmp_path, data, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no sbatch, no ssh: write only
    monkeypatch.setenv("FOVEAL_SLURM_SSH_KEY", "/keys/very-secret-key")
    ws = tmp_path / "ws"
    code, summary, err = _workflow(capsys, ws, data, "--platform", "slurm", "--yes", "--no-monitor")
    assert code == 0, err
    # Credentials are read, never written: not in the spec, the script, the registry, the output.
    written = [p.read_bytes() for p in ws.rglob("*") if p.is_file()]
    assert written and not any(b"very-secret-key" in blob for blob in written)
    assert "very-secret-key" not in json.dumps(summary) + err
    assert summary["status"] == "pending" and summary["train_mode"] == "plain"
    (train,) = summary["stages"]
    script = Path(train["runner_file"])
    assert script == Path(train["results_dir"]) / "job.sbatch" and script.is_file()
    subprocess.run([BASH, "-n", str(script)], check=True)
    srun = shlex.split(next(x for x in script.read_text().splitlines() if x.startswith("srun ")))
    assert srun[-6:] == job_command(train["job_id"], ws.absolute())
    assert f"--container-image={summary['environment']['image']}" in srun
    assert not train["submitted"] and train["next_step"].startswith(
        "submit it on the login node with: sbatch"
    )
    job = JobRegistry(Workspace(ws).db_path).get(train["job_id"])
    assert job.platform == "slurm" and job.status is JobStatus.PENDING
    assert (Path(job.results_dir) / "experiment.yaml").is_file()


def _fake_slurm(folder: Path) -> None:
    """sbatch runs the script at once (as a one-node allocation would), srun drops its options."""
    folder.mkdir()
    scripts = {
        "sbatch": 'script="${@: -1}"; SLURM_JOB_NODELIST=node1 bash "$script" > "${script%/*}/logs/fake.out" 2>&1; '
        'echo "$?" > "${script%/*}/exit_code"; echo 9001',
        "srun": 'while [[ "$1" == --* ]]; do shift; done; exec "$@"',
        "scontrol": "echo node1",
        "squeue": "true",
        "sacct": "echo COMPLETED",
        "python": f'exec {shlex.quote(sys.executable)} "$@"',  # the venv's interpreter
    }
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)


@pytest.mark.slow
def test_slurm_chain_runs_through_fake_clients(capsys, tmp_path, data, monkeypatch):
    folder = tmp_path / "fakebin"
    _fake_slurm(folder)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FOVEAL_SLURM_CONTAINER", "none")  # the fake srun runs this Python
    code, summary, err = _workflow(
        capsys, tmp_path / "ws", data, "--platform", "slurm", "--yes", "--export", "--no-monitor"
    )
    assert code == 0, err
    assert summary["status"] == "done", summary
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["train", "evaluate", "export"]
    for stage in stages.values():
        assert stage["submitted"] and stage["scheduler_id"] == "9001" and stage["platform"] == "slurm"
        assert (
            stage["status"] == "Done"
            and (Path(stage["results_dir"]) / "exit_code").read_text().strip() == "0"
        )
    assert stages["export"]["parent_id"] == stages["train"]["job_id"]
    assert Path(stages["export"]["artifacts"]["onnx"]).is_file()


@pytest.mark.slow
def test_automl_then_evaluate_then_export(capsys, tmp_path, data):
    code, summary, err = _workflow(
        capsys, tmp_path, data, "--export", "--yes", "--max-trials", "2", "--algorithm", "random",
        "--monitor-interval", "0.05",
    )  # fmt: skip
    assert code == 0, err
    assert summary["train_mode"] == "automl" and summary["status"] == "done"
    automl = summary["automl"]
    assert automl["trials"] == 2 and automl["metric"] == "val_loss" and automl["direction"] == "minimize"
    stages = {s["stage"]: s for s in summary["stages"]}
    assert (
        stages["train"]["job_id"] == automl["best_job_id"]
        and stages["train"]["automl_trial"] == automl["best_trial"]
    )
    assert stages["evaluate"]["parent_id"] == stages["export"]["parent_id"] == automl["best_job_id"]
    assert Path(summary["artifacts"]["export.onnx"]).is_file()
    assert "automl: trials" in err


def test_a_failed_stage_stops_the_chain_and_exits_1(capsys, tmp_path, data, tiny_backbones):
    empty = tmp_path / "empty_val"
    empty.mkdir()
    argv = [
        "workflow", "normal-train", "--model", "mae", "--train-dataset-uri", str(data["images_train"]),
        "--eval-dataset-uri", str(empty), "--automl-policy", "off", "--export", "--no-monitor",
        "-w", str(tmp_path / "ws"), "--format", "json", *TINY,
    ]  # fmt: skip
    code = main(argv)
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert code == 1 and summary["status"] == "failed"
    (train,) = summary["stages"]  # evaluate and export never ran
    assert train["status"] == "Error" and str(empty) in train["message"]
    assert [j.status for j in JobRegistry(Workspace(tmp_path / "ws").db_path).list()] == [JobStatus.ERROR]
