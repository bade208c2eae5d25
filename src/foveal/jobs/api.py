"""``foveal.jobs.list / get / logs / cancel``: the ``foveal jobs`` commands as functions.

Part of the stable Python API (:mod:`foveal.api`): every function takes an optional
``workspace`` (default ``$FOVEAL_WORKSPACE`` or ``./foveal-workspace``), returns data, prints
nothing and raises :mod:`foveal.errors` classes.
"""

from __future__ import annotations

import builtins
from pathlib import Path

from foveal.errors import JobError
from foveal.jobs.model import Job
from foveal.jobs.process import stop_job_processes
from foveal.jobs.registry import JobRegistry
from foveal.jobs.workspace import Workspace

WorkspaceLike = Workspace | str | Path | None


def _registry(workspace: WorkspaceLike) -> JobRegistry:
    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    return JobRegistry(ws.ensure().db_path)


def list_jobs(
    network: str | None = None,
    status: str | None = None,
    limit: int | None = 50,
    workspace: WorkspaceLike = None,
) -> builtins.list[Job]:
    """Jobs of the workspace, newest first (``foveal jobs list``).

    Args:
        network: only this network's jobs.
        status: only jobs in this status (Pending, Running, Done, Error, Canceled).
        limit: at most this many (None: all).
    """
    registry = _registry(workspace)
    registry.reap_dead()
    return registry.list(network=network, status=status, limit=limit)


def get(job_id: str | Job, workspace: WorkspaceLike = None) -> Job:
    """One job by id or unique id prefix, as the registry has it now (``foveal jobs show``)."""
    return _registry(workspace).get(job_id.id if isinstance(job_id, Job) else job_id)


def logs(job_id: str | Job, *, status: bool = False, workspace: WorkspaceLike = None) -> str:
    """A job's log (``logs/<action>.log``), or with ``status=True`` its ``status.json`` lines.

    Raises:
        JobError: the job has not written that file yet.
    """
    job = get(job_id, workspace)
    results = Path(job.results_dir)
    path = results / "status.json" if status else results / "logs" / f"{job.action}.log"
    if not path.is_file():
        raise JobError(f"job {job.id} has no {path.name} yet ({path})")
    return path.read_text(encoding="utf-8")


def cancel(job_id: str | Job, workspace: WorkspaceLike = None) -> Job:
    """Cancel a pending or running job; a local subprocess job is stopped with its workers."""
    return cancel_job(job_id, workspace)[0]


def cancel_job(job_id: str | Job, workspace: WorkspaceLike = None) -> tuple[Job, bool]:
    """:func:`cancel`, and whether a local process group was found and stopped, or the job's
    scheduler accepted its cancel command (``runner.json``'s ``cancel_argv``: ``scancel``...)."""
    registry = _registry(workspace)
    job = registry.request_cancel(job_id.id if isinstance(job_id, Job) else job_id)
    stopped = stop_job_processes(job) or _cancel_submitted(job)
    return registry.get(job.id), stopped


def _cancel_submitted(job: Job) -> bool:
    """Run the cancel command a platform recorded when it submitted the job (e.g. ``scancel ID``)."""
    import json
    import subprocess

    try:
        record = json.loads((Path(job.results_dir) / "runner.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    argv = record.get("cancel_argv")
    if not argv:
        return False
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JobError(f"job {job.id}: {argv[0]} failed: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise JobError(f"job {job.id}: {' '.join(argv)} exited {done.returncode}: {detail[0] if detail else ''}")
    return True
