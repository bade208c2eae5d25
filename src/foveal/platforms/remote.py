"""Running one job on a remote platform: record it, write its runner file, submit, track.

The job is prepared here exactly as the local runner prepares one (spec resolved with handoff
from its parent, registry row, results folder with ``experiment.yaml``), except that the
registry row names the platform. The job then runs wherever the scheduler puts it, with
``python -m foveal.jobs.execute`` against the shared workspace, which updates the same registry
row and ``status.json``; the scheduler's own state only fills in for a job that died before it
could record anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foveal.errors import UsageError
from foveal.jobs.lifecycle import check_action, find_network, job_encryption_key, resolve_spec
from foveal.jobs.model import Job, JobStatus
from foveal.jobs.registry import JobRegistry
from foveal.jobs.workspace import Workspace
from foveal.platforms.runner import TERMINAL, UNKNOWN, Runner, RunnerJob
from foveal.secrets import is_fingerprint

logger = logging.getLogger(__name__)


def prepare_remote_job(
    network_name: str,
    action: str,
    platform: str,
    *,
    overrides: Iterable[str] = (),
    parent_id: str | None = None,
    workspace: Workspace,
) -> Job:
    """Resolve the spec and record a Pending job for ``platform`` (nothing runs yet)."""
    from foveal.jobs.model import new_job_id
    from foveal.spec import save_spec, to_dict

    network = find_network(network_name)
    check_action(network, action)
    if action not in network.actions:
        raise UsageError(f"{network.name} {action} is not available in this version")
    workspace.ensure()
    registry = JobRegistry(workspace.db_path)
    parent = registry.get(parent_id) if parent_id else None
    job_id = new_job_id()
    results_dir = workspace.results_dir(job_id)
    cfg = resolve_spec(network, action, overrides=list(overrides), parent=parent, job_results_dir=results_dir)
    key = job_encryption_key(cfg, parent)  # the remote job reads it from FOVEAL_ENCRYPTION_KEY
    if key is not None and hasattr(cfg, "encryption_key"):
        cfg.encryption_key = key  # recorded as its fingerprint only
    job = registry.create(
        network.name,
        action,
        to_dict(cfg),
        parent_id=parent.id if parent else None,
        platform=platform,
        results_dir=str(results_dir),
        job_id=job_id,
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    save_spec(cfg, results_dir / "experiment.yaml")
    return job


@dataclass
class RemoteOutcome:
    """What happened to a remote job: its record, runner file, scheduler id and state."""

    job: Job
    runner_file: Path
    scheduler_id: str | None
    scheduler_state: str | None
    submitted: bool
    hint: str | None = None


def launch_remote(
    job: Job,
    runner: Runner,
    workspace: Workspace,
    *,
    image: str,
    needs_s3: bool = False,
    wait: bool = True,
    submit: bool = True,
    poll_s: float = 15.0,
    on_poll: Callable[[Job, str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> RemoteOutcome:
    """Write the runner file; submit (unless ``submit`` is False) and (``wait``) track it when the
    client is installed."""
    spec: dict[str, Any] = job.spec
    nodes = int(((spec.get("train") or {}).get("num_nodes")) or 1) if job.action == "train" else 1
    target = RunnerJob(
        job_id=job.id,
        network=job.network,
        action=job.action,
        results_dir=Path(job.results_dir),
        workspace=workspace.root,
        image=image,
        num_nodes=nodes,
        needs_s3=needs_s3,
        encrypted=is_fingerprint(spec.get("encryption_key")),
    )
    path = runner.write(target)
    if not submit or not runner.can_submit():
        return RemoteOutcome(job, path, None, None, False, runner.manual_submit_hint(path))
    scheduler_id = runner.submit(target, path)
    logger.info("job %s submitted to %s as %s", job.id, runner.platform.name, scheduler_id)
    if not wait:
        return RemoteOutcome(job, path, scheduler_id, runner.poll(scheduler_id), True)
    final, state = wait_remote(job.id, runner, scheduler_id, workspace, poll_s, on_poll, sleep)
    return RemoteOutcome(final, path, scheduler_id, state, True)


def wait_remote(
    job_id: str,
    runner: Runner,
    scheduler_id: str,
    workspace: Workspace,
    poll_s: float,
    on_poll: Callable[[Job, str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Job, str]:
    """Wait until the registry row is terminal; close it when the scheduler says the job ended
    without recording its result (killed before start, out of memory, preempted...)."""
    registry = JobRegistry(workspace.db_path)
    while True:
        job = registry.get(job_id)
        state = runner.poll(scheduler_id)
        if on_poll is not None:
            on_poll(job, state)
        if job.status.is_terminal:
            # The job records its end before its process exits: give the scheduler a moment to
            # see the job leave, so that the state returned is the scheduler's final one.
            for _ in range(max(1, int(30 / max(poll_s, 0.1)))):
                if state in TERMINAL or state == UNKNOWN:
                    break
                sleep(min(poll_s, 1.0))
                state = runner.poll(scheduler_id)
            return job, state
        if state in TERMINAL:
            job = registry.get(job_id)  # it may have recorded its end between the two reads
            if job.status.is_terminal:
                return job, state
            log = Path(job.results_dir) / "logs"
            message = (
                f"{runner.platform.name} job {scheduler_id} ended ({state}) without the job recording "
                f"a result; see the scheduler's log in {log}"
            )
            status = JobStatus.CANCELED if state == "CANCELED" else JobStatus.ERROR
            return registry.finish(job_id, status, message=message), state
        sleep(poll_s)
