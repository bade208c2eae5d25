"""``python -m foveal.jobs.execute JOB_ID -w WORKSPACE``: run an already prepared job here.

The local platform (:mod:`foveal.platforms.local`) prepares a job in the calling process (spec
resolved, registry row created) and runs it with this entry point in a subprocess of its own,
so that it has its own log, can run next to others and can be canceled by signal.

SIGTERM (``foveal jobs cancel``, a pruned AutoML trial) becomes a :class:`foveal.errors.Terminated`
exception in the main thread, so the job lifecycle still writes its FAILURE line to ``status.json``
and closes the registry row before the process exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from foveal import secrets
from foveal.engine.status import StatusWriter, read_status
from foveal.errors import EXIT_TERMINATED, JobStateError, Terminated
from foveal.jobs.lifecycle import PreparedJob, execute_job, find_network
from foveal.jobs.model import JobStatus
from foveal.jobs.registry import JobRegistry
from foveal.jobs.workspace import Workspace
from foveal.spec import resolve_config

logger = logging.getLogger(__name__)

WATCHDOG_S = 5.0  # after SIGTERM, the longest the lifecycle may take to record it and exit
TERMINATED_MESSAGE = "terminated by SIGTERM (canceled)"
_CURRENT: dict[str, Any] = {}  # the job this process runs, for the SIGTERM watchdog


def load_prepared(job_id: str, workspace: Workspace, *, restart: bool = False) -> PreparedJob:
    """Rebuild the :class:`PreparedJob` of a registry row from its stored (resolved) spec.

    Args:
        restart: allow an Error/Canceled job (or a Running one whose process died) to run again
            from its newest checkpoint; without it only a Pending job runs.
    """
    registry = JobRegistry(workspace.db_path)
    job = registry.get(job_id)
    if job.status is JobStatus.DONE or (job.status is not JobStatus.PENDING and not restart):
        raise JobStateError(f"job {job.id} is {job.status.value}; only a Pending job can be executed")
    network = find_network(job.network)
    cfg = resolve_config(network.config_cls, job.spec, action=job.action, resolve=network.resolve)
    # The record holds the key's fingerprint; the key itself comes from this process's environment.
    key = secrets.key_from(job.spec.get("encryption_key"), source=f"job {job.id}")
    return PreparedJob(
        network, job.action, cfg, job, resumed=job.status is not JobStatus.PENDING, encryption_key=key
    )


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Later SIGTERMs (a process-group signal after the first) must not cut the cleanup short;
    # a canceler that runs out of patience sends SIGKILL.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _CURRENT["terminated"] = True
    # Library code with a broad ``except BaseException`` (seen during the action's setup) can
    # swallow the exception and train on: the watchdog then ends the process itself.
    watchdog = threading.Timer(WATCHDOG_S, _force_exit)
    watchdog.daemon = True
    watchdog.start()
    raise Terminated(TERMINATED_MESSAGE)


def _force_exit() -> None:
    """Record the termination (unless the lifecycle already did) and exit at once."""
    try:
        _record_terminated()
        logger.warning("job %s: %s (forced exit)", _CURRENT.get("job_id"), TERMINATED_MESSAGE)
    finally:
        os._exit(EXIT_TERMINATED)


def _record_terminated() -> None:
    """Make the last status line and the registry say SIGTERM, whatever error it surfaced as."""
    job_id, workspace = _CURRENT.get("job_id"), _CURRENT.get("workspace")
    if job_id and workspace is not None:
        registry = JobRegistry(workspace.db_path)
        job = registry.get(job_id)
        status_file = Path(job.results_dir) / "status.json"
        lines = read_status(status_file)
        if not lines or lines[-1].get("message") != TERMINATED_MESSAGE:
            StatusWriter(status_file).write("FAILURE", TERMINATED_MESSAGE, verbosity="ERROR")
        if not job.status.is_terminal:
            registry.finish(job_id, JobStatus.ERROR, message=TERMINATED_MESSAGE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foveal.jobs.execute", description=__doc__)
    parser.add_argument("job_id")
    parser.add_argument("--workspace", "-w", type=Path, required=True)
    parser.add_argument("--restart", action="store_true", help="resume an interrupted job")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _on_sigterm)
    workspace = Workspace(args.workspace)
    _CURRENT.update(job_id=args.job_id, workspace=workspace)
    try:
        prepared = load_prepared(args.job_id, workspace, restart=args.restart)
        job = execute_job(prepared, workspace=workspace, debug=args.debug)
    except Terminated as exc:
        logger.warning("job %s: %s", args.job_id, exc)
        return EXIT_TERMINATED
    except Exception as exc:  # noqa: BLE001 - the lifecycle recorded it; the log gets one line
        if _CURRENT.get("terminated"):
            # SIGTERM landed inside library code that re-raised it as its own error (torch.save's
            # writer: "unexpected pos ..."): the job was canceled, say so.
            _record_terminated()
            logger.warning("job %s: %s", args.job_id, TERMINATED_MESSAGE)
            return EXIT_TERMINATED
        if args.debug:
            logger.exception("job %s failed", args.job_id)
        logger.error("error: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return 1
    logger.info("job %s %s", job.id, job.status.value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
