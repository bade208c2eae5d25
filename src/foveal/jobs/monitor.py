"""Monitoring long runs: one status line every N minutes, for a person or an agent.

Everything is read from a job's ``status.json`` (whatever platform wrote it) and the job
registry, so the same lines describe a job running in this process, in a local subprocess, or
on a cluster that shares the workspace::

    [14:02:11] train 20250131-120000-a1b2c3 Running: epoch 2/10, step 40/200, val_loss=0.4213, ETA 0:01:40
    [14:07:11] automl: trials 3/8 done (1 running), best val_loss=0.4012 (trial 2)

:class:`Monitor` prints such lines from a background thread while a workflow runs in the
foreground (the training progress bar stays where it is); :func:`watch_job` does the same for
a job started elsewhere (``foveal jobs watch``) and returns when the job ends.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from foveal.engine.status import read_status
from foveal.jobs.model import Job, JobStatus

logger = logging.getLogger(__name__)

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "": 60.0}  # a bare number means minutes


def parse_interval(text: str | float) -> float:
    """Seconds from ``"5m"``, ``"30s"``, ``"1h"`` or a bare number of minutes (``"5"``).

    Raises:
        UsageError: not a positive duration.
    """
    from foveal.errors import UsageError

    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text) * 60.0
    else:
        match = _DURATION_RE.match(str(text))
        if not match:
            raise UsageError(
                f"interval {text!r}: expected a duration such as 30s, 5m or 1h (bare number: minutes)"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"interval {text!r}: must be more than zero")
    return seconds


def format_eta(seconds: float | None) -> str:
    if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _fmt_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@dataclass
class Progress:
    """The latest progress of one job, folded from its status.json lines."""

    status: str | None = None  # the last line's status (STARTED, RUNNING, SUCCESS, FAILURE)
    message: str = ""
    epoch: int | None = None
    max_epoch: int | None = None
    step: int | None = None
    max_step: int | None = None
    eta: float | None = None
    kpi: dict[str, Any] = field(default_factory=dict)
    lines: int = 0

    @property
    def finished(self) -> bool:
        return self.status in ("SUCCESS", "FAILURE")


def read_progress(results_dir: str | Path) -> Progress:
    """Fold ``<results_dir>/status.json`` into a :class:`Progress` (empty when there is none yet)."""
    progress = Progress()
    for line in read_status(Path(results_dir) / "status.json"):
        progress.lines += 1
        progress.status = line.get("status", progress.status)
        progress.message = line.get("message", progress.message)
        for key in ("epoch", "max_epoch", "step", "max_step"):
            if isinstance(line.get(key), int):
                setattr(progress, key, line[key])
        if "eta" in line:
            progress.eta = line["eta"]
        if isinstance(line.get("kpi"), dict):
            progress.kpi.update(line["kpi"])
    if progress.status == "SUCCESS":
        progress.eta = 0.0
    return progress


def job_line(stage: str, job: Job | None, progress: Progress, metric: str | None = None) -> str:
    """``train <id> Running: epoch 2/10, step 40/200, val_loss=0.42, ETA 0:01:40``."""
    head = f"{stage} {job.id} {job.status.value}" if job is not None else stage
    parts = []
    if progress.epoch is not None:
        parts.append(f"epoch {progress.epoch}/{progress.max_epoch or '?'}")
    if progress.step is not None:
        parts.append(f"step {progress.step}/{progress.max_step or '?'}")
    kpi = progress.kpi
    shown = [metric] if metric in kpi else list(kpi)[:2]
    parts += [f"{k}={_fmt_value(kpi[k])}" for k in shown]
    if progress.eta is not None and not (job is not None and job.status.is_terminal):
        parts.append(f"ETA {format_eta(progress.eta)}")
    if not parts:
        parts.append(progress.message or "waiting for the first status line")
    return f"{head}: {', '.join(parts)}"


def automl_line(state: dict[str, Any], metric: str | None = None) -> str:
    """``automl: trials 3/8 done (1 running), best val_loss=0.4012 (trial 2)``."""
    done, total = state.get("trials_done", 0), state.get("trials_total", "?")
    text = f"automl: trials {done}/{total} done"
    running = state.get("running")
    if running:  # a count or the list of running trial numbers
        text += f" ({len(running) if isinstance(running, (list, tuple, set)) else running} running)"
    if state.get("best_value") is not None:
        text += f", best {metric or 'value'}={_fmt_value(state['best_value'])}"
        if state.get("best_trial") is not None:
            text += f" (trial {state['best_trial']})"
    return text


def _stamp(line: str) -> str:
    return f"[{datetime.now(timezone.utc):%H:%M:%S}] {line}"


class Monitor:
    """Emit a status line every ``interval_s`` seconds from a background thread.

    The foreground updates what is watched: :meth:`watch` (the stage and its job) and
    :meth:`automl` (the latest AutoML progress). Lines go to ``emit`` (stderr in the CLI, so
    a piped ``--format json`` stays clean) whether or not the output is a terminal.

    Args:
        workspace_db: the job registry file (to read the job's status).
        interval_s: seconds between lines.
        emit: where lines go.
        metric: the KPI to show first (the monitoring metric).
    """

    def __init__(
        self,
        registry: Any,
        interval_s: float,
        emit: Callable[[str], None],
        metric: str | None = None,
    ) -> None:
        self.registry = registry
        self.interval_s = float(interval_s)
        self.emit = emit
        self.metric = metric
        self._stage: str | None = None
        self._job_id: str | None = None
        self._automl: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lines_emitted = 0
        self._failed_ticks = 0

    def watch(self, stage: str, job_id: str | None) -> None:
        with self._lock:
            self._stage, self._job_id = stage, job_id
            if job_id is not None:
                self._automl = None

    def automl(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._stage, self._automl = "automl", dict(state)

    def line(self) -> str | None:
        """The status line for what is watched now (None before anything is)."""
        with self._lock:
            stage, job_id, automl = self._stage, self._job_id, self._automl
        if stage is None:
            return None
        if automl is not None:
            return automl_line(automl, self.metric)
        if job_id is None:
            return f"{stage}: preparing"
        job = self.registry.get(job_id)
        return job_line(stage, job, read_progress(job.results_dir), self.metric)

    def tick(self) -> None:
        try:
            text = self.line()
        except Exception as exc:  # noqa: BLE001 - a monitoring hiccup must never stop the run
            # said once (a stuck monitor should not be silent), then only at debug level
            log = logger.debug if self._failed_ticks else logger.warning
            self._failed_ticks += 1
            log("monitor: no status line this time (%s: %s); the run goes on", type(exc).__name__, exc)
            return
        if text:
            self.emit(_stamp(text))
            self.lines_emitted += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def start(self) -> Monitor:
        self._thread = threading.Thread(target=self._loop, name="foveal-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def watch_job(
    registry: Any,
    job_id: str,
    interval_s: float,
    emit: Callable[[str], None],
    *,
    metric: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    max_lines: int | None = None,
) -> Job:
    """Print a status line now and every ``interval_s`` until the job ends; returns the final job.

    The end is the registry's terminal status; a job whose process died without recording it
    is reaped (``reap_dead``) so the watch does not wait forever.
    """
    job = registry.get(job_id)
    stage = job.action
    lines = 0
    while True:
        registry.reap_dead()
        job = registry.get(job.id)
        progress = read_progress(job.results_dir)
        emit(_stamp(job_line(stage, job, progress, metric)))
        lines += 1
        if job.status.is_terminal or (max_lines is not None and lines >= max_lines):
            break
        sleep(interval_s)
    if job.status is JobStatus.ERROR and job.message:
        emit(f"job {job.id} failed: {job.message}")
    return job
