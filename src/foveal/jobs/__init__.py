"""Jobs: the job record, the SQLite job registry, the workspace layout and handoff inference.

This package stays light (no torch): listing and managing jobs never imports a network.
"""

from foveal.errors import (
    AmbiguousJobIdError,
    HandoffError,
    JobError,
    JobNotFoundError,
    JobStateError,
)
from foveal.jobs.handoff import (
    Checkpoint,
    apply_handoff,
    find_checkpoints,
    parse_selection,
    resolve_handoff,
    select_checkpoint,
)
from foveal.jobs.model import Job, JobStatus, canonical_json, new_job_id, spec_hash, utc_now
from foveal.jobs.process import pid_alive, this_host
from foveal.jobs.registry import SCHEMA_VERSION, JobRegistry
from foveal.jobs.workspace import WORKSPACE_ENV, Workspace

__all__ = [
    "SCHEMA_VERSION",
    "WORKSPACE_ENV",
    "AmbiguousJobIdError",
    "Checkpoint",
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
    "find_checkpoints",
    "new_job_id",
    "parse_selection",
    "pid_alive",
    "resolve_handoff",
    "select_checkpoint",
    "spec_hash",
    "this_host",
    "utc_now",
]
