"""Run one action of one network as a job: spec -> registry row -> results folder -> action.

The in-process run of a job (its *lifecycle*), and the single place where it is written:
``experiment.yaml``, ``status.json`` (STARTED ... SUCCESS|FAILURE), the registry row
(Pending -> Running -> Done|Error|Canceled), the log file, KPIs and artifacts.

Running the same command again after a crash or a SIGKILL picks the interrupted job up again
(same id, same results folder), and the engine resumes from its newest checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foveal import secrets
from foveal.engine.tracking import Tracking
from foveal.errors import EncryptionKeyError, SpecError, SpecIssue, UsageError
from foveal.jobs.handoff import resolve_handoff
from foveal.jobs.model import Job, JobStatus, new_job_id
from foveal.jobs.model import spec_hash as compute_spec_hash
from foveal.jobs.registry import JobRegistry
from foveal.jobs.workspace import Workspace
from foveal.networks.registry import ACTIONS, ActionContext, ActionResult, Network, get_network, list_networks
from foveal.spec import load_spec, parse_overrides, read_yaml, save_spec, to_dict

logger = logging.getLogger(__name__)


def find_network(name: str) -> Network:
    """The network ``name``; a UsageError naming the known ones (nearest first) otherwise."""
    try:
        return get_network(name)
    except KeyError:
        import difflib

        names = [n.name for n in list_networks()]
        near = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {near[0]}?" if near else f"known networks: {', '.join(names)}"
        raise UsageError(f"unknown network {name!r} ({hint})") from None


def check_action(network: Network, action: str) -> None:
    """An action Foveal runs for this network; anything else is one line saying why not."""
    available = ", ".join(a for a in ACTIONS if a in network.actions) or "none"
    if action in network.tao_only:
        raise UsageError(
            f"{network.name} {action}: TAO's {action} action ({network.tao_only[action]}) is not implemented in "
            f"Foveal; available actions: {available}"
        )
    if action not in ACTIONS:
        raise UsageError(f"unknown action {action!r} for {network.name} (actions: {available})")


@dataclass
class PreparedJob:
    """A job whose spec is resolved and whose registry row exists, ready to execute.

    ``encryption_key`` is held in memory only (the spec on disk carries its fingerprint).
    """

    network: Network
    action: str
    config: Any
    job: Job
    resumed: bool
    encryption_key: str | None = field(default=None, repr=False)


def resolve_spec(
    network: Network,
    action: str,
    *,
    spec_file: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    parent: Job | None = None,
    parent_checkpoint: str = "best",
    job_results_dir: Path | None = None,
) -> Any:
    """defaults <- spec file <- handoff from the parent (unset keys only) <- overrides."""
    parsed = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    file_data = read_yaml(spec_file) if spec_file else {}
    explicit = set(parsed) | set(_dotted_keys(file_data))
    explicit_dir = _explicit_results_dir(network, action, file_data, parsed)
    handoff = resolve_handoff(
        network,
        action,
        parent,
        job_results_dir=explicit_dir or job_results_dir or Path("."),
        selection=parent_checkpoint,
        explicit_keys=explicit,
    )
    for key, value in handoff.items():
        # The lifecycle already places the job in its own folder; writing that job-specific path
        # into the spec would also change the spec hash that finds an interrupted run again.
        if key not in explicit and key != "results_dir":
            parsed.setdefault(key, value)
            logger.info("handoff%s: %s=%s", f" from job {parent.id}" if parent else "", key, value)
    return load_network_spec(network, action, spec_file, parsed)


def load_network_spec(
    network: Network, action: str, spec_file: str | Path | None, overrides: Iterable[str] | Mapping[str, Any]
) -> Any:
    """``network``'s validated config for ``action`` (its resolve hook run).

    Raises:
        SpecError: every problem; or one line when the file is evidently another network's spec
            (most of its unknown keys are that network's).
    """
    try:
        return load_spec(
            network.config_cls,
            spec_file,
            overrides,
            action=action,
            resolve=network.resolve,
            sections=network.action_sections.get(action),
        )
    except SpecError as exc:
        raise _other_networks_spec(network, action, exc) or exc from None


def _other_networks_spec(network: Network, action: str, error: SpecError) -> SpecError | None:
    from foveal.spec.loader import leaf_keys

    unknown = [i.key for i in error.issues if i.message.startswith("unknown key")]
    if len(unknown) < 3:
        return None
    for other in list_networks():
        if other.name == network.name or getattr(other, "ported", False):
            continue
        known = set(leaf_keys(other.config_cls))
        theirs = [k for k in unknown if k in known]
        if len(theirs) >= 0.75 * len(unknown):
            shown = ", ".join(theirs[:3])
            return SpecError(
                SpecIssue(
                    "spec",
                    f"this looks like a {other.name} spec, not a {network.name} one: {len(theirs)} of its "
                    f"{len(unknown)} unknown keys ({shown}, ...) are {other.name}'s",
                    f"run foveal {other.name} {action} -e ...",
                ),
                source=error.source,
            )
    return None


def action_results_dir(cfg: Any, action: str) -> Path | None:
    """Where an action writes, TAO's way: ``<action>.results_dir`` when set, else
    ``<results_dir>/<action>``; None when neither is set (the job's folder in the workspace)."""
    return _results_dir_rule(
        action, getattr(getattr(cfg, action, None), "results_dir", None), getattr(cfg, "results_dir", None)
    )


def _results_dir_rule(action: str, own: Any, top: Any) -> Path | None:
    if own:
        return Path(own).expanduser()
    return Path(top).expanduser() / action if top else None


def _explicit_results_dir(
    network: Network, action: str, file_data: Mapping[str, Any], overrides: Mapping[str, Any]
) -> Path | None:
    """:func:`action_results_dir` of a spec not resolved yet (handoff paths go inside it)."""
    from foveal.spec.interpolation import Unresolved
    from foveal.spec.loader import spec_data

    data = spec_data(network.config_cls, file_data, overrides)

    def text(value: Any) -> str | None:
        return str(value) if value not in (None, "") and not isinstance(value, Unresolved) else None

    section = data.get(action)
    own = text(section.get("results_dir")) if isinstance(section, Mapping) else None
    return _results_dir_rule(action, own, text(data.get("results_dir")))


@dataclass
class SpecCheck:
    """The outcome of checking a spec without running it (``foveal spec check``, ``foveal.check``).

    Attributes:
        ok: the spec resolves for the action.
        errors: every problem found (:class:`~foveal.errors.SpecIssue`: key, message, suggestion).
        spec: the resolved spec as plain data (secrets as fingerprints), None when not ok.
    """

    ok: bool
    errors: list[SpecIssue]
    spec: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        errors = [{"key": i.key, "message": i.message, "suggestion": i.suggestion} for i in self.errors]
        return {"ok": self.ok, "errors": errors, "spec": self.spec}


def check_spec(
    network_name: str,
    action: str,
    *,
    spec_file: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> SpecCheck:
    """Validate a spec for ``network action`` as a job would resolve it, without a job, a parent
    or reading any data.

    Raises:
        UsageError: an unknown network or action (the question itself is wrong).
    """
    network = find_network(network_name)
    check_action(network, action)
    try:
        cfg = load_network_spec(network, action, spec_file, overrides)
    except SpecError as exc:
        return SpecCheck(False, list(exc.issues), None)
    return SpecCheck(True, [], to_dict(cfg))


def _dotted_keys(data: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _dotted_keys(value, dotted + ".")
        else:
            yield dotted


def _refuse_finished_results(results_dir: Path, action: str, registry: JobRegistry) -> None:
    """Never overwrite a finished job's results silently (DESIGN.md, results dir contract); the
    refusal names the run it protects."""
    status_file = results_dir / "status.json"
    if not status_file.is_file():
        return
    from foveal.engine.status import read_status

    lines = read_status(status_file)
    if not lines or lines[-1].get("status") != "SUCCESS":
        return
    finished = next(
        (j for j in registry.list() if Path(j.results_dir).expanduser().resolve() == results_dir.resolve()), None
    )
    if finished is not None:
        what = f"job {finished.id} ({finished.network} {finished.action})"
    else:  # a run of another workspace: its first status line says what it was
        started = str(next((ln.get("message") for ln in lines if ln.get("status") == "STARTED"), "") or "")
        what = f"run ({re.sub(r' (started|resumed) on .*$', '', started) or 'unknown'})"
    when = f"{lines[-1].get('date', '')} {lines[-1].get('time', '')}".strip()
    raise UsageError(
        f"{results_dir} already holds the finished {what}, done {when}; set {action}.results_dir or "
        f"results_dir to a new folder (or remove that one) to run this {action}"
    )


def prepare_job(
    network_name: str,
    action: str,
    *,
    spec_file: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    parent_id: str | None = None,
    parent_checkpoint: str = "best",
    workspace: Workspace | None = None,
    new: bool = False,
) -> PreparedJob:
    """Resolve the spec, then create (or pick up an interrupted) job record and results folder."""
    network = find_network(network_name)
    check_action(network, action)
    workspace = workspace or Workspace.resolve()
    workspace.ensure()
    registry = JobRegistry(workspace.db_path)
    registry.reap_dead()
    parent = registry.get(parent_id) if parent_id else None
    # Handoff rules such as output_dir need the job's folder before the job exists: reserve an id.
    job_id = new_job_id()
    cfg = resolve_spec(
        network,
        action,
        spec_file=spec_file,
        overrides=overrides,
        parent=parent,
        parent_checkpoint=parent_checkpoint,
        job_results_dir=workspace.results_dir(job_id),
    )
    if action not in network.actions:
        available = ", ".join(network.actions) or "none yet"
        raise UsageError(f"{network.name} {action} is not available in this version (available: {available})")
    key = job_encryption_key(cfg, parent)
    if key is not None and hasattr(cfg, "encryption_key"):
        cfg.encryption_key = key  # a key from the environment is recorded too (as its fingerprint)
    spec = to_dict(cfg)
    spec_hash = compute_spec_hash(spec)
    interrupted = (
        None if new or action != "train" else registry.find_interrupted(network.name, action, spec_hash)
    )
    if interrupted is not None:
        logger.info("resuming interrupted job %s (%s)", interrupted.id, interrupted.results_dir)
        return PreparedJob(network, action, cfg, interrupted, resumed=True, encryption_key=key)
    results_dir = action_results_dir(cfg, action)
    if results_dir is not None:
        _refuse_finished_results(results_dir, action, registry)
    job = registry.create(
        network.name,
        action,
        spec,
        parent_id=parent.id if parent else None,
        results_dir=str(results_dir or workspace.results_dir(job_id)),
        job_id=job_id,
    )
    return PreparedJob(network, action, cfg, job, resumed=False, encryption_key=key)


def job_encryption_key(cfg: Any, parent: Job | None) -> str | None:
    """The key a job runs with (its spec's ``encryption_key``, else ``$FOVEAL_ENCRYPTION_KEY``),
    checked against the fingerprint its parent was run with: a child reads the parent's
    encrypted model files, so it needs that very key.

    Raises:
        EncryptionKeyError: no key for an encrypted parent, or another key.
    """
    key = secrets.key_from(getattr(cfg, "encryption_key", None))
    if parent is None:
        return key
    stored = parent.spec.get("encryption_key")
    if stored and secrets.is_fingerprint(stored):
        if key is None:
            raise EncryptionKeyError(
                f"job {parent.id} wrote its model files encrypted; set encryption_key (or "
                f"{secrets.ENV_KEY}) to its key"
            )
        if not secrets.matches(key, stored):
            raise EncryptionKeyError(
                f"encryption_key is not the key job {parent.id} was run with; its model files will not open"
            )
    return key


@contextlib.contextmanager
def _job_log_file(results_dir: Path, action: str) -> Iterator[None]:
    """Copy every INFO+ record to ``logs/<action>.log`` while the job runs, then put logging back."""
    logs = results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / f"{action}.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def execute_job(
    prepared: PreparedJob, *, workspace: Workspace | None = None, debug: bool = False, progress: str = "auto"
) -> Job:
    """Run a prepared job to its end and record the outcome; exceptions propagate after recording.

    Args:
        progress: how training shows progress (see :class:`~foveal.networks.registry.ActionContext`).
    """
    from foveal.engine.status import StatusWriter

    workspace = workspace or Workspace.resolve()
    registry = JobRegistry(workspace.db_path)
    job = prepared.job
    results_dir = Path(job.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    save_spec(prepared.config, results_dir / "experiment.yaml")
    writer = StatusWriter(results_dir / "status.json")
    tracking = Tracking.for_config(
        prepared.config,
        to_dict(prepared.config),
        results_dir=results_dir,
        network=prepared.network.name,
        action=prepared.action,
        job_id=job.id,
        workspace=workspace.root,
    )
    ctx = ActionContext(
        job_id=job.id,
        network=prepared.network.name,
        action=prepared.action,
        results_dir=results_dir,
        workspace=workspace.root,
        cache_dir=workspace.cache_dir,
        debug=debug,
        resumed=prepared.resumed,
        status_writer=writer,
        progress=progress,
        tracking=tracking,
    )
    registry.mark_running(job.id, os.getpid(), allow_restart=prepared.resumed)
    verb = "resumed" if prepared.resumed else "started"
    writer.write("STARTED", f"{prepared.network.name} {prepared.action} {verb} on {socket.gethostname()}")
    try:
        with _job_log_file(results_dir, prepared.action), secrets.key_scope(prepared.encryption_key):
            result = prepared.network.get_action(prepared.action)(prepared.config, ctx)
        if not isinstance(result, ActionResult):
            result = ActionResult()
    except KeyboardInterrupt:
        writer.write("FAILURE", "canceled by the user", verbosity="WARNING")
        registry.finish(job.id, JobStatus.CANCELED, message="canceled by the user")
        _finish_tracking(tracking, None, succeeded=False, message="canceled by the user")
        raise
    except BaseException as exc:
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        writer.write("FAILURE", line, verbosity="ERROR")
        registry.finish(job.id, JobStatus.ERROR, message=line)
        _finish_tracking(tracking, None, succeeded=False, message=line)
        if prepared.action in REPORTED_ACTIONS:
            _write_report(registry, job.id)  # the curves up to the failure
        raise
    _finish_tracking(tracking, result.kpis, succeeded=True, message=result.message)
    writer.write("SUCCESS", result.message or f"{prepared.action} finished", kpi=result.kpis or None)
    registry.finish(
        job.id, JobStatus.DONE, kpis=result.kpis, artifacts=result.artifacts, message=result.message
    )
    if prepared.action in REPORTED_ACTIONS:
        _write_report(registry, job.id)
    return registry.get(job.id)


REPORTED_ACTIONS = ("train",)  # jobs that write report.html when they end (any job: `foveal report`)


def _write_report(registry: JobRegistry, job_id: str) -> None:
    """report.html of a finished job; a failure to draw it never changes the job's outcome."""
    from foveal.jobs.report import write_job_report

    try:
        path = write_job_report(registry.get(job_id), registry)
        logger.info("report: %s", path)
    except Exception as exc:  # noqa: BLE001 - the job's result stands without its page
        logger.warning("could not write the job's report.html: %s", str(exc).splitlines()[0] if str(exc) else exc)


def _finish_tracking(tracking: Tracking, kpis: Any, *, succeeded: bool, message: str = "") -> None:
    """Close the job's tracker runs; a tracker failing then never changes the job's outcome."""
    try:
        tracking.finish(kpis, succeeded=succeeded, message=message or "")
    except Exception as exc:  # noqa: BLE001 - W&B / MLflow errors are theirs, the job's result stands
        logger.warning("could not close the experiment tracker runs: %s", str(exc).splitlines()[0] if str(exc) else exc)


def run_job(
    network_name: str,
    action: str,
    *,
    spec_file: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    parent_id: str | None = None,
    parent_checkpoint: str = "best",
    workspace: Workspace | str | Path | None = None,
    new: bool = False,
    debug: bool = False,
) -> Job:
    """Library entry point: run ``network action`` locally as a job and return its record.

    Raises:
        SpecError, UsageError, DatasetError, ...: one-line user errors (the CLI exits 2).
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    prepared = prepare_job(
        network_name,
        action,
        spec_file=spec_file,
        overrides=overrides,
        parent_id=parent_id,
        parent_checkpoint=parent_checkpoint,
        workspace=ws,
        new=new,
    )
    return execute_job(prepared, workspace=ws, debug=debug)


__all__ = [
    "PreparedJob",
    "SpecCheck",
    "SpecError",
    "SpecIssue",
    "UsageError",
    "check_spec",
    "execute_job",
    "find_network",
    "prepare_job",
    "resolve_spec",
    "run_job",
]
