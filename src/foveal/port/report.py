"""The port report: every phase with its pass/fail line and figures, and the files made.

Written as ``<workspace>/networks/<name>/port_report.json``; :meth:`PortReport.summary` is the
readable form the CLI prints.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPORT_FILE = "port_report.json"
STATUSES = ("pass", "warn", "fail", "skip")


@dataclass
class PortReport:
    """What a port did. ``status``: ``passed``, ``failed`` or ``unchanged`` (an identical port
    was already in the workspace)."""

    name: str
    source: str
    workspace: str
    status: str = "running"
    mapping: str | None = None
    task: str | None = None
    phases: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)
    started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    seconds: float = 0.0

    def add(self, phase: str, status: str, message: str, figures: dict[str, Any] | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"phase status must be one of {STATUSES}, got {status!r}")
        self.phases.append({"phase": phase, "status": status, "message": message, "figures": figures or {}})

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [p for p in self.phases if p["status"] == "fail"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / REPORT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> PortReport:
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def summary(self) -> str:
        """One line per phase (``PASS inspect: ...``) and the figures that matter."""
        lines = [f"port {self.name} from {self.source}: {self.status.upper()} ({self.seconds:.1f} s)"]
        for p in self.phases:
            figures = ", ".join(f"{k}={_fmt(v)}" for k, v in p["figures"].items() if _shown(v))
            lines.append(
                f"  {p['status'].upper():4} {p['phase']}: {p['message']}"
                + (f" [{figures}]" if figures else "")
            )
        if self.files:
            lines.append(f"  files: {len(self.files)} (see {REPORT_FILE})")
        for step, job in self.jobs.items():
            lines.append(f"  {step} job: {job}")
        return "\n".join(lines)


def _shown(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool) or value is None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
