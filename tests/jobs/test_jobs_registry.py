import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from foveal.jobs import (
    SCHEMA_VERSION,
    AmbiguousJobIdError,
    JobError,
    JobNotFoundError,
    JobRegistry,
    JobStateError,
    JobStatus,
    spec_hash,
)

pytestmark = pytest.mark.unit

SPEC = {"train": {"num_epochs": 2}, "encryption_key": "k"}


@pytest.fixture
def registry(tmp_path):
    return JobRegistry(tmp_path / "registry.sqlite")


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _dead_pid() -> int:
    proc = _sleeper()
    proc.kill()
    proc.wait()
    return proc.pid


def test_create_get_roundtrip(registry, tmp_path):
    job = registry.create("mae", "train", SPEC)
    assert job.status is JobStatus.PENDING
    assert job.spec == SPEC and job.spec_hash == spec_hash(SPEC)
    assert job.results_dir == str(tmp_path / "results" / job.id)
    assert job.created_at.endswith("+00:00") and job.started_at is None
    assert registry.get(job.id) == job
    data = job.to_dict()
    assert data["status"] == "Pending" and data["spec"] == SPEC


def test_spec_hash_is_order_independent():
    assert spec_hash({"a": 1, "b": {"c": 2, "d": 3}}) == spec_hash({"b": {"d": 3, "c": 2}, "a": 1})
    assert spec_hash({"a": 1}) != spec_hash({"a": 2})
    # The stored form is pinned: hashes in existing registries must stay valid.
    expected = hashlib.sha256(json.dumps({"b": [1, "é"], "a": None}, sort_keys=True).encode()).hexdigest()
    assert spec_hash({"a": None, "b": [1, "é"]}) == expected


def test_ids_sort_by_creation_and_list_is_newest_first(registry):
    jobs = [registry.create("mae", "train", {"i": i}) for i in range(3)]
    jobs.append(registry.create("nvdinov2", "export", {}, parent_id=jobs[0].id))
    assert sorted(j.id[:15] for j in jobs) == [j.id[:15] for j in jobs]
    assert [j.id for j in registry.list()] == [j.id for j in reversed(jobs)]
    assert [j.id for j in registry.list(network="mae", limit=2)] == [jobs[2].id, jobs[1].id]
    assert [j.id for j in registry.list(action="export")] == [jobs[3].id]
    registry.finish(jobs[1].id, "done")
    assert [j.id for j in registry.list(status="Done")] == [jobs[1].id]
    with pytest.raises(ValueError, match="unknown job status"):
        registry.list(status="finished")


def test_prefix_lookup(registry):
    a = registry.create("mae", "train", {}, job_id="abc-111")
    registry.create("mae", "train", {}, job_id="abc-222")
    assert registry.get("abc-1").id == a.id
    with pytest.raises(AmbiguousJobIdError, match="abc-111.*abc-222|abc-222.*abc-111"):
        registry.get("abc")
    with pytest.raises(JobNotFoundError, match="foveal jobs list"):
        registry.get("zzz")


def test_explicit_job_id_must_be_unique_and_safe(registry):
    registry.create("mae", "train", {}, job_id="run-1")
    with pytest.raises(JobStateError, match="already exists"):
        registry.create("mae", "train", {}, job_id="run-1")
    with pytest.raises(ValueError, match="invalid job id"):
        registry.create("mae", "train", {}, job_id="../escape")


def test_missing_parent_is_one_line_error(registry):
    with pytest.raises(JobNotFoundError) as info:
        registry.create("mae", "evaluate", {}, parent_id="20990101-000000-ffffff")
    message = str(info.value)
    assert "20990101-000000-ffffff" in message and "foveal jobs list" in message and "\n" not in message
    assert registry.list() == []


def test_parent_prefix_is_stored_as_full_id(registry):
    parent = registry.create("mae", "train", {}, job_id="parent-job")
    child = registry.create("mae", "export", {}, parent_id="parent-j")
    assert child.parent_id == parent.id


def test_lifecycle_merges_kpis_and_artifacts(registry):
    job = registry.create("mae", "train", SPEC)
    running = registry.mark_running(job.id, 4242)
    assert running.status is JobStatus.RUNNING and running.pid == 4242 and running.host and running.started_at
    registry.update_kpis(job.id, {"loss": 1.0, "acc": 0.1})
    registry.update_kpis(job.id, {"loss": 0.5})
    registry.add_artifacts(job.id, {"onnx": "/a/b.onnx"})
    done = registry.finish(job.id, JobStatus.DONE, kpis={"val": 2}, artifacts={"best_checkpoint": "x.pth"})
    assert done.status is JobStatus.DONE and done.finished_at
    assert done.kpis == {"loss": 0.5, "acc": 0.1, "val": 2}
    assert done.artifacts == {"onnx": "/a/b.onnx", "best_checkpoint": "x.pth"}
    with pytest.raises(JobStateError, match="already Done"):
        registry.finish(job.id, JobStatus.ERROR, message="late")
    with pytest.raises(JobStateError, match="cannot start"):
        registry.mark_running(job.id, 1)
    with pytest.raises(ValueError, match="finish needs"):
        registry.finish(registry.create("mae", "train", {}).id, JobStatus.RUNNING)


def test_cancel_pending(registry):
    job = registry.create("mae", "train", {})
    canceled = registry.request_cancel(job.id)
    assert canceled.status is JobStatus.CANCELED and canceled.finished_at
    assert registry.request_cancel(job.id).status is JobStatus.CANCELED  # idempotent
    with pytest.raises(JobStateError, match="cannot start"):
        registry.mark_running(job.id, 1)


def test_cancel_running_sends_sigterm_and_stays_canceled(registry):
    proc = _sleeper()
    try:
        job = registry.create("mae", "train", {})
        registry.mark_running(job.id, proc.pid)
        assert registry.request_cancel(job.id).status is JobStatus.CANCELED
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    # The runner reports the SIGTERM as an error: the user's cancel is kept.
    after = registry.finish(job.id, JobStatus.ERROR, kpis={"loss": 1.0}, message="terminated")
    assert after.status is JobStatus.CANCELED and after.kpis == {"loss": 1.0}


def test_cancel_finished_job_is_an_error(registry):
    job = registry.create("mae", "train", {})
    registry.finish(job.id, JobStatus.ERROR, message="boom")
    with pytest.raises(JobStateError, match="nothing to cancel"):
        registry.request_cancel(job.id)


def test_find_interrupted_and_reap_dead(registry):
    h = spec_hash(SPEC)
    assert registry.find_interrupted("mae", "train", h) is None
    proc = _sleeper()
    try:
        alive = registry.create("mae", "train", SPEC)
        registry.mark_running(alive.id, proc.pid)
        assert registry.find_interrupted("mae", "train", h) is None  # a live run is not interrupted

        killed = registry.create("mae", "train", SPEC)
        registry.mark_running(killed.id, _dead_pid())
        registry.create("mae", "train", SPEC)  # a newer Pending job is not interrupted
        registry.create("mae", "train", {"other": 1})
        assert registry.find_interrupted("mae", "train", h).id == killed.id
        assert registry.find_interrupted("mae", "evaluate", h) is None

        reaped = registry.reap_dead()
        assert [j.id for j in reaped] == [killed.id]
        assert reaped[0].status is JobStatus.ERROR and reaped[0].message == f"process {reaped[0].pid} died"
        assert registry.get(alive.id).status is JobStatus.RUNNING
        assert registry.reap_dead() == []
        assert registry.find_interrupted("mae", "train", h).id == killed.id  # now as Error

        # Resuming the interrupted job in a new process.
        resumed = registry.mark_running(killed.id, proc.pid, allow_restart=True)
        assert resumed.status is JobStatus.RUNNING and resumed.message == "" and resumed.finished_at is None
    finally:
        proc.kill()
        proc.wait()


def test_restart_refuses_a_live_process(registry):
    proc = _sleeper()
    try:
        job = registry.create("mae", "train", {})
        registry.mark_running(job.id, proc.pid)
        with pytest.raises(JobStateError, match="Running"):
            registry.mark_running(job.id, proc.pid + 1, allow_restart=True)
    finally:
        proc.kill()
        proc.wait()


def test_schema_is_versioned_and_newer_schema_is_refused(registry, tmp_path):
    assert registry.schema_version() == SCHEMA_VERSION
    assert JobRegistry(registry.db_path).schema_version() == SCHEMA_VERSION  # reopening is idempotent
    with sqlite3.connect(registry.db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(JobError, match="upgrade foveal"):
        JobRegistry(registry.db_path)


def test_locked_database_is_retried_then_reported(tmp_path):
    registry = JobRegistry(tmp_path / "r.sqlite", busy_timeout=0.05, retries=1)
    holder = sqlite3.connect(registry.db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        start = time.monotonic()
        with pytest.raises(JobError, match="stayed locked"):
            registry.create("mae", "train", {})
        assert time.monotonic() - start < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert registry.create("mae", "train", {}).status is JobStatus.PENDING
