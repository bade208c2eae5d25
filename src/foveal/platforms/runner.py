"""Runner files for remote platforms: write, submit, track.

A runner turns one prepared job into the platform's file (sbatch script, Job manifest,
docker run script) inside the job's results folder. Every file runs the same command,
:func:`job_command`, which executes the already-prepared job by id against the shared
workspace, so the job record, ``status.json`` and checkpoints land where the local tools see
them. Submission and tracking go through the platform's own client (``sbatch``, ``kubectl``,
``docker``) and only when it is installed; otherwise the file is written and the command to
submit it is reported.

Secrets are never written: runner files name environment variables (or Kubernetes Secrets),
and ``runner.json`` records only the platform, the file, the scheduler's id and the command.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foveal.errors import SubmitError
from foveal.platforms import Platform, ResolvedSettings, find_platform, resolve_settings

logger = logging.getLogger(__name__)

# The scheduler states every runner maps its client's answer to.
PENDING, RUNNING, DONE, ERROR, CANCELED, UNKNOWN = (
    "PENDING",
    "RUNNING",
    "DONE",
    "ERROR",
    "CANCELED",
    "UNKNOWN",
)
TERMINAL = (DONE, ERROR, CANCELED)
RUNNER_RECORD = "runner.json"


@dataclass(frozen=True)
class RunnerJob:
    """What a runner needs to know about a prepared job."""

    job_id: str
    network: str
    action: str
    results_dir: Path
    workspace: Path
    image: str
    num_nodes: int = 1
    needs_s3: bool = False
    encrypted: bool = False  # the job runs with an encryption key: FOVEAL_ENCRYPTION_KEY reaches it by name


def job_command(job_id: str, workspace: Path, python: str = "python") -> list[str]:
    """The exact command every runner file runs: execute the prepared job ``job_id``."""
    return [python, "-m", "foveal.jobs.execute", job_id, "-w", str(workspace)]


class Runner:
    """Base class: subclasses set ``platform_name`` and implement render/submit/poll parsing."""

    platform_name = ""
    executable_file = False  # chmod +x after writing (shell scripts)

    def __init__(self, settings: ResolvedSettings | None = None) -> None:
        self.platform: Platform = find_platform(self.platform_name)
        # No settings given: read them as the workflow does (environment, credentials file).
        self.settings = settings or resolve_settings(self.platform)

    # -- writing ---------------------------------------------------------------------------------

    def render(self, job: RunnerJob) -> str:
        raise NotImplementedError

    def path(self, job: RunnerJob) -> Path:
        return Path(job.results_dir) / str(self.platform.runner_file)

    def write(self, job: RunnerJob) -> Path:
        """Write the runner file atomically into the job's results folder; returns its path."""
        target = self.path(job)
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.parent / "logs").mkdir(exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(self.render(job), encoding="utf-8")
        if self.executable_file:
            tmp.chmod(0o755)
        os.replace(tmp, target)
        logger.info("%s runner file: %s", self.platform.name, target)
        return target

    # -- submitting and tracking -----------------------------------------------------------------

    def submit_argv(self, path: Path) -> list[str] | None:
        """The command that submits ``path``, or None when the client is not installed here."""
        raise NotImplementedError

    def manual_submit_hint(self, path: Path) -> str:
        """What a user runs to submit the file by hand (when the client is not installed here)."""
        raise NotImplementedError

    def parse_submit(self, output: str) -> str:
        return output.strip().splitlines()[-1].strip() if output.strip() else ""

    def poll_argv(self, scheduler_id: str) -> list[list[str]]:
        raise NotImplementedError

    def parse_poll(self, outputs: list[str]) -> str:
        raise NotImplementedError

    def cancel_argv(self, scheduler_id: str) -> list[str] | None:
        """The command that cancels a submitted job (recorded in ``runner.json``, which
        ``foveal jobs cancel`` runs); None when the engine has none."""
        return None

    def can_submit(self) -> bool:
        return self.submit_argv(Path("x")) is not None

    def submit(self, job: RunnerJob, path: Path) -> str:
        """Submit the runner file; returns the scheduler's id and records it in ``runner.json``."""
        argv = self.submit_argv(path)
        if argv is None:
            raise SubmitError(f"{self.platform.name}: no client installed; {self.manual_submit_hint(path)}")
        result = _run(argv)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise SubmitError(
                f"{argv[0]} failed (exit {result.returncode}): {detail[0] if detail else 'no output'}"
            )
        scheduler_id = self.parse_submit(result.stdout)
        if not scheduler_id:
            raise SubmitError(f"{argv[0]} printed no job id; output was {result.stdout!r}")
        record = {
            "platform": self.platform.name,
            "runner_file": str(path),
            "scheduler_id": scheduler_id,
            "submit_command": shlex.join(argv),
            "cancel_argv": self.cancel_argv(scheduler_id),
        }
        (Path(job.results_dir) / RUNNER_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        return scheduler_id

    def poll(self, scheduler_id: str) -> str:
        """The job's state as the scheduler sees it: one of PENDING, RUNNING, DONE, ERROR, CANCELED,
        UNKNOWN (client missing or the scheduler no longer knows the id)."""
        outputs = []
        for argv in self.poll_argv(scheduler_id):
            if shutil.which(argv[0]) is None:
                outputs.append("")
                continue
            result = _run(argv)
            outputs.append(result.stdout if result.returncode == 0 else "")
        return self.parse_poll(outputs)


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    logger.debug("running %s", shlex.join(argv))
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SubmitError(f"{argv[0]}: {exc}") from None


def get_runner(platform_name: str, settings: ResolvedSettings | None = None) -> Runner:
    """The runner of a remote platform; a UsageError for platforms without runner files."""
    import importlib

    from foveal.errors import UsageError

    platform = find_platform(platform_name)
    if not platform.writer:
        raise UsageError(
            f"platform {platform.name} has no runner files in this version; use local, slurm, kubernetes or docker"
        )
    module, _, attr = platform.writer.partition(":")
    return getattr(importlib.import_module(module), attr)(settings)


def read_runner_record(results_dir: Path) -> dict[str, Any] | None:
    path = Path(results_dir) / RUNNER_RECORD
    return json.loads(path.read_text()) if path.is_file() else None
