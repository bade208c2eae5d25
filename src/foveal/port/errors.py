"""Errors of ``foveal port``: bad sources are usage errors (exit 2), failed checks are not."""

from __future__ import annotations

from foveal.jobs.runner import UsageError


class PortSourceError(UsageError):
    """The source cannot be ported: missing, not a vision model, an unsupported task, a name clash."""


class PortFailedError(RuntimeError):
    """A phase of the port failed; the report (``port_report.json``) says which and why."""

    def __init__(self, message: str, report_file: str | None = None):
        super().__init__(message)
        self.report_file = report_file
