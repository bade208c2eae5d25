"""SLURM: an sbatch script per job, submitted with ``sbatch --parsable`` (locally, or over SSH
to the login node), tracked with ``squeue``, then ``sacct`` once the job left the queue (or
``scontrol show job`` on a cluster without accounting), cancelled with ``scancel``.

The script runs the job with ``srun`` inside the confirmed container image through pyxis/enroot
(``--container-image``, the workspace mounted at the same path) unless
``FOVEAL_SLURM_CONTAINER=none``, which runs the node's own Python. The workspace must be on a
filesystem shared by the login and compute nodes.
"""

from __future__ import annotations

import re
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

_STATES = {
    "PENDING": PENDING,
    "CONFIGURING": PENDING,
    "REQUEUED": PENDING,
    "RESV_DEL_HOLD": PENDING,
    "RUNNING": RUNNING,
    "COMPLETING": RUNNING,
    "STAGE_OUT": RUNNING,
    "SUSPENDED": RUNNING,
    "COMPLETED": DONE,
    "CANCELLED": CANCELED,
    "FAILED": ERROR,
    "TIMEOUT": ERROR,
    "NODE_FAIL": ERROR,
    "OUT_OF_MEMORY": ERROR,
    "PREEMPTED": ERROR,
    "BOOT_FAIL": ERROR,
    "DEADLINE": ERROR,
}


class SlurmRunner(Runner):
    platform_name = "slurm"
    executable_file = True

    def render(self, job: RunnerJob) -> str:
        get = self.settings.get
        q = shlex.quote
        results = Path(job.results_dir)
        lines = [
            "#!/bin/bash",
            f"# foveal job {job.job_id}: {job.network} {job.action} (written by foveal; submit with sbatch)",
            f"#SBATCH --job-name=foveal-{job.network}-{job.action}-{job.job_id}",
            f"#SBATCH --output={results}/logs/slurm-%j.out",
            f"#SBATCH --nodes={max(1, job.num_nodes)}",
            "#SBATCH --ntasks-per-node=1",
            f"#SBATCH --time={get('time_limit', '04:00:00')}",
        ]
        gpus = get("gpus_per_node", "1")
        if gpus and gpus != "0":
            lines.append(f"#SBATCH --gpus-per-node={gpus}")
        for name, flag in (("partition", "--partition"), ("account", "--account")):
            if get(name):
                lines.append(f"#SBATCH {flag}={get(name)}")
        srun = ["srun"]
        runtime = (get("container_runtime") or "pyxis").lower()
        if runtime != "none":
            srun += [f"--container-image={job.image}", f"--container-mounts={job.workspace}:{job.workspace}"]
            srun.append(f"--container-workdir={results}")
        command = job_command(job.job_id, job.workspace, python=get("python") or "python")
        lines += [
            "",
            "set -euo pipefail",
            f"export FOVEAL_WORKSPACE={q(str(job.workspace))}",
            *(
                [f': "${{{ENV_KEY}:?the job is encrypted: export {ENV_KEY} before sbatch (sbatch passes it on)}}"']
                if job.encrypted
                else []
            ),
            # Lightning reads the node layout from SLURM's variables; the rendezvous from these.
            'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
            "export MASTER_PORT=${MASTER_PORT:-29500}",
            f"cd {q(str(results))}",
            " ".join(q(a) for a in srun + command),
            "",
        ]
        return "\n".join(lines)

    def _ssh_prefix(self) -> list[str] | None:
        host = self.settings.get("hostname")
        if not host or shutil.which("ssh") is None:
            return None
        user = self.settings.get("user")
        prefix = ["ssh", "-o", "BatchMode=yes"]
        key = self.settings.get("ssh_key")
        if key:
            prefix += ["-i", str(Path(key).expanduser())]
        return [*prefix, f"{user}@{host}" if user else host]

    def _client(self, name: str) -> list[str] | None:
        if shutil.which(name):
            return [name]
        ssh = self._ssh_prefix()
        return [*ssh, name] if ssh else None

    def submit_argv(self, path: Path) -> list[str] | None:
        client = self._client("sbatch")
        return None if client is None else [*client, "--parsable", str(path)]

    def manual_submit_hint(self, path: Path) -> str:
        return f"submit it on the login node with: sbatch {shlex.quote(str(path))}"

    def parse_submit(self, output: str) -> str:
        # --parsable prints "<id>" or "<id>;<cluster>".
        return super().parse_submit(output).split(";")[0]

    def poll_argv(self, scheduler_id: str) -> list[list[str]]:
        squeue = self._client("squeue") or ["squeue"]
        sacct = self._client("sacct") or ["sacct"]
        scontrol = self._client("scontrol") or ["scontrol"]
        return [
            [*squeue, "-h", "-j", scheduler_id, "-o", "%T"],
            [*sacct, "-n", "-X", "-P", "-j", scheduler_id, "-o", "State"],
            [*scontrol, "show", "job", "-o", scheduler_id],
        ]

    def parse_poll(self, outputs: list[str]) -> str:
        # squeue while queued/running, then sacct's accounting record, then scontrol's record of
        # a recently finished job (clusters without accounting: sacct says it is disabled)
        for output in outputs:
            found = re.search(r"\bJobState=(\S+)", output)
            words = [found[1]] if found else output.split()
            if words and words[0].upper().rstrip("+") in _STATES:
                return _STATES[words[0].upper().rstrip("+")]
        return UNKNOWN

    def cancel_argv(self, scheduler_id: str) -> list[str] | None:
        client = self._client("scancel")
        return None if client is None else [*client, scheduler_id]
