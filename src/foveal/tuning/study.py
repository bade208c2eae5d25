"""A study's storage, settings, metric and the bookkeeping that makes it resumable.

Layout::

    <workspace>/automl/<study>/study.db          Optuna storage (SQLite)
    <workspace>/automl/<study>/trials/trial_NNN/ one train job's results folder per trial
    <workspace>/automl/<study>/best_model/       the best trial's checkpoint
    <workspace>/automl/<study>/trials.csv|json, *.png, summary.json

Each Optuna trial carries user attributes: ``job_id``, ``results_dir``, ``params`` (spec key ->
value), ``error`` (failed trials), ``pruned_at_epoch``, ``heartbeat_at`` (running trials: the
last time their worker was seen alive); a trial left RUNNING by a study process that died is
marked ``interrupted`` (failed, not counted against the budget) and run again, resuming its job
from the newest checkpoint.

Storage: the workspace's SQLite file by default (one study process at a time). ``--storage``
names a shared one, so that several ``foveal automl`` workers, on one machine or on several that
share the workspace, work on one study: an RDB URL (``postgresql://``, ``mysql://``,
``sqlite:///``; Optuna's RDBStorage) or ``journal:///path/file.log`` (Optuna's journal file
storage, for clusters with a shared filesystem and no database). Workers join the study of that
name; each asks Optuna for new trials, so none runs twice. A worker beats the heartbeat of its
running trials; one whose heartbeat is older than the grace period (its worker was killed) is
marked interrupted by any live worker, its job's processes stopped on this host, and it runs
again. Optuna's own heartbeat exists for RDBStorage only, and its failure callback sees the
trial already finished (no attribute can be written to it any more), hence heartbeats kept as
trial attributes, the same on every storage.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import zlib
from pathlib import Path
from typing import Any

from foveal.errors import AutoMLError, UsageError
from foveal.jobs.model import Job, JobStatus
from foveal.jobs.registry import JobRegistry
from foveal.networks.registry import Network
from foveal.spec import get_dotted

logger = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")
_MODES = {"min": "minimize", "max": "maximize", "minimize": "minimize", "maximize": "maximize"}
_MINIMIZE_WORDS = ("loss", "error", "err", "mse", "mae_", "rmse", "perplexity", "wer", "cer")
_MAXIMIZE_WORDS = ("acc", "top1", "top5", "map", "auc", "f1", "iou", "precision", "recall", "psnr", "ssim")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Settings that must not change when a study is resumed (the trials would not compare).
_FIXED_SETTINGS = ("network", "metric", "direction", "algorithm", "space")


# ------------------------------------------------------------------------------------- metric


def _looks_like(metric: str, words: tuple[str, ...]) -> bool:
    name = metric.lower()
    return any(w in name for w in words)


def _has_validation(network: Network, base: dict[str, Any]) -> bool:
    """Whether the base spec sets the validation data a ``val_*`` metric needs."""
    val_keys = [need.key for need in network.metadata.needs("train") if "val" in need.key]
    return not val_keys or any(get_dotted(base, k) for k in val_keys)


def resolve_metric(
    network: Network, base: dict[str, Any], metric: str | None, direction: str | None
) -> tuple[str, str]:
    """(metric, direction) of a study: the user's, else the network's monitoring metadata
    (:meth:`foveal.networks.registry.Monitoring.choose`, the rule the workflow catalog uses).

    A loss is never maximised: ``--direction maximize`` for a metric named like a loss is an
    error, and a metric of unknown sense needs an explicit direction.
    """
    monitoring = network.metadata.monitoring
    stage = get_dotted(base, "train.stage")
    if metric is None:
        has_validation = _has_validation(network, base)
        choice = monitoring.choose(stage, has_validation)
        if choice.metric.startswith("val_") and not has_validation:
            raise UsageError(
                f"{network.name}: the default metric {choice.metric} needs validation data in the spec; "
                "set it or pass --metric"
            )
        if not has_validation and choice.metric != monitoring.choose(stage).metric:
            logger.info("no validation data in the spec: optimising %s", choice.metric)
        metric = choice.metric
        direction = direction or choice.direction
    if direction is None:
        mode = monitoring.mode_of(metric)
        if mode is not None:
            direction = _MODES[mode]
        elif _looks_like(metric, _MINIMIZE_WORDS):
            direction = "minimize"
        elif _looks_like(metric, _MAXIMIZE_WORDS):
            direction = "maximize"
        else:
            raise UsageError(
                f"--metric {metric}: cannot tell whether to minimize or maximize it; pass --direction"
            )
    direction = _MODES.get(direction.lower(), direction) if isinstance(direction, str) else direction
    if direction not in DIRECTIONS:
        raise UsageError(f"--direction {direction}: expected minimize or maximize")
    if direction == "maximize" and _looks_like(metric, ("loss",)):
        raise UsageError(
            f"--metric {metric} is a loss: maximizing it would pick the worst model; use --direction minimize"
        )
    return metric, direction


# -------------------------------------------------------------------------------------- study


def check_study_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise UsageError(f"--study {name!r}: use letters, digits, '.', '_' or '-' (it names a folder)")
    return name


def study_dir(workspace_root: Path, name: str) -> Path:
    return Path(workspace_root) / "automl" / check_study_name(name)


def default_seed(name: str) -> int:
    """A stable seed per study name, so that a study's sampling is reproducible."""
    return zlib.crc32(name.encode("utf-8")) % (2**31)


HEARTBEAT_ATTR = "heartbeat_at"
_CREDENTIALS_RE = re.compile(r"(?<=://)([^:/@]+):([^@]*)@")


def redact_url(url: str) -> str:
    """``scheme://user:***@host/db``: a storage URL as it may be logged or printed."""
    return _CREDENTIALS_RE.sub(lambda m: f"{m.group(1)}:***@", url)


def open_storage(url: str | None, folder: Path) -> tuple[Any, bool]:
    """``(Optuna storage, shared)`` for ``--storage url`` (None: ``folder/study.db``, not shared).

    Raises:
        UsageError: an unknown scheme, a missing database driver, or a database that does not
            answer (the message never shows the password).
    """
    import optuna

    if url is None:
        folder.mkdir(parents=True, exist_ok=True)
        db = folder / "study.db"
        return optuna.storages.RDBStorage(f"sqlite:///{db}", engine_kwargs={"connect_args": {"timeout": 60}}), False
    shown = redact_url(url)
    if url.startswith("journal://"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal://") :]).expanduser()
        if not path.parent.is_dir():
            raise UsageError(f"--storage {shown}: folder {path.parent} does not exist (a shared filesystem path)")
        return JournalStorage(JournalFileBackend(str(path))), True
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme.startswith(("postgresql", "mysql", "sqlite", "oracle", "mssql")):
        raise UsageError(
            f"--storage {shown}: expected an RDB URL (postgresql://user@host/db, mysql://..., sqlite:///file.db) "
            "or journal:///shared/path/study.log"
        )
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if scheme.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs), True
    except ImportError as exc:  # Optuna wraps SQLAlchemy's missing-driver ModuleNotFoundError
        missing = getattr(exc.__cause__, "name", None) or getattr(exc, "name", None) or "a driver"
        hint = {"psycopg": "pip install 'foveal[postgres]' (psycopg 3)", "psycopg2": "pip install psycopg2-binary",
                "pymysql": "pip install PyMySQL", "MySQLdb": "pip install mysqlclient"}.get(missing, f"pip install {missing}")  # fmt: skip
        raise UsageError(f"--storage {shown}: the database driver {missing} is not installed; {hint}") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's connection errors: one line, no secret
        first = redact_url(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise UsageError(f"--storage {shown}: cannot open the study storage: {first}") from None


def open_study(
    folder: Path,
    name: str,
    settings: dict[str, Any],
    *,
    resume: bool,
    sampler_factory: Any,
    pruner: Any,
    storage_url: str | None = None,
) -> Any:
    """Create (or, with ``resume``, load) the Optuna study in ``folder/study.db``; with
    ``storage_url`` (a shared storage), create it or join it as it is.

    Args:
        settings: network, metric, direction, algorithm, space, ...: stored on creation and
            checked on resume or join (``_FIXED_SETTINGS`` must match).
        sampler_factory: ``seed -> sampler``; resumed studies get a seed moved on by the number
            of trials so far, so a random sampler does not replay the first trials' draws.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, shared = open_storage(storage_url, folder)
    folder.mkdir(parents=True, exist_ok=True)
    exists = name in optuna.study.get_all_study_names(storage)
    if exists and not resume and not shared:
        raise UsageError(
            f"study {name} already exists in {folder}; pass --resume to continue it or --study NEW"
        )
    if resume and not exists:
        raise UsageError(f"--resume: no study {name} in {folder}; run without --resume to start it")
    if not exists:
        try:
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                direction=settings["direction"],
                sampler=sampler_factory(settings["seed"]),
                pruner=pruner,
            )
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it just now
            time.sleep(1.0)
            return open_study(folder, name, settings, resume=True, sampler_factory=sampler_factory,
                              pruner=pruner, storage_url=storage_url)  # fmt: skip
        for key, value in settings.items():
            study.set_user_attr(key, value)
        return study
    existing = optuna.load_study(study_name=name, storage=storage)
    stored = existing.user_attrs
    for _ in range(20):  # a worker that just created the study may still be writing its settings
        if all(k in stored for k in _FIXED_SETTINGS):
            break
        time.sleep(0.5)
        stored = optuna.load_study(study_name=name, storage=storage).user_attrs
    for key in _FIXED_SETTINGS:
        if json.dumps(stored.get(key), sort_keys=True) != json.dumps(settings.get(key), sort_keys=True):
            raise UsageError(
                f"--resume {name}: the study was created with {key}={stored.get(key)!r}, not "
                f"{settings.get(key)!r}; resume with the same settings or start a new --study"
            )
    for key in ("overrides", "spec_file"):
        if stored.get(key) != settings.get(key):
            logger.warning(
                "--resume %s: %s changed since the study started; trials may not compare", name, key
            )
    return optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=sampler_factory(int(stored.get("seed", 0)) + len(existing.trials)),
        pruner=pruner,
    )


def trial_state(trial: Any) -> str:
    """``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``, ``WAITING`` or ``INTERRUPTED``."""
    if trial.user_attrs.get("interrupted"):
        return "INTERRUPTED"
    return trial.state.name


def counted_trials(study: Any) -> list[Any]:
    """Trials that used up budget: complete, pruned or failed (interrupted ones run again)."""
    return [t for t in study.get_trials(deepcopy=False) if trial_state(t) in ("COMPLETE", "PRUNED", "FAIL")]


def best_trial(study: Any) -> Any | None:
    """The best complete trial by the study's direction (None if none completed)."""
    complete = [
        t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None
    ]
    if not complete:
        return None
    maximize = study.direction.name == "MAXIMIZE"
    return (max if maximize else min)(
        complete, key=lambda t: (t.value, -t.number) if maximize else (t.value, t.number)
    )


# ------------------------------------------------------------------------------- metric values


def metric_by_epoch(status_lines: list[dict[str, Any]], metric: str) -> dict[int, float]:
    """``{epoch: value}`` of ``metric`` from a trial's status.json lines (finite values only)."""
    values: dict[int, float] = {}
    for line in status_lines:
        kpi, epoch = line.get("kpi") or {}, line.get("epoch")
        if metric not in kpi or not isinstance(epoch, int) or line.get("status") != "RUNNING":
            continue
        try:
            value = float(kpi[metric])
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            values[epoch] = value
    return values


def final_value(job: Job, by_epoch: dict[int, float], metric: str) -> float:
    """A finished trial's objective: the metric at its last epoch (else the job's final KPI)."""
    if by_epoch:
        return by_epoch[max(by_epoch)]
    value = job.kpis.get(metric)
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    found = ", ".join(sorted(job.kpis)) or "none"
    raise AutoMLError(f"trial job {job.id} did not report the metric {metric} (KPIs: {found}); pass --metric")


# ----------------------------------------------------------------------------------- recovery


def beat(study: Any, trials: list[Any]) -> None:
    """Record that this worker's ``trials`` are alive (``heartbeat_at``, seconds since the epoch)."""
    now = time.time()
    for trial in trials:
        try:
            study._storage.set_trial_user_attr(trial._trial_id, HEARTBEAT_ATTR, now)
        except Exception as exc:  # noqa: BLE001 - a missed beat is retried at the next poll
            logger.debug("heartbeat of trial %d not recorded: %s", trial.number, exc)


def _alive(trial: Any, stale_after: float | None, now: float) -> bool:
    """Whether another worker still runs ``trial`` (its heartbeat, else its start, is recent)."""
    if stale_after is None:
        return False
    seen = trial.user_attrs.get(HEARTBEAT_ATTR)
    if seen is None and trial.datetime_start is not None:
        seen = trial.datetime_start.timestamp()
    return seen is not None and now - float(seen) < stale_after


def recover_interrupted(
    study: Any,
    registry: JobRegistry,
    metric: str,
    read_lines: Any,
    *,
    stale_after: float | None = None,
    own: set[int] | None = None,
) -> int:
    """Settle trials left RUNNING by a study process that stopped; returns how many restart.

    A trial whose job finished meanwhile is recorded with its result; any other is marked
    interrupted (failed, not counted) after its job is stopped, and enqueued again with the
    same parameters: the new trial resumes that job from its newest checkpoint.

    Args:
        stale_after: shared storage: only trials whose heartbeat is older than this many seconds
            (their worker died); None: every RUNNING trial (the only worker is this one).
        own: numbers of the trials this worker runs (never stale).
    """
    import optuna

    from foveal.jobs.process import stop_job_processes

    storage = study._storage
    restarts = 0
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.number in (own or set()) or _alive(trial, stale_after, now):
            continue
        try:
            restarts += _settle_interrupted(study, storage, trial, registry, metric, read_lines, stop_job_processes)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, ValueError) as exc:
            # another worker settled it first (its state changed under us)
            logger.debug("trial %d settled elsewhere: %s", trial.number, exc)
    return restarts


def _settle_interrupted(
    study: Any, storage: Any, trial: Any, registry: JobRegistry, metric: str, read_lines: Any, stop: Any
) -> int:
    import optuna

    job_id = trial.user_attrs.get("job_id")
    job = registry.get(job_id) if job_id and registry.exists(job_id) else None
    if job is not None and job.status is JobStatus.DONE:
        by_epoch = metric_by_epoch(read_lines(job), metric)
        for epoch, value in sorted(by_epoch.items()):
            storage.set_trial_intermediate_value(trial._trial_id, epoch, value)
        try:
            study.tell(trial.number, final_value(job, by_epoch, metric))
            logger.info("trial %d finished while its worker was stopped; recorded", trial.number)
            return 0
        except AutoMLError as exc:
            storage.set_trial_user_attr(trial._trial_id, "error", str(exc))
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            return 0
    if job is not None and not job.status.is_terminal:
        registry.request_cancel(job.id)
        stop(registry.get(job.id), grace_s=5.0)
    storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
    storage.set_trial_user_attr(trial._trial_id, "error", "interrupted: its study process stopped")
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # raises if another worker told first
    attrs = {"restart_of": trial.number}
    if job is not None:
        attrs["resume_job_id"] = job.id
    study.enqueue_trial(dict(trial.params), user_attrs=attrs, skip_if_exists=False)
    logger.info("trial %d was interrupted; it runs again (job %s resumes)", trial.number, job_id)
    return 1
