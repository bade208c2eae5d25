"""Jobs: the job record, the SQLite job registry, the workspace layout and handoff inference.

This package stays light (no torch): listing and managing jobs never imports a network.
``foveal.jobs.list / get / logs / cancel`` are part of the Python API (:mod:`foveal.jobs.api`).
"""

from foveal.errors import (
    AmbiguousJobIdError,
    HandoffError,
    JobError,
    JobNotFoundError,
    JobStateError,
)
from foveal.jobs.api import cancel, get, list_jobs, logs
from foveal.jobs.handoff import apply_handoff, describe_parent, parse_parent_checkpoint, resolve_handoff
from foveal.jobs.model import Job, JobStatus, canonical_json, new_job_id, spec_hash, utc_now
from foveal.jobs.process import pid_alive, this_host
from foveal.jobs.registry import SCHEMA_VERSION, JobRegistry
from foveal.jobs.workspace import WORKSPACE_ENV, Workspace

__all__ = [
    "cancel",
    "get",
    "list",
    "list_jobs",
    "logs",
    "SCHEMA_VERSION",
    "WORKSPACE_ENV",
    "AmbiguousJobIdError",
    "HandoffError",
    "Job",
    "JobError",
    "JobNotFoundError",
    "JobRegistry",
    "JobStateError",
    "JobStatus",
    "Workspace",
    "apply_handoff",
    "canonical_json",
    "describe_parent",
    "new_job_id",
    "parse_parent_checkpoint",
    "pid_alive",
    "resolve_handoff",
    "spec_hash",
    "this_host",
    "utc_now",
]

list = list_jobs  # noqa: A001 - the API's name (foveal.jobs.list), as `foveal jobs list`
