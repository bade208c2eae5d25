"""AutoML: hyperparameter search over a network's train spec, on Optuna.

The search space comes from the train schema's metadata (``automl_default_parameters``,
``valid_min``/``valid_max``/``valid_options``/``option_weights``, ``depends_on``,
``math_cond``); every trial is a child train job launched on the local platform; the study
lives in SQLite inside the workspace (``automl/<study>/study.db``) so that it resumes after a
crash without redoing finished trials.

Algorithms: Bayesian optimisation (Gaussian process, Snoek et al., 2012, or TPE, Bergstra et
al., 2011), Hyperband (Li et al., 2018), ASHA (Li et al., 2020), BOHB (Falkner et al., 2018)
and random search (Bergstra & Bengio, 2012).

This module is the contract other layers (the normal-train workflow, the CLI) call::

    result = run_study(StudyRequest(network="mae", workspace=ws_root, max_trials=4))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StudyRequest:
    """What to search and how.

    Attributes:
        network: a registered network with ``automl_enabled`` metadata.
        workspace: the workspace root; the study goes to ``<workspace>/automl/<study_name>/``.
        spec_file / overrides: the base train spec, applied to every trial (``key=value``).
        algorithm: a name from :func:`foveal.tuning.algorithms.list_algorithms`.
        max_trials: trial budget; failed and pruned trials count against it.
        max_concurrent: trials running at once (each in its own subprocess, on its own
            ``train.num_gpus`` GPUs or its share of the CPU cores); None: as many as the visible
            GPUs allow (1 on a CPU-only machine).
        timeout_s: wall-clock budget of this run of the study (None: no limit).
        metric / direction: what to optimise; defaults from the network's monitoring metadata.
        params: dotted keys to search (default: the schema's ``automl_default_parameters``).
        ranges: dotted key -> ``"lo:hi[:log]"`` or ``"a,b,c"`` overriding the schema's range.
        study_name: folder and Optuna study name (default: ``<network>-<algorithm>``).
        resume: continue an existing study; without it an existing study is an error.
        delete_intermediate_ckpt: remove the checkpoints of every trial but the best.
        parent_job_id: the job every trial is a child of (e.g. the workflow's stage job).
        storage: a shared Optuna storage for several workers (an RDB URL or
            ``journal:///path``; see :mod:`foveal.tuning.study`); None: the workspace's SQLite.
        heartbeat_s: how often a worker records that its trials are alive; a running trial
            not seen for 3 heartbeats is taken as interrupted and run again.
        platform: where the trials run: ``local`` (subprocesses sharing this machine) or a
            scheduler whose client is installed here (``slurm``: each trial an sbatch job).
        on_progress: called after every change with ``{"trials_done", "trials_total",
            "best_value", "best_trial", "running"}``.
    """

    network: str
    workspace: Path
    spec_file: Path | None = None
    overrides: list[str] = field(default_factory=list)
    algorithm: str = "bayesian"
    max_trials: int = 8
    max_concurrent: int | None = None
    timeout_s: float | None = None
    metric: str | None = None
    direction: str | None = None
    params: list[str] | None = None
    ranges: dict[str, str] = field(default_factory=dict)
    study_name: str | None = None
    resume: bool = False
    delete_intermediate_ckpt: bool = False
    parent_job_id: str | None = None
    storage: str | None = None
    heartbeat_s: float = 30.0
    platform: str = "local"
    on_progress: Callable[[dict], None] | None = None


@dataclass
class StudyResult:
    """The outcome of a study (also written to ``<study_dir>/summary.json``)."""

    study_name: str
    study_dir: Path
    metric: str
    direction: str
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_job_id: str | None
    best_checkpoint: Path | None
    trials: list[dict[str, Any]]
    artifacts: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_name": self.study_name,
            "study_dir": str(self.study_dir),
            "metric": self.metric,
            "direction": self.direction,
            "best_trial": self.best_trial,
            "best_value": self.best_value,
            "best_params": dict(self.best_params),
            "best_job_id": self.best_job_id,
            "best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
            "trials": list(self.trials),
            "artifacts": dict(self.artifacts),
        }


def run_study(request: StudyRequest) -> StudyResult:
    """Run (or resume) a study to its budget and return the best trial.

    Raises:
        UsageError / SpecError: bad request (unknown network, AutoML disabled, bad range...).
        AutoMLError: every trial failed (the message carries the first trial's error).
    """
    from foveal.tuning.controller import run_study as _run

    return _run(request)


__all__ = ["StudyRequest", "StudyResult", "run_study"]
