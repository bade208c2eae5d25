"""Several processes writing one registry at once: nothing lost, nothing raised."""

import multiprocessing as mp
import os

import pytest

from foveal.jobs import JobRegistry, JobStatus

pytestmark = pytest.mark.unit

WORKERS = 4
JOBS_PER_WORKER = 50


def _worker(db_path: str, shared_id: str, worker: int, barrier) -> None:
    registry = JobRegistry(db_path)
    barrier.wait()
    for i in range(JOBS_PER_WORKER):
        job = registry.create("mae", "train", {"worker": worker, "i": i}, parent_id=shared_id)
        registry.mark_running(job.id, os.getpid())
        registry.update_kpis(job.id, {"loss": i})
        registry.update_kpis(shared_id, {f"w{worker}_{i}": i})  # read-modify-write on one row
        registry.add_artifacts(shared_id, {f"w{worker}_{i}": f"/x/{i}"})
        registry.finish(job.id, JobStatus.DONE, kpis={"worker": worker})


def test_concurrent_writers_lose_nothing(tmp_path):
    db_path = tmp_path / "registry.sqlite"
    shared = JobRegistry(db_path).create("mae", "train", {})
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=_worker, args=(str(db_path), shared.id, w, barrier)) for w in range(WORKERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0] * WORKERS

    registry = JobRegistry(db_path)
    children = [j for j in registry.list() if j.id != shared.id]
    assert len(children) == WORKERS * JOBS_PER_WORKER
    assert len({j.id for j in children}) == len(children)
    assert all(j.status is JobStatus.DONE and j.parent_id == shared.id for j in children)
    assert all(j.kpis == {"loss": j.spec["i"], "worker": j.spec["worker"]} for j in children)
    final = registry.get(shared.id)
    assert len(final.kpis) == WORKERS * JOBS_PER_WORKER
    assert len(final.artifacts) == WORKERS * JOBS_PER_WORKER
