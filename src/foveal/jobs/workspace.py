"""The workspace: one folder holding the job registry, results, caches and data.

Layout::

    <root>/registry.sqlite     job registry (see :mod:`foveal.jobs.registry`)
    <root>/results/<job_id>/   one results folder per job
    <root>/cache/              extracted datasets, downloaded weights
    <root>/data/               datasets the user keeps in the workspace
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foveal.jobs.registry import JobRegistry

WORKSPACE_ENV = "FOVEAL_WORKSPACE"
DEFAULT_WORKSPACE = "foveal-workspace"


class Workspace:
    """A workspace rooted at ``root`` (made absolute; nothing is created until :meth:`ensure`)."""

    def __init__(self, root: str | Path):
        self._root = Path(root).expanduser().absolute()

    @classmethod
    def resolve(cls, path: str | Path | None = None) -> Workspace:
        """The workspace to use: ``path`` if given, else ``$FOVEAL_WORKSPACE``, else ``./foveal-workspace``."""
        if path is not None and str(path) != "":
            return cls(path)
        env = os.environ.get(WORKSPACE_ENV, "").strip()
        return cls(env if env else Path.cwd() / DEFAULT_WORKSPACE)

    @property
    def root(self) -> Path:
        return self._root

    @property
    def db_path(self) -> Path:
        return self._root / "registry.sqlite"

    @property
    def results_root(self) -> Path:
        return self._root / "results"

    @property
    def cache_dir(self) -> Path:
        return self._root / "cache"

    @property
    def data_dir(self) -> Path:
        return self._root / "data"

    def results_dir(self, job_id: str) -> Path:
        """The default results folder of job ``job_id``."""
        return self.results_root / job_id

    def ensure(self) -> Workspace:
        """Create the workspace folders (idempotent); returns ``self``."""
        for folder in (self._root, self.results_root, self.cache_dir, self.data_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def open_registry(self) -> JobRegistry:
        """The job registry of this workspace (folders are created first)."""
        from foveal.jobs.registry import JobRegistry

        self.ensure()
        return JobRegistry(self.db_path, results_root=self.results_root)

    def __repr__(self) -> str:
        return f"Workspace({str(self._root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Workspace) and other._root == self._root

    def __hash__(self) -> int:
        return hash(self._root)
