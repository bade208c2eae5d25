"""The job registry: SQLite in the workspace, safe for many processes writing at once.

Concurrency design:

* WAL journal, so readers never block the writer and the writer never blocks readers.
* One connection per call (opened, used, closed): a :class:`JobRegistry` holds only a path, so
  it can be shared between threads and survives ``fork`` without sharing a connection.
* Every read-modify-write runs in one short ``BEGIN IMMEDIATE`` transaction: the write lock is
  taken up front, so two writers cannot both read and then lose one update.
* ``busy_timeout`` makes SQLite wait for the lock; on top of that a ``database is locked``
  error retries the whole transaction with jittered backoff.
* Side effects outside the database (signals) happen after the commit.

WAL needs a local filesystem (not NFS/SMB); put the workspace on a local disk.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import random
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from foveal.errors import AmbiguousJobIdError, JobError, JobNotFoundError, JobStateError
from foveal.jobs.model import Job, JobStatus, check_job_id, new_job_id, spec_hash, utc_now
from foveal.jobs.process import pid_alive, process_start_ticks, this_host

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1

_SCHEMA_V1 = (
    """CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        network TEXT NOT NULL,
        action TEXT NOT NULL,
        spec TEXT NOT NULL,
        spec_hash TEXT NOT NULL,
        parent_id TEXT,
        platform TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        results_dir TEXT NOT NULL,
        pid INTEGER,
        pid_start INTEGER,
        host TEXT,
        kpis TEXT NOT NULL DEFAULT '{}',
        artifacts TEXT NOT NULL DEFAULT '{}',
        message TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX jobs_by_spec ON jobs (network, action, spec_hash)",
    "CREATE INDEX jobs_by_status ON jobs (status)",
)

# Migrations from schema version N to N + 1: _MIGRATIONS[N] = statements. Add, never edit.
_MIGRATIONS: dict[int, tuple[str, ...]] = {}

_COLUMNS = (
    "id, network, action, spec, spec_hash, parent_id, platform, status, created_at, started_at, "
    "finished_at, results_dir, pid, pid_start, host, kpis, artifacts, message"
)


def _row_to_job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        network=row["network"],
        action=row["action"],
        spec=json.loads(row["spec"]),
        spec_hash=row["spec_hash"],
        parent_id=row["parent_id"],
        platform=row["platform"],
        status=JobStatus(row["status"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        results_dir=row["results_dir"],
        pid=row["pid"],
        host=row["host"],
        kpis=json.loads(row["kpis"]),
        artifacts=json.loads(row["artifacts"]),
        message=row["message"],
    )


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _alive_here(row: sqlite3.Row) -> bool:
    """Whether the job's recorded process runs on this host (False for other hosts: unknown)."""
    return row["host"] == this_host() and pid_alive(row["pid"], row["pid_start"])


def _dead_here(row: sqlite3.Row) -> bool:
    """Whether the job's recorded process is known to be gone (same host, pid not alive)."""
    return (
        row["pid"] is not None and row["host"] == this_host() and not pid_alive(row["pid"], row["pid_start"])
    )


class JobRegistry:
    """Jobs of one workspace, stored in ``db_path`` (created with its folder on first use).

    Args:
        db_path: the SQLite file, usually ``Workspace.db_path``.
        results_root: where a job's results folder goes when ``create`` is given none
            (default: ``<db folder>/results``, the workspace layout).
        busy_timeout: seconds SQLite waits for a lock before a call retries.
        retries: how many times a transaction is retried after ``database is locked``.
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        results_root: str | Path | None = None,
        busy_timeout: float = 30.0,
        retries: int = 5,
    ):
        self.db_path = Path(db_path).expanduser().absolute()
        self.results_root = Path(results_root).absolute() if results_root else self.db_path.parent / "results"
        self._busy_timeout = busy_timeout
        self._retries = retries
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._run(self._set_wal, transaction=False)
        self._run(self._migrate)

    # -- connection plumbing -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.db_path), timeout=self._busy_timeout, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: no corruption, fewer fsyncs
        return conn

    @contextmanager
    def _transaction(self, transaction: bool) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            if transaction:
                conn.execute("BEGIN IMMEDIATE")
            yield conn
            if conn.in_transaction:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        finally:
            conn.close()

    def _run(self, fn: Callable[[sqlite3.Connection], T], *, transaction: bool = True) -> T:
        """Run ``fn(conn)`` in one transaction, retrying the whole of it while the db is locked."""
        delay = 0.05
        for attempt in range(self._retries + 1):
            try:
                with self._transaction(transaction) as conn:
                    return fn(conn)
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc):
                    raise JobError(f"job registry {self.db_path}: {exc}") from exc
                if attempt == self._retries:
                    raise JobError(
                        f"job registry {self.db_path} stayed locked after {self._retries + 1} tries; "
                        "another process holds it (SQLite WAL needs a local disk, not NFS)"
                    ) from exc
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    @staticmethod
    def _set_wal(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the db file

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row["value"]) if row else 0
        if version > SCHEMA_VERSION:
            raise JobError(
                f"job registry schema version {version} is newer than this foveal knows "
                f"({SCHEMA_VERSION}); upgrade foveal"
            )
        if version == 0:
            for statement in _SCHEMA_V1:
                conn.execute(statement)
            version = 1
        while version < SCHEMA_VERSION:
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
            version += 1
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(version),),
        )

    def schema_version(self) -> int:
        row = self._run(lambda c: c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone())
        return int(row["value"])

    # -- lookups -------------------------------------------------------------------------------

    @staticmethod
    def _find_row(conn: sqlite3.Connection, job_id: str, *, what: str = "job") -> sqlite3.Row:
        """The row of ``job_id`` or of the one job whose id starts with it (like git)."""
        job_id = str(job_id).strip()
        if not job_id:
            raise JobNotFoundError(f"empty {what} id; see `foveal jobs list`")
        row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is not None:
            return row
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE substr(id, 1, ?) = ? ORDER BY seq DESC LIMIT 6",
            (len(job_id), job_id),
        ).fetchall()
        if not rows:
            raise JobNotFoundError(f"{what} {job_id!r} not found; see `foveal jobs list`")
        if len(rows) > 1:
            shown = ", ".join(r["id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise AmbiguousJobIdError(
                f"{what} id prefix {job_id!r} matches several jobs ({shown}); give more characters"
            )
        return rows[0]

    def get(self, job_id: str) -> Job:
        """The job with this id, or with the only id starting with it."""
        return _row_to_job(self._run(lambda c: self._find_row(c, job_id), transaction=False))

    def exists(self, job_id: str) -> bool:
        try:
            self.get(job_id)
        except JobNotFoundError:
            return False
        return True

    def list(
        self,
        *,
        network: str | None = None,
        action: str | None = None,
        status: JobStatus | str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs matching every given filter, newest first."""
        clauses: builtins.list[str] = []
        params: builtins.list[Any] = []
        if network is not None:
            clauses.append("network = ?")
            params.append(network)
        if action is not None:
            clauses.append("action = ?")
            params.append(action)
        if status is not None:
            clauses.append("status = ?")
            params.append(JobStatus.parse(status).value)
        sql = f"SELECT {_COLUMNS} FROM jobs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY seq DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, int(limit)))
        rows = self._run(lambda c: c.execute(sql, params).fetchall(), transaction=False)
        return [_row_to_job(r) for r in rows]

    # -- writes --------------------------------------------------------------------------------

    def create(
        self,
        network: str,
        action: str,
        spec: dict[str, Any],
        *,
        parent_id: str | None = None,
        platform: str = "local",
        results_dir: str | Path | None = None,
        job_id: str | None = None,
    ) -> Job:
        """Record a new Pending job. ``parent_id`` may be a unique prefix; the full id is stored.

        Raises:
            JobNotFoundError: the parent does not exist.
            JobStateError: ``job_id`` is taken.
        """
        if job_id is not None:
            check_job_id(job_id)
        spec_text = json.dumps(spec, sort_keys=True, default=str)
        digest = spec_hash(spec)

        def insert(conn: sqlite3.Connection) -> str:
            parent = (
                self._find_row(conn, parent_id, what="parent job")["id"] if parent_id is not None else None
            )
            for _ in range(10):
                new_id = job_id or new_job_id()
                folder = str(Path(results_dir).absolute()) if results_dir else str(self.results_root / new_id)
                try:
                    conn.execute(
                        "INSERT INTO jobs (id, network, action, spec, spec_hash, parent_id, platform, status, "
                        "created_at, results_dir) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            new_id,
                            network,
                            action,
                            spec_text,
                            digest,
                            parent,
                            platform,
                            JobStatus.PENDING.value,
                            utc_now(),
                            folder,
                        ),
                    )
                    return new_id
                except sqlite3.IntegrityError as exc:
                    if job_id is not None:
                        raise JobStateError(f"job id {job_id!r} already exists; pick another") from exc
            raise JobError("could not draw an unused job id in 10 tries")

        return self.get(self._run(insert))

    def _update(self, job_id: str, change: Callable[[sqlite3.Row], dict[str, Any]]) -> Job:
        """Read the row, compute changed columns with ``change(row)``, write them: one transaction."""

        def apply(conn: sqlite3.Connection) -> str:
            row = self._find_row(conn, job_id)
            values = change(row)
            if values:
                assignments = ", ".join(f"{column} = ?" for column in values)
                conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), row["id"]))
            return row["id"]

        return self.get(self._run(apply))

    def mark_running(self, job_id: str, pid: int, *, allow_restart: bool = False) -> Job:
        """Record that ``pid`` (on this host) runs the job.

        Only a Pending job may start, unless ``allow_restart``: then an Error/Canceled job, or a
        Running one whose process died, starts again (resuming after a kill).
        """

        def change(row: sqlite3.Row) -> dict[str, Any]:
            status = JobStatus(row["status"])
            restartable = status in (JobStatus.ERROR, JobStatus.CANCELED) or (
                status is JobStatus.RUNNING and (row["pid"] == pid or not _alive_here(row))
            )
            if status is not JobStatus.PENDING and not (allow_restart and restartable):
                raise JobStateError(f"job {row['id']} is {status.value}; it cannot start")
            return {
                "status": JobStatus.RUNNING.value,
                "started_at": utc_now(),
                "finished_at": None,
                "pid": int(pid),
                "pid_start": process_start_ticks(int(pid)),
                "host": this_host(),
                "message": "",
            }

        return self._update(job_id, change)

    def finish(
        self,
        job_id: str,
        status: JobStatus | str,
        *,
        kpis: dict[str, Any] | None = None,
        artifacts: dict[str, str] | None = None,
        message: str = "",
    ) -> Job:
        """End a job with a terminal status, merging KPIs and artifacts.

        A Canceled job stays Canceled (the lifecycle's Error after SIGTERM does not replace the
        user's cancel); a Done job cannot be finished again.
        """
        final = JobStatus.parse(status)
        if not final.is_terminal:
            raise ValueError(f"finish needs Done, Error or Canceled, not {final.value}")

        def change(row: sqlite3.Row) -> dict[str, Any]:
            current = JobStatus(row["status"])
            if current is JobStatus.DONE:
                raise JobStateError(f"job {row['id']} is already Done; its results are kept as they are")
            values = {
                "kpis": json.dumps({**json.loads(row["kpis"]), **(kpis or {})}, default=str),
                "artifacts": json.dumps({**json.loads(row["artifacts"]), **(artifacts or {})}, default=str),
                "finished_at": utc_now(),
            }
            if current is not JobStatus.CANCELED:
                values.update(status=final.value, message=message)
            return values

        return self._update(job_id, change)

    def update_kpis(self, job_id: str, kpis: dict[str, Any]) -> Job:
        """Merge ``kpis`` into the job's KPIs (new values win)."""
        return self._update(
            job_id, lambda row: {"kpis": json.dumps({**json.loads(row["kpis"]), **kpis}, default=str)}
        )

    def add_artifacts(self, job_id: str, artifacts: dict[str, str | Path]) -> Job:
        """Merge ``artifacts`` (kind -> path) into the job's artifacts."""
        new = {kind: str(path) for kind, path in artifacts.items()}
        return self._update(
            job_id, lambda row: {"artifacts": json.dumps({**json.loads(row["artifacts"]), **new})}
        )

    def set_message(self, job_id: str, message: str) -> Job:
        return self._update(job_id, lambda row: {"message": message})

    def request_cancel(self, job_id: str) -> Job:
        """Cancel a job: a Pending one is marked Canceled; a Running one is marked Canceled and its
        process, when alive on this host, gets SIGTERM. Canceling a Canceled job is a no-op.

        Raises:
            JobStateError: the job already ended (Done or Error).
        """
        to_signal: list[int] = []

        def change(row: sqlite3.Row) -> dict[str, Any]:
            status = JobStatus(row["status"])
            if status is JobStatus.CANCELED:
                return {}
            if status.is_terminal:
                raise JobStateError(f"job {row['id']} is {status.value}; there is nothing to cancel")
            if status is JobStatus.RUNNING and row["pid"] is not None:
                if _alive_here(row):
                    to_signal.append(int(row["pid"]))
                elif row["host"] != this_host():
                    logger.warning(
                        "job %s runs on host %s; it is marked Canceled but not signalled",
                        row["id"],
                        row["host"],
                    )
            return {
                "status": JobStatus.CANCELED.value,
                "finished_at": utc_now(),
                "message": "canceled by user",
            }

        job = self._update(job_id, change)
        for pid in to_signal:  # after the commit: the lifecycle's own finish() then sees Canceled
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return job

    def find_interrupted(self, network: str, action: str, spec_hash: str) -> Job | None:
        """The newest job of this network/action/spec that was interrupted: Error, Canceled, or
        Running with a dead process on this host. Used to resume the same command after a kill."""

        def find(conn: sqlite3.Connection) -> str | None:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE network = ? AND action = ? AND spec_hash = ? "
                "AND status IN (?, ?, ?) ORDER BY seq DESC",
                (
                    network,
                    action,
                    spec_hash,
                    JobStatus.RUNNING.value,
                    JobStatus.ERROR.value,
                    JobStatus.CANCELED.value,
                ),
            ).fetchall()
            for row in rows:
                if row["status"] != JobStatus.RUNNING.value or _dead_here(row):
                    return row["id"]
            return None

        found = self._run(find, transaction=False)
        return self.get(found) if found else None

    def reap_dead(self) -> builtins.list[Job]:
        """Mark Running jobs whose process died on this host as Error; returns them."""

        def reap(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE status = ? AND host = ?",
                (JobStatus.RUNNING.value, this_host()),
            ).fetchall()
            dead = [row for row in rows if _dead_here(row)]
            for row in dead:
                conn.execute(
                    "UPDATE jobs SET status = ?, finished_at = ?, message = ? WHERE id = ?",
                    (JobStatus.ERROR.value, utc_now(), f"process {row['pid']} died", row["id"]),
                )
            return [row["id"] for row in dead]

        return [self.get(job_id) for job_id in self._run(reap)]

    def __repr__(self) -> str:
        return f"JobRegistry({str(self.db_path)!r})"
