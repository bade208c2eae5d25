"""The study loop: ask Optuna for parameters, run each trial as a child train job in a local
subprocess, report its per-epoch metric from ``status.json``, prune, record, repeat.

Budget: a trial that completes, is pruned or fails counts against ``max_trials``; one
interrupted by a crash, Ctrl-C or the timeout does not, and ``--resume`` runs it again from its
job's newest checkpoint. If every counted trial failed, the study ends with the first error.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foveal import secrets
from foveal.engine.status import read_status
from foveal.errors import UsageError
from foveal.jobs.execute import load_prepared
from foveal.jobs.lifecycle import find_network, prepare_job, resolve_spec
from foveal.jobs.model import Job, JobStatus
from foveal.jobs.registry import JobRegistry
from foveal.jobs.workspace import Workspace
from foveal.platforms.local import LocalJobHandle, LocalPool
from foveal.spec import SpecError, action_schema, parse_overrides, to_dict
from foveal.tuning import StudyRequest, StudyResult
from foveal.tuning.algorithms import Algorithm, get_algorithm
from foveal.tuning.report import copy_best_checkpoint, delete_intermediate_checkpoints, write_reports
from foveal.tuning.space import SearchSpace, build_space, param_name
from foveal.tuning.study import (
    AutoMLError,
    beat,
    best_trial,
    counted_trials,
    default_seed,
    final_value,
    metric_by_epoch,
    open_study,
    recover_interrupted,
    redact_url,
    resolve_metric,
    study_dir,
    trial_state,
)

logger = logging.getLogger(__name__)

POLL_S = 1.0
CANCEL_GRACE_S = 10.0


@dataclass
class _Running:
    trial: Any  # optuna.Trial
    handle: LocalJobHandle
    reported: set[int] = field(default_factory=set)
    by_epoch: dict[int, float] = field(default_factory=dict)


def _read_lines(job: Job) -> list[dict[str, Any]]:
    return read_status(Path(job.results_dir) / "status.json")


class StudyController:
    """Runs one :class:`StudyRequest` (see :func:`foveal.tuning.run_study`)."""

    def __init__(self, request: StudyRequest, poll_s: float = POLL_S):
        self.request = request
        self.poll_s = poll_s
        if request.max_trials < 1 or (request.max_concurrent is not None and request.max_concurrent < 1):
            raise UsageError("--max-trials and --max-concurrent must be at least 1")
        if request.heartbeat_s <= 0:
            raise UsageError(f"--heartbeat {request.heartbeat_s}: expected a number of seconds > 0")
        if request.timeout_s is not None and request.timeout_s <= 0:
            raise UsageError(f"--timeout {request.timeout_s}: expected a number of seconds > 0")
        self.network = find_network(request.network)
        if not self.network.metadata.automl_enabled:
            raise UsageError(
                f"{self.network.name}: AutoML is not enabled for this network (automl_enabled: false)"
            )
        if "train" not in self.network.actions:
            raise UsageError(f"{self.network.name} has no train action to search over")
        self.algorithm: Algorithm = get_algorithm(request.algorithm)
        self.workspace = Workspace(request.workspace).ensure()
        self.registry = JobRegistry(self.workspace.db_path)
        self.base_overrides = parse_overrides(request.overrides)
        self.base = self._resolve_base()
        self.metric, self.direction = resolve_metric(
            self.network, self.base, request.metric, request.direction
        )
        self.space: SearchSpace = build_space(self.network, self._params(), request.ranges, self.base)
        self.name = request.study_name or f"{self.network.name}-{self.algorithm.name}"
        self.dir = study_dir(self.workspace.root, self.name)
        self.max_epochs = int(self.base.get("train", {}).get("num_epochs") or 1)
        self.running: dict[int, _Running] = {}
        # Each trial gets train.num_gpus GPUs of its own (CPU: its share of the cores); without
        # --max-concurrent, as many trials run at once as the GPUs allow (1 on CPU).
        gpus_per_trial = int(self.base.get("train", {}).get("num_gpus") or 1)
        self.pool: Any = self._pool(gpus_per_trial)

    def _params(self) -> list[str] | None:
        """The keys to search: the request's, else the schema's defaults, less the keys that
        change the loss's scale when the study ranks on a loss (values of trials that differ in
        a temperature or a prototype count do not compare); naming one then is an error."""
        meta = self.network.metadata
        if not meta.loss_scale_parameters or not self.metric.endswith("loss"):
            return self.request.params
        named = [*(self.request.params or []), *self.request.ranges]
        scaling = [k for k in named if meta.scales_loss(k)]
        if scaling:
            raise UsageError(
                f"{', '.join(scaling)}: changes the scale of {self.metric}, so trials ranked on it would not "
                f"compare; give labeled eval data ({self._eval_key()}) to rank on "
                f"{meta.monitoring.metric}, or leave it out of --params/--range"
            )
        if self.request.params:
            return self.request.params
        schema = action_schema(self.network.config_cls, "train", self.network.action_sections.get("train"))
        defaults = list(schema["automl_default_parameters"])
        kept = [k for k in defaults if not meta.scales_loss(k)]
        left_out = [k for k in defaults if meta.scales_loss(k)]
        if left_out:
            logger.info(
                "ranking on %s: searching without %s (they change the loss's scale)", self.metric, ", ".join(left_out)
            )
        if not kept:
            raise UsageError(f"{self.network.name}: every AutoML parameter changes {self.metric}'s scale")
        return kept

    def _eval_key(self) -> str:
        keys = [n.key for n in self.network.metadata.needs("train") if n.source == "eval"]
        return keys[0] if keys else "validation data"

    def _resolve_base(self) -> dict[str, Any]:
        """The base train spec (checked once, so a bad override is one error, not N failed trials)."""
        parent = self.registry.get(self.request.parent_job_id) if self.request.parent_job_id else None
        cfg = resolve_spec(
            self.network,
            "train",
            spec_file=self.request.spec_file,
            overrides=self.base_overrides,
            parent=parent,
        )
        return to_dict(cfg)

    def settings(self) -> dict[str, Any]:
        return {
            "network": self.network.name,
            "metric": self.metric,
            "direction": self.direction,
            "algorithm": self.algorithm.name,
            "space": self.space.to_dicts(),
            "overrides": secrets.redact_overrides(list(self.request.overrides)),
            "spec_file": str(self.request.spec_file) if self.request.spec_file else None,
            "seed": default_seed(self.name),
        }

    # ---------------------------------------------------------------------------------- run

    def _pool(self, gpus_per_trial: int) -> Any:
        """Where trials run: the local pool, or a scheduler's (each trial one of its jobs)."""
        from foveal.platforms import find_platform

        platform = find_platform(self.request.platform)
        if not platform.remote:
            return LocalPool(self.workspace, self.request.max_concurrent, gpus_per_job=gpus_per_trial)
        from foveal.platforms.images import resolve_image
        from foveal.platforms.remote import RemotePool
        from foveal.platforms.runner import get_runner

        image = resolve_image(self.network, "train")["image"]
        return RemotePool(self.workspace, get_runner(platform.name), image, self.request.max_concurrent)

    @property
    def stale_after(self) -> float | None:
        """Seconds without a heartbeat after which a running trial of a shared study is taken as
        interrupted (None: this worker is the study's only one)."""
        return 3 * self.request.heartbeat_s if self.request.storage else None

    def run(self) -> StudyResult:
        study = open_study(
            self.dir,
            self.name,
            self.settings(),
            resume=self.request.resume,
            sampler_factory=self.algorithm.make_sampler,
            pruner=self.algorithm.make_pruner(self.max_epochs),
            storage_url=self.request.storage,
        )
        if self.request.storage:
            logger.info("study %s: shared storage %s", self.name, redact_url(self.request.storage))
        recover_interrupted(study, self.registry, self.metric, _read_lines, stale_after=self.stale_after)
        self._last_beat = 0.0
        logger.info(
            "study %s: %s, %s %s, space: %s",
            self.name,
            self.algorithm.name,
            self.direction,
            self.metric,
            "; ".join(p.describe() for p in self.space.params),
        )
        deadline = time.monotonic() + self.request.timeout_s if self.request.timeout_s else math.inf
        try:
            self._loop(study, deadline)
        except BaseException:
            self._stop_running(study, "the study was interrupted")
            write_reports(study, self.dir, self.metric, self.direction)
            raise
        return self._finish(study)

    def _loop(self, study: Any, deadline: float) -> None:
        while True:
            timed_out = time.monotonic() >= deadline
            if timed_out:
                if self.running:
                    logger.warning(
                        "study %s: --timeout reached; stopping %d running trial(s)",
                        self.name,
                        len(self.running),
                    )
                    self._stop_running(study, "stopped at --timeout")
                break
            self._heartbeat(study)
            while self.pool.free_slots and self._budget_used(study) < self.request.max_trials:
                self._launch(study)
            if not self.running and not self._others_running(study):
                break
            changed = self._poll(study)
            if changed:
                self._progress(study)
                self._after_change(study)
            if self.running or self._others_running(study):
                time.sleep(self.poll_s)

    # ------------------------------------------------------------------------- shared study

    def _running_in_storage(self, study: Any) -> list[Any]:
        import optuna

        return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))

    def _budget_used(self, study: Any) -> int:
        """Trials that count against --max-trials: finished ones, and every running one (this
        worker's, and with a shared storage the other workers' too)."""
        if not self.request.storage:
            return len(counted_trials(study)) + len(self.running)
        running = {t.number for t in self._running_in_storage(study)} | set(self.running)
        return len(counted_trials(study)) + len(running)

    def _others_running(self, study: Any) -> bool:
        """A shared study's trials that other workers run: this worker stays to take them over
        if their worker dies, until none is left."""
        if not self.request.storage:
            return False
        return any(t.number not in self.running for t in self._running_in_storage(study))

    def _heartbeat(self, study: Any) -> None:
        if not self.request.storage or time.monotonic() - self._last_beat < self.request.heartbeat_s:
            return
        self._last_beat = time.monotonic()
        beat(study, [run.trial for run in self.running.values()])
        recover_interrupted(
            study, self.registry, self.metric, _read_lines, stale_after=self.stale_after, own=set(self.running)
        )

    # ------------------------------------------------------------------------------- launch

    def _launch(self, study: Any) -> None:
        trial = study.ask()
        values = self.space.sample(trial, self.base)
        trial.set_user_attr("params", values)
        resume_job = trial.user_attrs.get("resume_job_id")
        try:
            prepared = self._prepare(trial, values, resume_job)
        except (SpecError, UsageError, ValueError, LookupError, OSError) as exc:
            # A sampled combination the spec rejects (or a vanished job): a failed trial.
            self._fail(study, trial, _one_line(exc))
            return
        trial.set_user_attr("job_id", prepared.job.id)
        trial.set_user_attr("results_dir", prepared.job.results_dir)
        handle = self.pool.submit(prepared, restart=prepared.resumed)
        self.running[trial.number] = _Running(trial, handle)
        if self.request.storage:
            beat(study, [trial])
        logger.info("trial %d: job %s %s", trial.number, prepared.job.id, _fmt_params(values))

    def _prepare(self, trial: Any, values: dict[str, Any], resume_job: str | None) -> Any:
        if resume_job and self.registry.exists(resume_job):
            job = self.registry.get(resume_job)
            if job.status is not JobStatus.DONE:
                return load_prepared(job.id, self.workspace, restart=True)
        overrides = {**self.base_overrides, **values}
        # The trial folder itself (train.results_dir), not <results_dir>/train under it.
        overrides["train.results_dir"] = str(self.dir / "trials" / f"trial_{trial.number:03d}")
        return prepare_job(
            self.network.name,
            "train",
            spec_file=self.request.spec_file,
            overrides=overrides,
            parent_id=self.request.parent_job_id,
            workspace=self.workspace,
            new=True,
        )

    # --------------------------------------------------------------------------------- poll

    def _poll(self, study: Any) -> bool:
        changed = False
        for number, run in list(self.running.items()):
            job = run.handle.job()
            run.by_epoch = metric_by_epoch(_read_lines(job), self.metric)
            for epoch in sorted(set(run.by_epoch) - run.reported):
                run.trial.report(run.by_epoch[epoch], epoch)
                run.reported.add(epoch)
                changed = True
                # The last epoch is never pruned: its compute is spent and its value is final.
                last = epoch >= int(run.trial.user_attrs["params"].get("train.num_epochs", self.max_epochs))
                prunable = self.algorithm.multi_fidelity and not last and run.handle.poll() is None
                if prunable and run.trial.should_prune():
                    self._prune(study, run, epoch)
                    break
            if number in self.running and run.handle.poll() is not None:
                self._settle(study, run)
                changed = True
        return changed

    def _prune(self, study: Any, run: _Running, epoch: int) -> None:
        import optuna

        logger.info(
            "trial %d pruned at epoch %d (%s=%.4g)", run.trial.number, epoch, self.metric, run.by_epoch[epoch]
        )
        run.trial.set_user_attr("pruned_at_epoch", epoch)
        run.handle.cancel(CANCEL_GRACE_S)
        self.registry.set_message(run.handle.job_id, f"pruned by AutoML study {self.name} at epoch {epoch}")
        self.pool.reap()
        study.tell(run.trial, state=optuna.trial.TrialState.PRUNED)
        del self.running[run.trial.number]

    def _settle(self, study: Any, run: _Running) -> None:
        """Record a trial whose process ended."""
        self.pool.reap()
        del self.running[run.trial.number]
        job = run.handle.job()
        if job.status is JobStatus.DONE:
            try:
                value = final_value(job, run.by_epoch, self.metric)
            except AutoMLError as exc:
                self._fail(study, run.trial, str(exc))
                return
            study.tell(run.trial, value)
            logger.info("trial %d done: %s=%.6g", run.trial.number, self.metric, value)
            return
        reason = job.message or f"job ended {job.status.value} (see {run.handle.log_path})"
        self._fail(study, run.trial, reason)

    def _fail(self, study: Any, trial: Any, error: str) -> None:
        import optuna

        logger.warning("trial %d failed: %s", trial.number, error)
        trial.set_user_attr("error", error)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _stop_running(self, study: Any, why: str) -> None:
        """Cancel running trials; their Optuna trials stay RUNNING, so ``--resume`` restarts them."""
        for run in list(self.running.values()):
            try:
                run.trial.set_user_attr("stopped", why)
                run.handle.cancel(CANCEL_GRACE_S)
            except Exception as exc:  # noqa: BLE001 - stopping the others matters more
                logger.warning("could not stop trial %d: %s", run.trial.number, exc)
        self.running.clear()
        self.pool.running.clear()

    # ------------------------------------------------------------------------------- finish

    def _progress(self, study: Any) -> None:
        if self.request.on_progress is None:
            return
        best = best_trial(study)
        self.request.on_progress(
            {
                "trials_done": len(counted_trials(study)),
                "trials_total": self.request.max_trials,
                "best_value": best.value if best else None,
                "best_trial": best.number if best else None,
                "running": sorted(self.running),
            }
        )

    def _after_change(self, study: Any) -> None:
        best = best_trial(study)
        if best is not None:
            copy_best_checkpoint(self.network, self.registry, best, self.dir)
            if self.request.delete_intermediate_ckpt:
                delete_intermediate_checkpoints(study, best, set(self.running))

    def _finish(self, study: Any) -> StudyResult:
        self._after_change(study)
        counted = counted_trials(study)
        best = best_trial(study)
        failed = [t for t in counted if t.state.name == "FAIL"]
        if counted and len(failed) == len(counted):
            first = min(failed, key=lambda t: t.number)
            write_reports(study, self.dir, self.metric, self.direction)
            raise AutoMLError(
                f"study {self.name}: all {len(failed)} trials failed; first error (trial {first.number}): "
                f"{first.user_attrs.get('error', 'unknown')}"
            )
        artifacts = write_reports(study, self.dir, self.metric, self.direction)
        checkpoint = None
        if best is not None:
            checkpoint = copy_best_checkpoint(self.network, self.registry, best, self.dir)
            if checkpoint is not None:
                artifacts["best_checkpoint"] = str(checkpoint)
        else:
            logger.warning("study %s: no trial completed; nothing to pick as best", self.name)
        rows = artifacts.pop("_rows")
        return StudyResult(
            study_name=self.name,
            study_dir=self.dir,
            metric=self.metric,
            direction=self.direction,
            best_trial=best.number if best else None,
            best_value=best.value if best else None,
            best_params=dict(best.user_attrs.get("params", {})) if best else {},
            best_job_id=best.user_attrs.get("job_id") if best else None,
            best_checkpoint=checkpoint,
            trials=rows,
            artifacts=artifacts,
        )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fmt_params(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def run_study(request: StudyRequest) -> StudyResult:
    """Run or resume a study; see :func:`foveal.tuning.run_study`."""
    result = StudyController(request).run()
    (result.study_dir / "summary.json").write_text(
        json.dumps(result.to_dict(), indent=2, default=str), encoding="utf-8"
    )
    return result


__all__ = ["StudyController", "param_name", "run_study", "trial_state"]
