"""The local platform: every job runs in a subprocess of its own, with its own log.

``launch_job`` starts ``python -m foveal.jobs.execute <job_id>`` for a job that
:func:`foveal.jobs.lifecycle.prepare_job` already recorded, in a new session (so its DataLoader
workers share one process group that a cancel can end as a whole), writing stdout and stderr
to ``<results_dir>/logs/process.log`` and the pid/process group to ``<results_dir>/launch.json``
(:mod:`foveal.jobs.process`, which ``foveal jobs cancel`` reads from another process).

:class:`LocalPool` runs at most N jobs at once (AutoML's ``--max-concurrent``) and shares the
machine between them: each job gets its own GPUs (``CUDA_VISIBLE_DEVICES``, as many as its
``train.num_gpus``), and on a CPU-only machine each of the N jobs gets ``cores / N`` threads
(``OMP_NUM_THREADS``, which sizes torch's intra-op pool, and the BLAS libraries' variables):
N processes each starting a full set of threads oversubscribe the cores and run several times
slower (bench/thread_cap.py). The GPUs are those in ``$FOVEAL_LOCAL_GPUS`` (a count or a list of
indices, for tests and for keeping GPUs back), else ``$CUDA_VISIBLE_DEVICES``, else all of
torch's.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from foveal import secrets
from foveal.errors import JobStateError, UsageError
from foveal.jobs.lifecycle import PreparedJob
from foveal.jobs.model import Job, JobStatus
from foveal.jobs.process import (
    DEFAULT_GRACE_S,
    signal_group,
    write_launch_file,
)
from foveal.jobs.registry import JobRegistry
from foveal.jobs.workspace import Workspace

logger = logging.getLogger(__name__)

PROCESS_LOG = "process.log"
GPUS_ENV = "FOVEAL_LOCAL_GPUS"
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def visible_gpus() -> list[str]:
    """The GPU ids this machine lends to local jobs (see the module docstring)."""
    for name in (GPUS_ENV, "CUDA_VISIBLE_DEVICES"):
        value = os.environ.get(name)
        if value is None:
            continue
        value = value.strip()
        if name == GPUS_ENV and value.isdigit():
            return [str(i) for i in range(int(value))]
        return [v.strip() for v in value.split(",") if v.strip() and v.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except ImportError:  # pragma: no cover - torch is a dependency
        return []


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _workspace(workspace: Workspace | str | Path) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else Workspace(workspace)


def _log_tail(path: Path, lines: int = 1) -> str:
    """The last non-empty lines of a log (to say why a process died)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


class LocalJobHandle:
    """A job running in a local subprocess.

    Attributes:
        job_id: the registry id.
        results_dir: the job's results folder.
        log_path: the subprocess's stdout + stderr.
    """

    def __init__(self, job: Job, process: subprocess.Popen, workspace: Workspace, log_path: Path):
        self.job_id = job.id
        self.results_dir = Path(job.results_dir)
        self.log_path = log_path
        self.process = process
        self.workspace = workspace
        self._registry = JobRegistry(workspace.db_path)
        self._closed = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def job(self) -> Job:
        """The job's registry row now."""
        return self._registry.get(self.job_id)

    def poll(self) -> int | None:
        """The exit code once the process ended (None while it runs), like ``Popen.poll``.

        A process that died without closing its registry row (killed, or failed before the
        runner started) gets its row closed here as Error, with the last line of its log.
        """
        code = self.process.poll()
        if code is not None and not self._closed:
            self._closed = True
            self._close_row(code)
        return code

    def wait(self, timeout: float | None = None) -> int:
        """Block until the process ends (``subprocess.TimeoutExpired`` after ``timeout`` s)."""
        self.process.wait(timeout)
        code = self.poll()
        assert code is not None
        return code

    def _close_row(self, code: int) -> None:
        job = self.job()
        if job.status.is_terminal:
            return
        tail = _log_tail(self.log_path) or "no output"
        message = f"process exited with code {code} before finishing: {tail}"
        try:
            self._registry.finish(self.job_id, JobStatus.ERROR, message=message)
        except JobStateError:
            pass  # finished concurrently

    def cancel(self, grace_s: float = DEFAULT_GRACE_S) -> Job:
        """Mark the job Canceled, SIGTERM it, and SIGKILL its process group after ``grace_s``."""
        job = self.job()
        signaled = False
        if not job.status.is_terminal:
            # Marks Canceled, then SIGTERMs the runner once it has recorded its pid.
            signaled = job.status is JobStatus.RUNNING and job.pid == self.process.pid
            self._registry.request_cancel(self.job_id)
        if self.process.poll() is None:
            if not signaled:
                signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("job %s ignored SIGTERM for %.0fs; killing it", self.job_id, grace_s)
        signal_group(self.process.pid, signal.SIGKILL)  # DataLoader workers left behind, if any
        self.process.wait()
        self.poll()
        return self.job()

    def __repr__(self) -> str:
        return f"LocalJobHandle({self.job_id!r}, pid={self.process.pid})"


def launch_job(
    prepared: PreparedJob,
    workspace: Workspace | str | Path,
    *,
    restart: bool | None = None,
    env: dict[str, str] | None = None,
    debug: bool = False,
) -> LocalJobHandle:
    """Run a prepared job in a new subprocess and return its handle at once.

    Args:
        prepared: from :func:`foveal.jobs.lifecycle.prepare_job` (its registry row exists).
        workspace: the workspace the job's registry row lives in.
        restart: run an interrupted job again from its newest checkpoint (default: when
            ``prepared.resumed``).
        env: extra environment variables for the subprocess.
    """
    ws = _workspace(workspace)
    job = prepared.job
    results_dir = Path(job.results_dir)
    (results_dir / "logs").mkdir(parents=True, exist_ok=True)
    log_path = results_dir / "logs" / PROCESS_LOG
    command = [sys.executable, "-m", "foveal.jobs.execute", job.id, "--workspace", str(ws.root)]
    if prepared.resumed if restart is None else restart:
        command.append("--restart")
    if debug:
        command.append("--debug")
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if prepared.encryption_key:  # in the child's memory only; the record holds its fingerprint
        child_env[secrets.ENV_KEY] = prepared.encryption_key
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,  # own process group: a cancel reaches the DataLoader workers too
        )
    shares = ("CUDA_VISIBLE_DEVICES", *THREAD_ENV_VARS)
    write_launch_file(results_dir, process.pid, command, log_path, {k: v for k, v in (env or {}).items() if k in shares})
    logger.info("job %s started as process %d (log: %s)", job.id, process.pid, log_path)
    return LocalJobHandle(job, process, ws, log_path)


class LocalPool:
    """Run local jobs with at most ``max_concurrent`` at once, each on its own share of the machine.

    Example::

        pool = LocalPool(ws, max_concurrent=2)
        for prepared in jobs:
            while not pool.free_slots:
                pool.reap(); time.sleep(1)
            pool.submit(prepared)
        pool.wait_all()

    Args:
        max_concurrent: jobs at once; None: the GPUs divided by ``gpus_per_job`` (1 on CPU).
        gpus_per_job: GPUs each job gets (its ``train.num_gpus``); a job starts only when that
            many are free, so GPU sets never overlap.
        gpus: the GPU ids to share (default: :func:`visible_gpus`); empty: a CPU machine.
        cores: CPU cores to share (default: :func:`cpu_cores`).
    """

    def __init__(
        self,
        workspace: Workspace | str | Path,
        max_concurrent: int | None = 1,
        *,
        gpus_per_job: int = 1,
        gpus: list[str] | None = None,
        cores: int | None = None,
    ):
        self.gpus = list(visible_gpus() if gpus is None else gpus)
        self.gpus_per_job = max(1, int(gpus_per_job))
        if self.gpus and self.gpus_per_job > len(self.gpus):
            raise UsageError(
                f"train.num_gpus={self.gpus_per_job} but {len(self.gpus)} GPU(s) are visible here "
                f"({', '.join(self.gpus)}); lower train.num_gpus or free more GPUs (${GPUS_ENV})"
            )
        if max_concurrent is None:
            max_concurrent = len(self.gpus) // self.gpus_per_job if self.gpus else 1
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self.workspace = _workspace(workspace)
        self.max_concurrent = int(max_concurrent)
        self.cores = cores or cpu_cores()
        self.running: dict[str, LocalJobHandle] = {}
        self.assigned: dict[str, list[str]] = {}  # job id -> its GPU ids

    @property
    def free_gpus(self) -> list[str]:
        taken = {g for ids in self.assigned.values() for g in ids}
        return [g for g in self.gpus if g not in taken]

    @property
    def free_slots(self) -> int:
        slots = max(0, self.max_concurrent - len(self.running))
        if self.gpus:
            slots = min(slots, len(self.free_gpus) // self.gpus_per_job)
        return slots

    def job_env(self) -> dict[str, str]:
        """The environment of the next job: its GPUs, or its share of the CPU threads."""
        if self.gpus:
            return {"CUDA_VISIBLE_DEVICES": ",".join(self.free_gpus[: self.gpus_per_job])}
        if self.max_concurrent == 1:
            return {}  # alone on the machine: torch's own default
        threads = str(max(1, self.cores // self.max_concurrent))
        return {name: threads for name in THREAD_ENV_VARS}

    def submit(self, prepared: PreparedJob, **launch_kwargs: Any) -> LocalJobHandle:
        """Launch a job; a RuntimeError when the pool is full (check ``free_slots`` first)."""
        if not self.free_slots:
            raise RuntimeError(f"{self.max_concurrent} jobs already run; wait for one to finish")
        env = {**self.job_env(), **(launch_kwargs.pop("env", None) or {})}
        handle = launch_job(prepared, self.workspace, env=env, **launch_kwargs)
        self.running[handle.job_id] = handle
        if "CUDA_VISIBLE_DEVICES" in env and self.gpus:
            self.assigned[handle.job_id] = env["CUDA_VISIBLE_DEVICES"].split(",")
        logger.info(
            "job %s: %s",
            handle.job_id,
            f"GPU {env['CUDA_VISIBLE_DEVICES']}" if self.gpus else f"{env.get('OMP_NUM_THREADS', 'all')} CPU threads",
        )
        return handle

    def reap(self) -> list[LocalJobHandle]:
        """The handles whose process ended since the last call (removed from ``running``)."""
        done = [h for h in self.running.values() if h.poll() is not None]
        for handle in done:
            del self.running[handle.job_id]
            self.assigned.pop(handle.job_id, None)
        return done

    def wait_all(self, poll_s: float = 0.5) -> list[LocalJobHandle]:
        finished: list[LocalJobHandle] = []
        while self.running:
            finished.extend(self.reap())
            if self.running:
                time.sleep(poll_s)
        return finished

    def cancel_all(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        for handle in list(self.running.values()):
            handle.cancel(grace_s)
        self.running.clear()
        self.assigned.clear()
