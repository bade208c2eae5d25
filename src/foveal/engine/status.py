"""status.json: the line-per-event progress log that monitoring, AutoML and workflows read.

Each line is one JSON object (TAO's status logger format)::

    {"date": "2025-01-31", "time": "14:02:11", "status": "RUNNING", "verbosity": "INFO",
     "message": "Epoch 2/10 done", "kpi": {"train_loss": 0.42}, "epoch": 2, "max_epoch": 10,
     "step": 40, "max_step": 200, "time_per_epoch": 12.5, "eta": 100.0}

Conventions:

- ``date`` / ``time`` are UTC (``YYYY-MM-DD`` / ``HH:MM:SS``), so lines written on different
  machines of one cluster compare directly.
- ``time_per_epoch`` and ``eta`` are seconds as floats (machine-readable; format for humans
  at display time).
- ``epoch`` is 1-based: ``"epoch": 2`` means the second epoch has finished.
- Non-finite floats (a NaN loss) are written as the strings ``"nan"``, ``"inf"``, ``"-inf"`` so
  every line stays valid JSON.

Every line is written with one ``O_APPEND`` write and fsync'd, so a reader never sees two
lines interleaved; a process killed mid-write can leave at most a truncated *last* line,
which :func:`read_status` skips.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STATUSES = ("STARTED", "RUNNING", "SUCCESS", "FAILURE", "SKIPPED")
VERBOSITIES = ("INFO", "WARNING", "ERROR")
OPTIONAL_FIELDS = ("kpi", "epoch", "max_epoch", "step", "max_step", "time_per_epoch", "eta")


def _json_value(value: Any) -> Any:
    """Convert a value to something ``json.dumps(allow_nan=False)`` accepts (tensors, numpy, NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # 0-d torch tensor or numpy scalar
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # "nan", "inf", "-inf"
    return str(value)


class StatusWriter:
    """Append status lines to a ``status.json`` file.

    Args:
        path: the status file; its folder is created if missing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._checked_tail = False

    def write(self, status: str, message: str, verbosity: str = "INFO", **fields: Any) -> dict[str, Any]:
        """Append one line and return the object written.

        Args:
            status: one of STARTED, RUNNING, SUCCESS, FAILURE, SKIPPED.
            message: a human-readable sentence.
            verbosity: one of INFO, WARNING, ERROR.
            **fields: optional keys among ``kpi`` (dict), ``epoch``, ``max_epoch``, ``step``,
                ``max_step``, ``time_per_epoch`` (s), ``eta`` (s); ``None`` values are omitted.

        Raises:
            ValueError: unknown status or verbosity; TypeError: unknown field.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        if verbosity not in VERBOSITIES:
            raise ValueError(f"verbosity must be one of {', '.join(VERBOSITIES)}, got {verbosity!r}")
        unknown = sorted(set(fields) - set(OPTIONAL_FIELDS))
        if unknown:
            raise TypeError(f"unknown status field(s) {unknown}; allowed: {', '.join(OPTIONAL_FIELDS)}")
        now = _dt.datetime.now(_dt.timezone.utc)
        record: dict[str, Any] = {
            "date": now.strftime("%Y-%m-%d"),
            "time": now.strftime("%H:%M:%S"),
            "status": status,
            "verbosity": verbosity,
            "message": str(message),
        }
        for key in OPTIONAL_FIELDS:
            if fields.get(key) is not None:
                record[key] = _json_value(fields[key])
        data = (json.dumps(record, allow_nan=False) + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if not self._checked_tail:
                    # A previous writer killed mid-line left no newline: end that line first, so
                    # ours is not glued to it (readers then skip only the broken one).
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        data = b"\n" + data
                    self._checked_tail = True
                # One write call per line: O_APPEND makes it land whole at the end of the file.
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
        return record


def read_status(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read every complete line of a status file (missing file: empty list).

    A truncated last line (a writer killed mid-write) is skipped silently; a malformed line
    elsewhere is skipped with a warning.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    records: list[dict[str, Any]] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if index < len(lines) - 1:
                logger.warning("%s: skipping malformed line %d", path, index + 1)
            continue
        if isinstance(obj, dict):
            records.append(obj)
    return records
