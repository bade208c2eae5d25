"""The job record: one action of one network, with its resolved spec, status, KPIs and artifacts."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from foveal.secrets import for_hash

_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class JobStatus(str, Enum):
    """Lifecycle: Pending -> Running -> Done | Error | Canceled (Pending may go straight to Canceled)."""

    PENDING = "Pending"
    RUNNING = "Running"
    DONE = "Done"
    ERROR = "Error"
    CANCELED = "Canceled"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.ERROR, JobStatus.CANCELED)

    @classmethod
    def parse(cls, value: JobStatus | str) -> JobStatus:
        """``value`` as a status, case-insensitively; a ValueError naming the valid ones otherwise."""
        if isinstance(value, JobStatus):
            return value
        for status in cls:
            if str(value).strip().lower() == status.value.lower():
                return status
        valid = ", ".join(s.value for s in cls)
        raise ValueError(f"unknown job status {value!r}; expected one of {valid}")


def utc_now() -> str:
    """Now as an ISO 8601 UTC string, e.g. ``2025-01-31T12:00:00.123+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_job_id() -> str:
    """A short id that sorts by creation time and reads well in a terminal: ``20250131-120000-a1b2c3``."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def check_job_id(job_id: str) -> str:
    """``job_id`` if it is safe as a folder name; a ValueError otherwise."""
    if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
        raise ValueError(
            f"invalid job id {job_id!r}: use letters, digits, '.', '_' or '-' (at most 128, no leading punctuation)"
        )
    return job_id


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, ``json``'s default separators, ASCII; other values via ``str``.

    Keep this exact form: stored ``spec_hash`` values (and ``find_interrupted``) depend on it.
    """
    return json.dumps(value, sort_keys=True, default=str)


def spec_hash(spec: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a resolved spec: equal specs give equal hashes.

    A secret counts as "set", whatever its value or fingerprint salt (:func:`foveal.secrets.for_hash`).
    """
    return hashlib.sha256(canonical_json(for_hash(spec)).encode("utf-8")).hexdigest()


@dataclass
class Job:
    """One job as the registry stores it. Timestamps are ISO UTC strings (None until reached)."""

    id: str
    network: str
    action: str
    spec: dict[str, Any] = field(default_factory=dict)
    spec_hash: str = ""
    parent_id: str | None = None
    platform: str = "local"
    status: JobStatus = JobStatus.PENDING
    created_at: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    results_dir: str = ""
    pid: int | None = None
    host: str | None = None
    kpis: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # kind -> path, e.g. "onnx", "best_checkpoint"
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (status as its string value)."""
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @property
    def label(self) -> str:
        """``<id> (<network> <action>)``, as error messages name a job."""
        return f"{self.id} ({self.network} {self.action})"
