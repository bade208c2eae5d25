"""Errors raised by ``foveal.jobs``: each one is a single line a user (or an agent) can act on."""

from __future__ import annotations


class JobError(Exception):
    """Base of every job error; ``str()`` is one line."""


class JobNotFoundError(JobError, LookupError):
    """No job has this id (or the prefix matches nothing)."""


class AmbiguousJobIdError(JobError, LookupError):
    """A job id prefix matches more than one job."""


class JobStateError(JobError):
    """The job is in a status that does not allow the operation (e.g. finishing a Done job)."""


class HandoffError(JobError, ValueError):
    """A spec field could not be filled from the parent job (wrong status, kind or action)."""
