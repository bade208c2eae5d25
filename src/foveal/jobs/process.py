"""Processes of jobs: is a recorded one alive, the launch record of a local job, stopping it.

A pid alone is not an identity: pids are recycled. On Linux we also record the process start
time (``/proc/<pid>/stat`` field 22) and treat a pid whose start time changed as dead. Zombies
(exited but not yet reaped by their parent) count as dead too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from foveal.jobs.model import Job

LAUNCH_FILE = "launch.json"  # <results_dir>/launch.json: pid, process group, host of a local job
DEFAULT_GRACE_S = 10.0


def this_host() -> str:
    """The host name recorded with a job's pid; pids are only checked on the same host."""
    return socket.gethostname()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) from ``/proc/<pid>/stat``, or None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and ')': split after its last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def process_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` (Linux), to tell a live process from a recycled pid."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def pid_alive(pid: int | None, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` runs on this host (and, if given, is the process started at ``start_ticks``).

    On Windows ``os.kill(pid, 0)`` would terminate the process, so there we cannot tell and
    answer True (a job is then never reaped automatically).
    """
    if pid is None or pid <= 0:
        return False
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists but belongs to another user
    stat = _proc_stat(pid)
    if stat is not None:
        state, ticks = stat
        if state in ("Z", "X"):
            return False
        if start_ticks is not None and ticks != start_ticks:
            return False
    return True


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def write_launch_file(
    results_dir: Path, pid: int, command: list[str], log_path: Path, resources: dict[str, str] | None = None
) -> None:
    """``launch.json``: the process to signal, and the share of the machine it was given
    (``resources``: e.g. ``CUDA_VISIBLE_DEVICES`` or ``OMP_NUM_THREADS``)."""
    record = {
        "pid": pid,
        "pgid": pid,  # start_new_session: the child leads its own group
        "pid_start": process_start_ticks(pid),
        "host": this_host(),
        "command": command,
        "log": str(log_path),
        "resources": dict(resources or {}),
    }
    tmp = results_dir / (LAUNCH_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    tmp.replace(results_dir / LAUNCH_FILE)


def read_launch_file(results_dir: str | Path) -> dict[str, Any] | None:
    """The launch record of a locally launched job (None for jobs run in the foreground)."""
    try:
        return json.loads((Path(results_dir) / LAUNCH_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def stop_job_processes(job: Job, grace_s: float = DEFAULT_GRACE_S) -> bool:
    """End what is left of a locally launched job's processes (used by ``foveal jobs cancel``).

    The registry's cancel SIGTERMs the job's process (one signal: its lifecycle then writes the
    FAILURE line and closes the row); this waits up to ``grace_s`` for it to exit and then SIGKILLs its
    whole process group. Returns whether a process group was found alive.
    """
    record = read_launch_file(job.results_dir)
    if not record or record.get("host") != this_host():
        return False
    pid, pgid = int(record["pid"]), int(record["pgid"])
    if not pid_alive(pid, record.get("pid_start")):
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and pid_alive(pid, record.get("pid_start")):
        time.sleep(0.1)
    signal_group(pgid, signal.SIGKILL)
    return True
