"""Docker: a ``docker run`` script per job, started detached and tracked with ``docker inspect``.

The container mounts the workspace at the same path, runs as the calling user (files in the
workspace stay the user's) and runs the prepared job by id. S3 keys are passed through by
name (``-e AWS_ACCESS_KEY_ID``): the script never holds a value.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from foveal.platforms.runner import (
    CANCELED,
    DONE,
    ERROR,
    PENDING,
    RUNNING,
    UNKNOWN,
    Runner,
    RunnerJob,
    job_command,
)
from foveal.secrets import ENV_KEY

_S3_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "FOVEAL_S3_ENDPOINT_URL",
)


def container_name(job_id: str) -> str:
    return f"foveal-{job_id}"


class DockerRunner(Runner):
    platform_name = "docker"
    executable_file = True

    def docker_argv(self, job: RunnerJob) -> list[str]:
        get = self.settings.get
        workspace = str(job.workspace)
        argv = ["docker", "run", "--detach", "--name", container_name(job.job_id)]
        argv += ["--label", f"foveal.job-id={job.job_id}", "--label", f"foveal.network={job.network}"]
        argv += [f"--pull={get('pull_policy', 'missing')}"]
        gpus = get("gpus", "all")
        if gpus and gpus != "none":
            argv += ["--gpus", gpus]
        if get("network"):
            argv += ["--network", str(get("network"))]
        argv += ["--shm-size=8g", "-v", f"{workspace}:{workspace}", "-w", str(job.results_dir)]
        argv += ["-e", f"FOVEAL_WORKSPACE={workspace}"]
        names = (*(_S3_ENV if job.needs_s3 else ()), *((ENV_KEY,) if job.encrypted else ()))
        for name in names:
            argv += ["-e", name]  # passed through from the caller's environment, by name only
        return [*argv, job.image, *job_command(job.job_id, job.workspace)]

    def render(self, job: RunnerJob) -> str:
        argv = self.docker_argv(job)
        user_index = argv.index("-w")
        quoted = [shlex.quote(a) for a in argv]
        # Run as the calling user so the workspace files stay theirs (evaluated when the script runs).
        quoted[user_index:user_index] = ["--user", '"$(id -u):$(id -g)"']
        return "\n".join(
            [
                "#!/usr/bin/env bash",
                f"# foveal job {job.job_id}: {job.network} {job.action} (written by foveal; run with bash)",
                "set -euo pipefail",
                " ".join(quoted),
                "",
            ]
        )

    def submit_argv(self, path: Path) -> list[str] | None:
        return None if shutil.which("docker") is None else ["bash", str(path)]

    def manual_submit_hint(self, path: Path) -> str:
        return f"start it where Docker runs with: bash {shlex.quote(str(path))}"

    def poll_argv(self, scheduler_id: str) -> list[list[str]]:
        return [["docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", scheduler_id]]

    def parse_poll(self, outputs: list[str]) -> str:
        words = outputs[0].split() if outputs else []
        if not words:
            return UNKNOWN
        state, code = words[0], words[1] if len(words) > 1 else "0"
        if state in ("created", "restarting"):
            return PENDING
        if state in ("running", "paused"):
            return RUNNING
        if state in ("exited", "dead"):
            # 137/143: killed by SIGKILL/SIGTERM (docker stop / kill): a cancel, not a failure.
            return DONE if code == "0" else CANCELED if code in ("137", "143") else ERROR
        return UNKNOWN
