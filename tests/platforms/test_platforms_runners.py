"""Runner files (sbatch script, Job manifest, docker run script): syntax, schema, the exact
command line, no secrets; submission and tracking through fake clients that record their args."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from foveal.platforms import ResolvedSettings
from foveal.platforms.docker import DockerRunner
from foveal.platforms.kubernetes import KubernetesRunner, k8s_name
from foveal.platforms.runner import RunnerJob, SubmitError, get_runner, job_command
from foveal.platforms.slurm import SlurmRunner

pytestmark = pytest.mark.unit

JOB_ID = "20260101-120000-abc123"


@pytest.fixture
def job(tmp_path) -> RunnerJob:
    ws = tmp_path / "my workspace"  # a space: quoting must hold
    return RunnerJob(JOB_ID, "mae", "train", ws / "results" / JOB_ID, ws, "registry/foveal:1", num_nodes=2)


def _bin_with(tmp_path: Path, **scripts: str) -> Path:
    """A folder holding fake executables (bash scripts) that append their argv to calls.log."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f'#!/bin/bash\necho "{name} $*" >> "{folder}/calls.log"\n{body}\n')
        path.chmod(0o755)
    return folder


def _only_path(monkeypatch, folder: Path) -> None:
    """PATH = the fakes + a folder with bash only: the real clients on this machine are hidden."""
    tools = folder.parent / "tools"
    tools.mkdir(exist_ok=True)
    for tool in ("bash", "cat", "head"):
        real = shutil.which(tool)
        if real and not (tools / tool).exists():
            (tools / tool).symlink_to(real)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{tools}")


def _calls(folder: Path) -> list[str]:
    log = folder / "calls.log"
    return log.read_text().splitlines() if log.is_file() else []


def test_command_line_is_the_prepared_job_entry_point(job):
    assert job_command(JOB_ID, job.workspace) == [
        "python", "-m", "foveal.jobs.execute", JOB_ID, "-w", str(job.workspace)
    ]  # fmt: skip
    # The entry point exists and takes exactly these arguments.
    out = subprocess.run(
        [sys.executable, "-m", "foveal.jobs.execute", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "job_id" in out and "--workspace" in out


def test_sbatch_script_is_valid_bash_with_the_exact_command(job, monkeypatch):
    settings = ResolvedSettings("slurm", {"partition": "gpu", "account": "vision", "ssh_key": "/secret/id"})
    path = SlurmRunner(settings).write(job)
    assert path == job.results_dir / "job.sbatch" and os.access(path, os.X_OK)
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --account=vision",
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=1",
    ):
        assert line in text.splitlines()
    assert f"#SBATCH --output={job.results_dir}/logs/slurm-%j.out" in text
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    argv = shlex.split(srun)
    assert argv[-6:] == job_command(JOB_ID, job.workspace)
    assert f"--container-image={job.image}" in argv
    assert "/secret/id" not in text  # credentials are never written


def test_sbatch_without_container_runtime_runs_the_node_python(job):
    text = SlurmRunner(ResolvedSettings("slurm", {"container_runtime": "none", "gpus_per_node": "0"})).render(
        job
    )
    srun = shlex.split(next(line for line in text.splitlines() if line.startswith("srun ")))
    assert srun == ["srun", *job_command(JOB_ID, job.workspace)]
    assert "--gpus-per-node" not in text


def test_slurm_submit_and_track_through_fake_clients(job, tmp_path, monkeypatch):
    folder = _bin_with(
        tmp_path,
        sbatch='echo "4242;cluster"',
        squeue='[ -f "${0%/*}/left_queue" ] || echo RUNNING',
        sacct="echo 'COMPLETED'",
    )
    _only_path(monkeypatch, folder)
    runner = SlurmRunner()
    path = runner.write(job)
    assert runner.can_submit()
    assert runner.submit(job, path) == "4242"
    record = json.loads((job.results_dir / "runner.json").read_text())
    assert record == {
        "platform": "slurm",
        "runner_file": str(path),
        "scheduler_id": "4242",
        "submit_command": shlex.join(["sbatch", "--parsable", str(path)]),
        "cancel_argv": None,  # no scancel on this PATH (tests/platforms/test_slurm_cluster.py has one)
    }
    assert runner.poll("4242") == "RUNNING"
    (folder / "left_queue").touch()
    assert runner.poll("4242") == "DONE"
    calls = _calls(folder)
    assert calls[0] == f"sbatch --parsable {path}"
    assert "squeue -h -j 4242 -o %T" in calls and "sacct -n -X -P -j 4242 -o State" in calls


@pytest.mark.parametrize(
    ("answer", "state"),
    [
        ("PENDING", "PENDING"),
        ("FAILED", "ERROR"),
        ("CANCELLED+", "CANCELED"),
        ("TIMEOUT", "ERROR"),
        ("", "UNKNOWN"),
    ],
)
def test_slurm_states(answer, state):
    assert SlurmRunner().parse_poll(["", answer]) == state


def test_slurm_submits_over_ssh_when_sbatch_is_not_local(job, tmp_path, monkeypatch):
    folder = _bin_with(tmp_path, ssh="echo 77")
    _only_path(monkeypatch, folder)
    settings = ResolvedSettings("slurm", {"hostname": "login1", "user": "ana", "ssh_key": "~/.ssh/k"})
    runner = SlurmRunner(settings)
    assert runner.submit(job, runner.write(job)) == "77"
    key = str(Path("~/.ssh/k").expanduser())
    assert _calls(folder) == [
        f"ssh -o BatchMode=yes -i {key} ana@login1 sbatch --parsable {runner.path(job)}"
    ]


def test_no_client_means_write_only_with_a_hint(job, tmp_path, monkeypatch):
    _only_path(monkeypatch, _bin_with(tmp_path))
    for runner in (SlurmRunner(), KubernetesRunner(), DockerRunner()):
        path = runner.write(job)
        assert path.is_file() and not runner.can_submit()
        with pytest.raises(SubmitError, match="no client installed; .*" + runner.path(job).name):
            runner.submit(job, path)
        assert runner.poll("x") == "UNKNOWN"


def test_failed_submission_is_one_line(job, tmp_path, monkeypatch):
    folder = _bin_with(tmp_path, sbatch="echo 'sbatch: error: invalid partition' >&2; exit 1")
    _only_path(monkeypatch, folder)
    runner = SlurmRunner()
    with pytest.raises(SubmitError, match=r"sbatch failed \(exit 1\): sbatch: error: invalid partition"):
        runner.submit(job, runner.write(job))
    assert not (job.results_dir / "runner.json").exists()


def test_kubernetes_manifest_is_a_valid_batch_job(job):
    settings = ResolvedSettings("kubernetes", {"namespace": "ml", "workspace_pvc": "ws-pvc", "gpus": "2"})
    path = KubernetesRunner(settings).write(job)
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 1
    manifest = docs[0]
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    meta = manifest["metadata"]
    assert meta["name"] == k8s_name(JOB_ID) and meta["namespace"] == "ml"
    import re

    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", meta["name"])
    for value in meta["labels"].values():
        assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", value), value
    spec = manifest["spec"]
    assert spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == job.image and container["command"] == job_command(JOB_ID, job.workspace)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["volumeMounts"] == [{"name": "workspace", "mountPath": str(job.workspace)}]
    assert pod["volumes"] == [{"name": "workspace", "persistentVolumeClaim": {"claimName": "ws-pvc"}}]


def test_kubernetes_s3_keys_come_from_a_secret_by_reference(job):
    s3_job = RunnerJob(**{**job.__dict__, "needs_s3": True})
    container = KubernetesRunner().manifest(s3_job)["spec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert refs["AWS_SECRET_ACCESS_KEY"] == "foveal-s3-credentials"
    assert all("value" not in e for e in container["env"] if e["name"].startswith("AWS_"))


def test_kubernetes_submit_and_track_through_fake_kubectl(job, tmp_path, monkeypatch):
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"status": {"active": 1}}))
    folder = _bin_with(
        tmp_path,
        kubectl=f'if [ "$5" = apply ] || [ "$3" = apply ]; then echo "job.batch/{k8s_name(JOB_ID)}"; '
        f'else cat "{status}"; fi',
    )
    _only_path(monkeypatch, folder)
    runner = KubernetesRunner(ResolvedSettings("kubernetes", {"namespace": "ml", "context": "lab"}))
    path = runner.write(job)
    assert runner.submit(job, path) == k8s_name(JOB_ID)
    assert runner.poll(k8s_name(JOB_ID)) == "RUNNING"
    status.write_text(json.dumps({"status": {"succeeded": 1}}))
    assert runner.poll(k8s_name(JOB_ID)) == "DONE"
    status.write_text(json.dumps({"status": {"failed": 1}}))
    assert runner.poll(k8s_name(JOB_ID)) == "ERROR"
    calls = _calls(folder)
    assert calls[0] == f"kubectl --context lab --namespace ml apply -f {path} -o name"
    assert calls[1] == f"kubectl --context lab --namespace ml get job {k8s_name(JOB_ID)} -o json"


def test_docker_script_is_valid_bash_with_the_exact_command(job, tmp_path, monkeypatch):
    s3_job = RunnerJob(**{**job.__dict__, "needs_s3": True})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    runner = DockerRunner(
        ResolvedSettings("docker", {"pull_policy": "always", "network": "lab", "gpus": "all"})
    )
    path = runner.write(s3_job)
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    assert "very-secret" not in text
    line = next(x for x in text.splitlines() if x.startswith("docker run"))
    assert line.endswith(" ".join(shlex.quote(a) for a in [job.image, *job_command(JOB_ID, job.workspace)]))
    argv = runner.docker_argv(s3_job)
    assert argv[:5] == ["docker", "run", "--detach", "--name", f"foveal-{JOB_ID}"]
    assert (
        "--pull=always" in argv
        and ["--network", "lab"] == argv[argv.index("--network") : argv.index("--network") + 2]
    )
    assert f"{job.workspace}:{job.workspace}" in argv and "AWS_SECRET_ACCESS_KEY" in argv


def test_docker_submit_runs_the_script_and_tracks_the_container(job, tmp_path, monkeypatch):
    folder = _bin_with(tmp_path, docker='if [ "$1" = run ]; then echo cid123; else echo "exited 0"; fi')
    _only_path(monkeypatch, folder)
    runner = DockerRunner(ResolvedSettings("docker", {"gpus": "none"}))
    path = runner.write(job)
    assert runner.submit(job, path) == "cid123"
    assert runner.poll("cid123") == "DONE"
    calls = _calls(folder)
    assert calls[0].startswith("docker run --detach --name foveal-") and "--gpus" not in calls[0]
    assert (
        "--user" in calls[0] and calls[1] == "docker inspect -f {{.State.Status}} {{.State.ExitCode}} cid123"
    )
    assert [runner.parse_poll([s]) for s in ("running 0", "exited 1", "exited 137", "created 0")] == [
        "RUNNING", "ERROR", "CANCELED", "PENDING"
    ]  # fmt: skip


def test_platforms_without_runner_files_say_so():
    from foveal.errors import UsageError

    assert isinstance(get_runner("slurm"), SlurmRunner)
    with pytest.raises(UsageError, match="unknown platform 'ray'"):  # listed only if it can submit
        get_runner("ray")
    with pytest.raises(UsageError, match="platform local has no runner files"):
        get_runner("local")


def test_an_encrypted_job_gets_its_key_by_name_only(job, tmp_path, monkeypatch):
    monkeypatch.setenv("FOVEAL_ENCRYPTION_KEY", "the-real-key-123")
    keyed = RunnerJob(**{**job.__dict__, "encrypted": True})
    docker = DockerRunner(ResolvedSettings("docker", {}))
    argv = docker.docker_argv(keyed)
    assert argv[argv.index("FOVEAL_ENCRYPTION_KEY") - 1] == "-e"
    assert "FOVEAL_ENCRYPTION_KEY" not in docker.docker_argv(job)
    container = KubernetesRunner().manifest(keyed)["spec"]["template"]["spec"]["containers"][0]
    (ref,) = [e for e in container["env"] if e["name"] == "FOVEAL_ENCRYPTION_KEY"]
    assert ref["valueFrom"]["secretKeyRef"] == {"name": "foveal-encryption-key", "key": "FOVEAL_ENCRYPTION_KEY"}
    script = SlurmRunner(ResolvedSettings("slurm", {})).render(keyed)
    subprocess.run(["bash", "-n", "-c", script], check=True)
    assert "FOVEAL_ENCRYPTION_KEY:?" in script
    for runner in (docker, KubernetesRunner(), SlurmRunner(ResolvedSettings("slurm", {}))):
        assert "the-real-key-123" not in runner.write(keyed).read_text()
