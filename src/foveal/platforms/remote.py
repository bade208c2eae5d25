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


# ------------------------------------------------------------------------------ AutoML on a scheduler


class RemoteJobHandle:
    """A submitted job, with the local handle's interface (``poll``, ``job``, ``cancel``) for the
    AutoML controller: the registry row (the job records its own progress and end) first, the
    scheduler's state for a job that died without recording it."""

    def __init__(self, job: Job, runner: Runner, scheduler_id: str, workspace: Workspace):
        self.job_id = job.id
        self.results_dir = Path(job.results_dir)
        self.scheduler_id = scheduler_id
        self.log_path = self.results_dir / "logs"
        self.runner = runner
        self._registry = JobRegistry(workspace.db_path)

    def job(self) -> Job:
        return self._registry.get(self.job_id)

    def poll(self) -> int | None:
        """None while it runs; 0 when it ended Done, 1 otherwise (as a process's exit code)."""
        job = self.job()
        if not job.status.is_terminal:
            state = self.runner.poll(self.scheduler_id)
            if state not in TERMINAL:
                return None
            job = self.job()
            if not job.status.is_terminal:
                status = JobStatus.CANCELED if state == "CANCELED" else JobStatus.ERROR
                job = self._registry.finish(
                    self.job_id, status, message=f"{self.runner.platform.name} job {self.scheduler_id} ended ({state})"
                )
        return 0 if job.status is JobStatus.DONE else 1

    def cancel(self, grace_s: float = 10.0) -> Job:
        import subprocess

        self._registry.request_cancel(self.job_id)
        argv = self.runner.cancel_argv(self.scheduler_id)
        if argv:
            subprocess.run(argv, capture_output=True, text=True, timeout=60)
        deadline = time.monotonic() + grace_s
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        job = self.job()
        if not job.status.is_terminal:
            job = self._registry.finish(self.job_id, JobStatus.CANCELED, message="canceled by the AutoML study")
        return job


class RemotePool:
    """At most ``max_concurrent`` jobs submitted to a scheduler at once (the local pool's
    interface): AutoML trials as SLURM jobs. Each trial is a job the controller prepared; it is
    written and submitted like any job of the platform."""

    def __init__(self, workspace: Workspace, runner: Runner, image: str, max_concurrent: int | None = None):
        self.workspace = workspace
        self.runner = runner
        self.image = image
        self.max_concurrent = int(max_concurrent or 1)
        if self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        if not runner.can_submit():
            raise UsageError(
                f"AutoML on {runner.platform.name}: its client is not installed here; run the study on its login node"
            )
        self.running: dict[str, RemoteJobHandle] = {}

    @property
    def free_slots(self) -> int:
        return max(0, self.max_concurrent - len(self.running))

    def submit(self, prepared: Any, **_: Any) -> RemoteJobHandle:
        if not self.free_slots:
            raise RuntimeError(f"{self.max_concurrent} jobs already run; wait for one to finish")
        outcome = launch_remote(prepared.job, self.runner, self.workspace, image=self.image, wait=False)
        if not outcome.scheduler_id:
            raise UsageError(f"{self.runner.platform.name}: the trial was not submitted ({outcome.hint})")
        handle = RemoteJobHandle(prepared.job, self.runner, outcome.scheduler_id, self.workspace)
        self.running[handle.job_id] = handle
        return handle

    def reap(self) -> list[RemoteJobHandle]:
        done = [h for h in self.running.values() if h.poll() is not None]
        for handle in done:
            del self.running[handle.job_id]
        return done

    def cancel_all(self, grace_s: float = 10.0) -> None:
        for handle in list(self.running.values()):
            handle.cancel(grace_s)
        self.running.clear()
