"""The Python API: what the ``foveal`` command does, from a notebook, a script or an agent.

Stable: these names and their arguments change only with a deprecation. Every function calls
the same library code as the CLI (no second path), returns data (a :class:`~foveal.jobs.Job`,
a dict, a result object), prints nothing unless ``progress=True``, and raises the classes of
:mod:`foveal.errors` (never ``SystemExit``)::

    import foveal

    pre = foveal.run("mae", "train", overrides={"dataset.train_data_sources": "data/images_train"})
    fin = foveal.run("mae", "train", parent=pre, overrides={"train.stage": "finetune", ...})
    print(foveal.run("mae", "evaluate", parent=fin, overrides={...}).kpis)

Also here: :func:`start` (non-blocking, returns a :class:`JobHandle`), :func:`check`,
:func:`models`, :func:`schema`, :func:`template`, :func:`automl`, :func:`port_hf` and :func:`report`;
``foveal.jobs`` (``list``, ``get``, ``logs``, ``cancel``) and ``foveal.workflows.normal_train``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foveal.errors import UsageError
from foveal.jobs import api as jobs_api
from foveal.jobs.lifecycle import SpecCheck, check_spec, execute_job, prepare_job
from foveal.jobs.model import Job
from foveal.jobs.workspace import Workspace

if TYPE_CHECKING:
    from foveal.platforms.local import LocalJobHandle
    from foveal.port import PortReport
    from foveal.tuning import StudyResult

Overrides = Mapping[str, Any] | Iterable[str] | None
WorkspaceLike = Workspace | str | Path | None
SpecFile = str | Path | None

__all__ = [
    "JobHandle",
    "Overrides",
    "SpecCheck",
    "automl",
    "check",
    "models",
    "port_hf",
    "report",
    "run",
    "schema",
    "start",
    "template",
]


# ----------------------------------------------------------------------------------- helpers


def _workspace(workspace: WorkspaceLike) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)


def _overrides(overrides: Overrides) -> Mapping[str, Any] | list[str]:
    """A ``{dotted key: value}`` mapping or ``"key=value"`` strings, as the CLI takes them."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return dict(overrides)
    if isinstance(overrides, str):
        raise UsageError(f"overrides: expected a mapping or a list of 'key=value' strings, got the string {overrides!r}")
    return list(overrides)


def _override_strings(overrides: Overrides) -> list[str]:
    """Overrides as ``key=value`` strings (values as YAML, which the spec loader parses back)."""
    import yaml

    given = _overrides(overrides)
    if isinstance(given, list):
        return given
    def text(value: Any) -> str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        return str(yaml.safe_dump(value, default_flow_style=True)).strip().removesuffix("...").strip()

    return [f"{k}={text(v)}" for k, v in given.items()]


def _parent_id(parent: Job | str | None) -> str | None:
    return parent.id if isinstance(parent, Job) else parent


@contextlib.contextmanager
def _output(progress: bool) -> Iterator[str]:
    """Quiet by default: no log lines and no third-party warnings reach the console unless
    ``progress`` (then Foveal's progress lines go to stderr, as the CLI prints them). A logging
    set-up of the caller's own is left alone. Yields the progress mode for the Trainer."""
    foveal_logger = logging.getLogger("foveal")
    handler: logging.Handler
    if progress:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.setLevel(logging.INFO)
    else:
        handler = logging.NullHandler()  # keeps logging's last-resort printer away
    previous = foveal_logger.level
    foveal_logger.addHandler(handler)
    if progress and (foveal_logger.level > logging.INFO or foveal_logger.level == logging.NOTSET):
        foveal_logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            if not progress:
                warnings.simplefilter("ignore")
            yield "plain" if progress else "off"
    finally:
        foveal_logger.removeHandler(handler)
        foveal_logger.setLevel(previous)


# --------------------------------------------------------------------------------- jobs


def run(
    network: str,
    action: str,
    spec: SpecFile = None,
    overrides: Overrides = None,
    parent: Job | str | None = None,
    parent_checkpoint: str | int = "best",
    workspace: WorkspaceLike = None,
    *,
    new: bool = False,
    progress: bool = False,
) -> Job:
    """Run ``network action`` as a job in this process and return its finished record.

    Args:
        network: ``mae``, ``nvdinov2``, ``classification`` or a ported network's name.
        action: ``train``, ``evaluate``, ``inference``, ``export`` or ``gen_trt_engine``.
        spec: a spec YAML file (only the keys that differ from the defaults).
        overrides: ``{"train.num_epochs": 3}`` or ``["train.num_epochs=3"]``, applied last.
        parent: the parent job (or its id): fills checkpoints and paths from it.
        parent_checkpoint: which parent checkpoint: ``best``, ``latest``, ``epoch:N`` or ``N``.
        workspace: the workspace folder (default ``$FOVEAL_WORKSPACE`` or ``./foveal-workspace``).
        new: start a new job even if an identical train job was interrupted (else it resumes).
        progress: print the progress lines the CLI prints (to stderr); quiet otherwise.

    Returns:
        The job (``status``, ``kpis``, ``artifacts``, ``results_dir``...).

    Raises:
        foveal.errors.UsageError and its subclasses (spec, dataset, checkpoint, key, handoff):
            bad input, before the job exists where it can be told then.
        foveal.errors.RunError: the run failed (e.g. a NaN loss); the job is recorded as Error.
    """
    ws = _workspace(workspace)
    prepared = prepare_job(
        network,
        action,
        spec_file=spec,
        overrides=_overrides(overrides),
        parent_id=_parent_id(parent),
        parent_checkpoint=str(parent_checkpoint),
        workspace=ws,
        new=new,
    )
    with _output(progress) as mode:
        return execute_job(prepared, workspace=ws, progress=mode)


class JobHandle:
    """A job started with :func:`start`, running in a subprocess of its own."""

    def __init__(self, handle: LocalJobHandle, workspace: Workspace) -> None:
        self._handle = handle
        self._workspace = workspace
        self.job_id = handle.job_id

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r}, {self.status})"

    @property
    def job(self) -> Job:
        """The job's registry record now."""
        return jobs_api.get(self.job_id, self._workspace)

    @property
    def status(self) -> str:
        return self.job.status.value

    @property
    def done(self) -> bool:
        return self.job.status.is_terminal

    def wait(self, timeout: float | None = None) -> Job:
        """Block until the job ends (or ``timeout`` seconds pass) and return its record.

        Raises:
            TimeoutError: the job still runs after ``timeout`` seconds.
        """
        try:
            self._handle.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"job {self.job_id} still runs after {timeout} s") from None
        return self.job

    def watch(
        self, every: float = 30.0, emit: Callable[[str], None] = print, timeout: float | None = None
    ) -> Job:
        """Call ``emit`` with a status line (epoch, latest KPI, ETA) every ``every`` seconds until
        the job ends, as ``foveal jobs watch`` prints it; returns the final record."""
        from foveal.jobs.monitor import job_line, read_progress

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job
            emit(job_line(job.action, job, read_progress(job.results_dir)))
            if job.status.is_terminal:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.job_id} still runs after {timeout} s")
            with contextlib.suppress(subprocess.TimeoutExpired):  # an early end wakes it up
                self._handle.process.wait(timeout=every)

    def logs(self) -> str:
        """The job's subprocess output so far (stdout and stderr)."""
        path = self._handle.log_path
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""

    def cancel(self) -> Job:
        """Cancel the job (its process and workers are stopped); returns its record."""
        return self._handle.cancel()


def start(
    network: str,
    action: str,
    spec: SpecFile = None,
    overrides: Overrides = None,
    parent: Job | str | None = None,
    parent_checkpoint: str | int = "best",
    workspace: WorkspaceLike = None,
    *,
    new: bool = False,
) -> JobHandle:
    """Start ``network action`` as a job in a subprocess and return at once (see :func:`run`).

    The spec is checked and the job recorded before this returns, so bad input raises here; the
    returned :class:`JobHandle` watches, waits for and cancels the running job.
    """
    from foveal.platforms.local import launch_job

    ws = _workspace(workspace)
    prepared = prepare_job(
        network,
        action,
        spec_file=spec,
        overrides=_overrides(overrides),
        parent_id=_parent_id(parent),
        parent_checkpoint=str(parent_checkpoint),
        workspace=ws,
        new=new,
    )
    return JobHandle(launch_job(prepared, ws), ws)


def check(network: str, action: str, spec: SpecFile = None, overrides: Overrides = None) -> SpecCheck:
    """Check a spec for ``network action`` without running anything (``foveal spec check``).

    Returns:
        ``SpecCheck(ok, errors, spec)``: the resolved spec as plain data when ``ok``, else every
        problem found (:class:`~foveal.errors.SpecIssue`: key, message, suggestion).

    Raises:
        foveal.errors.UsageError: the network or action does not exist.
    """
    return check_spec(network, action, spec_file=spec, overrides=_overrides(overrides))


# ------------------------------------------------------------------------------ listings


def models(scope: str | None = None, workspace: WorkspaceLike = None) -> list[dict[str, Any]]:
    """The registered networks (``foveal models --format json``): actions, task, AutoML, monitoring
    metric, dataset needs, starting checkpoints. ``scope="automl"``: only the tunable ones."""
    from foveal.networks.registry import list_networks
    from foveal.workflows.catalog import describe_network

    if scope not in (None, "all", "automl"):
        raise UsageError(f"scope {scope!r}: expected automl or all")
    rows = [describe_network(n, _workspace(workspace).root) for n in list_networks()]
    return [r for r in rows if r["automl_enabled"]] if scope == "automl" else rows


def schema(network: str, action: str) -> dict[str, Any]:
    """The JSON schema of ``network action`` with TAO's field metadata (``foveal schema``)."""
    from foveal.jobs.lifecycle import check_action, find_network
    from foveal.spec import action_schema

    net = find_network(network)
    check_action(net, action)
    return action_schema(net.config_cls, action, net.action_sections.get(action))


def template(network: str, action: str) -> str:
    """A YAML spec template with every default of ``network action`` (``foveal spec``)."""
    from foveal.jobs.lifecycle import check_action, find_network
    from foveal.spec import spec_template

    net = find_network(network)
    check_action(net, action)
    return spec_template(net.config_cls, action, net.action_sections.get(action))


# ----------------------------------------------------------------------- AutoML, ports


def automl(
    network: str,
    spec: SpecFile = None,
    overrides: Overrides = None,
    *,
    algorithm: str = "bayesian",
    max_trials: int = 8,
    max_concurrent: int | None = None,
    timeout_s: float | None = None,
    metric: str | None = None,
    direction: str | None = None,
    params: list[str] | None = None,
    ranges: Mapping[str, str] | None = None,
    study: str | None = None,
    resume: bool = False,
    delete_intermediate_ckpt: bool = False,
    parent: Job | str | None = None,
    workspace: WorkspaceLike = None,
    progress: bool = False,
) -> StudyResult:
    """Search ``network``'s train hyperparameters with Optuna (``foveal automl``), each trial a
    child train job; returns the study result (best trial, value, parameters, checkpoint).

    Args:
        spec: the base train spec file of every trial.
        overrides: overrides of that base spec (as for :func:`run`).
        algorithm: ``bayesian``, ``hyperband``, ``asha``, ``bohb`` or ``random``.
        params: dotted keys to search (default: the schema's AutoML parameters).
        ranges: ``{key: "lo:hi[:log]" or "a,b,c"}`` replacing the schema's ranges.
        study: the study's name (default ``<network>-<algorithm>``); ``resume`` continues it.
        progress: print a line after every trial (to stderr).
    """
    from foveal.tuning import StudyRequest, run_study

    def report(state: dict[str, Any]) -> None:
        best = "" if state["best_value"] is None else f", best {state['best_value']:.6g} (trial {state['best_trial']})"
        print(f"automl: {state['trials_done']}/{state['trials_total']} trials done{best}", file=sys.stderr)

    request = StudyRequest(
        network=network,
        workspace=_workspace(workspace).root,
        spec_file=Path(spec) if spec else None,
        overrides=_override_strings(overrides),
        algorithm=algorithm,
        max_trials=max_trials,
        max_concurrent=max_concurrent,
        timeout_s=timeout_s,
        metric=metric,
        direction=direction,
        params=params,
        ranges=dict(ranges or {}),
        study_name=study,
        resume=resume,
        delete_intermediate_ckpt=delete_intermediate_ckpt,
        parent_job_id=_parent_id(parent),
        on_progress=report if progress else None,
    )
    with _output(progress):
        return run_study(request)


def port_hf(
    source: str | Path,
    name: str,
    *,
    workspace: WorkspaceLike = None,
    data: str | Path | None = None,
    force: bool = False,
    epochs: int = 1,
    image_size: int | None = None,
    progress: bool = False,
) -> PortReport:
    """Port a Hugging Face vision model (a local folder) as network ``name`` (``foveal port hf``):
    inspect, ONNX sanity check, map, generate, verify; then ``run(name, ...)`` uses it.

    Raises:
        foveal.errors.PortSourceError: the source cannot be ported (nothing is written).
        foveal.errors.PortFailedError: a phase failed; ``port_report.json`` says which.
    """
    from foveal.port import port_hf as _port

    with _output(progress):
        return _port(str(source), name, workspace=_workspace(workspace), data=data, force=force,
                     epochs=epochs, image_size=image_size)



def report(target: str | Job, workspace: WorkspaceLike = None) -> Path:
    """Write the self-contained ``report.html`` of a job or an AutoML study (``foveal report``)
    and return its path.

    Args:
        target: a job (id or unique prefix), an AutoML study's name (``<workspace>/automl/<name>``)
            or its folder.

    Raises:
        JobError: no job, study or folder of that name.
    """
    import json

    from foveal.errors import JobError, JobNotFoundError
    from foveal.jobs.registry import JobRegistry
    from foveal.jobs.report import write_job_report
    from foveal.tuning.report import write_study_page

    ws = _workspace(workspace)
    name = target.id if isinstance(target, Job) else str(target)
    for folder in (Path(name).expanduser(), ws.root / "automl" / name):
        trials = folder / "trials.json"
        if trials.is_file():
            data = json.loads(trials.read_text(encoding="utf-8"))
            return write_study_page(folder, folder.name, data["metric"], data["direction"], data["trials"])
    registry = JobRegistry(ws.db_path)
    try:
        job = registry.get(name)
    except JobNotFoundError as exc:
        raise JobError(
            f"{name}: not a job of {ws.root}, nor an AutoML study (no {name}/trials.json or "
            f"{ws.root / 'automl' / name}/trials.json); see `foveal jobs list`"
        ) from exc
    return write_job_report(job, registry)
