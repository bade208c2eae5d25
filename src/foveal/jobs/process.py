"""Is a recorded process still alive? Used to cancel jobs and to find jobs killed mid-run.

A pid alone is not an identity: pids are recycled. On Linux we also record the process start
time (``/proc/<pid>/stat`` field 22) and treat a pid whose start time changed as dead. Zombies
(exited but not yet reaped by their parent) count as dead too.
"""

from __future__ import annotations

import os
import socket


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
