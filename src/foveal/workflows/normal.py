"""``foveal workflow normal-train``: adapt a model to a new dataset with one command.

Stages, each an ordinary job (so ``foveal jobs list`` shows them):

1. **train** through AutoML when the network's metadata says ``automl_enabled``, its train
   schema/template are generated and parse, the platform is local and ``--automl-policy`` is
   auto/on; a single plain train when the policy is off (or AutoML is not runnable: said so).
   After AutoML the best trial's job *is* the train stage.
2. **evaluate** when an eval dataset is given (networks with ``eval_dataset: required`` refuse
   to start without one; ``none`` refuses one).
3. **export** when ``--export`` is given, or confirmed at the terminal after training.

Evaluate and export are children of the train job: their checkpoint comes from it through the
network's handoff rules (mae: the selected epoch checkpoint; nvdinov2: the student backbone),
which need a train job as parent.

What mae trains: ``train.stage`` stays at the spec default, ``pretrain`` (self-supervised
masked reconstruction, ranked by ``val_loss``, or ``train_loss`` without an eval dataset);
pass ``train.stage=finetune`` (class-folder datasets) to fine-tune a classifier instead
(ranked by ``val_top1``). Evaluating a pretrain checkpoint reports the reconstruction loss on
the eval images, plus kNN top-1 when the train and eval images are in class folders.

Everything that can be wrong with the request is checked by :func:`plan_normal_train` before
any job exists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from foveal.errors import UsageError
from foveal.jobs.lifecycle import find_network
from foveal.jobs.registry import JobRegistry
from foveal.jobs.workspace import Workspace
from foveal.networks.registry import Network
from foveal.platforms import Platform, ResolvedSettings, find_platform, needs_s3, resolve_settings
from foveal.spec import parse_overrides
from foveal.workflows import catalog

logger = logging.getLogger(__name__)

POLICIES = ("auto", "on", "off")
EVAL_SOURCES = ("eval", "val")  # metadata "source" values fed by --eval-dataset-uri


@dataclass
class NormalTrainRequest:
    """A normal-train run, as the CLI (or an agent through the library) asks for it.

    ``confirm`` is the terminal's yes/no question; None means non-interactive: nothing is
    asked, and an answer that is needed but missing is an error naming the flag to pass.
    """

    model: str
    train_dataset_uri: str
    eval_dataset_uri: str | None = None
    platform: str = "local"
    image: str | None = None
    yes: bool = False
    automl_policy: str = "auto"
    algorithm: str = "bayesian"
    max_trials: int = 4
    max_concurrent: int | None = None  # None: the local platform setting max_concurrent
    base_checkpoint: str | None = None
    export: bool = False
    monitor: bool = True
    monitor_interval_s: float = 300.0
    overrides: list[str] = field(default_factory=list)
    confirm: Callable[[str], bool] | None = None
    emit: Callable[[str], None] = logger.info
    debug: bool = False
    remote_poll_s: float = 15.0
    submit: bool = True  # remote platforms: False writes the runner files only


@dataclass
class Plan:
    """Everything decided before the first job: stages, datasets, AutoML, checkpoint, image."""

    network: Network
    platform: Platform
    settings: ResolvedSettings
    use_automl: bool
    automl_note: str
    metric: dict[str, Any]
    stage_overrides: dict[str, list[str]]
    base_checkpoint: dict[str, Any]
    environment: dict[str, Any]
    evaluate: bool
    export: bool | None  # None: ask at the terminal after training
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ planning


def _check_uri(flag: str, uri: str | None) -> None:
    """A local dataset path must exist now, not fail minutes later inside a job."""
    if not uri:
        return
    text = str(uri)
    if "://" in text and not text.startswith("file://"):
        return  # s3://, http(s)://: checked when the job reads it
    path = Path(text.removeprefix("file://")).expanduser()
    if not path.exists():
        raise UsageError(f"{flag} {uri}: no such file or folder; pass an existing dataset folder or archive")


def _layout_value(uri: str, layout: str) -> str:
    """The override value of a dataset URI for a key of ``layout`` (see DatasetNeed.layout)."""
    if layout not in ("coco", "coco_list"):
        return uri
    root = uri.rstrip("/")
    source = f'{{image_dir: "{root}/images", json_file: "{root}/annotations.json"}}'
    return f"[{source}]" if layout == "coco_list" else source


def dataset_overrides(
    network: Network, action: str, train_uri: str | None, eval_uri: str | None, explicit: set[str]
) -> list[str]:
    """``key=uri`` for the dataset keys of ``action``, from the metadata's ``source`` of each key.

    Keys the user set explicitly are left alone; a required key with no URI is an error.
    """
    uris = {"train": train_uri, **dict.fromkeys(EVAL_SOURCES, eval_uri)}
    out = []
    for need in catalog.dataset_requirements(network).get(action, []):
        key, source = need["spec_key"], need["source"]
        if key in explicit:
            continue
        uri = uris.get(source or "")
        if uri:
            out.append(f"{key}={_layout_value(uri, need.get('layout', 'folder'))}")
        elif need["required"]:
            flag = "--eval-dataset-uri" if source in EVAL_SOURCES else "--train-dataset-uri"
            raise UsageError(f"{network.name} {action} needs {key} ({need['expected_files']}); pass {flag}")
    return out


def _decide_automl(request: NormalTrainRequest, network: Network, platform: Platform) -> tuple[bool, str]:
    policy = request.automl_policy
    ready = catalog.automl_readiness(network)
    if policy == "off":
        return False, "plain train (--automl-policy off)"
    if not ready["enabled"]:
        if policy == "on":
            raise UsageError(
                f"--automl-policy on: {ready['reason']}; use --automl-policy auto or off for a plain train"
            )
        return False, f"plain train ({ready['reason']})"
    if platform.remote:
        if policy == "on":
            raise UsageError(
                f"--automl-policy on: AutoML trials run on the local platform only, not {platform.name}; "
                "use --platform local or --automl-policy off"
            )
        return False, f"plain train (AutoML trials run on the local platform only, not {platform.name})"
    if not ready["runnable"]:
        return False, f"plain train: AutoML is enabled but not runnable ({ready['reason']})"
    try:
        import foveal.tuning  # noqa: F401 - present in every install; checked so the note can say why
    except ImportError as exc:
        return False, f"plain train: AutoML is not installed ({exc})"
    return True, f"AutoML ({request.algorithm}, {request.max_trials} trials)"


def _decide_base(request: NormalTrainRequest, network: Network, explicit: set[str], ws: Workspace) -> dict:
    key = network.start_key
    if request.base_checkpoint:
        path = Path(request.base_checkpoint).expanduser()
        if not path.is_file():
            raise UsageError(f"--base-checkpoint {request.base_checkpoint}: no such file")
        if key is None:
            raise UsageError(f"{network.name} train takes no starting checkpoint; drop --base-checkpoint")
        return {"source": "--base-checkpoint", "path": str(path.absolute()), "key": key}
    if key is not None and key in explicit:
        return {"source": f"override {key}", "path": None, "key": key}
    default = catalog.default_pretrained(network, ws.root)
    if default["available"] and key is not None:
        return {"source": "model default", "path": default["path"], "key": key}
    ported = network.metadata.ported
    if ported is not None:  # the backbone's own weights load whenever the model is built
        source = ported.source or ported.entry_dir
        return {"source": f"ported weights ({source})", "path": None, "key": key}
    why = "no default declared" if not default["declared"] else f"{default['declared']} not found locally"
    return {"source": f"from scratch ({why})", "path": None, "key": key}


def _decide_environment(request: NormalTrainRequest, network: Network, platform: Platform) -> dict:
    """Local: this Python. Remote: the image, which must be confirmed before any runner file."""
    if not platform.remote:
        from foveal.platforms.images import local_environment

        env = local_environment()
        return {"platform": platform.name, **{k: env.get(k) for k in ("python", "torch", "cuda")}}
    from foveal.platforms.images import resolve_image

    if request.image:
        return {
            "platform": platform.name,
            "image": request.image,
            "source": "--image",
            "confirmed": "--image",
        }
    resolved = resolve_image(network, "train")
    image = resolved["image"]
    if request.yes:
        return {"platform": platform.name, "image": image, "source": resolved["source"], "confirmed": "--yes"}
    if request.confirm is None:
        raise UsageError(
            f"{platform.name}: not writing runner files: the container image {image} is not confirmed "
            "and there is no terminal to ask; pass --yes to use it or --image IMAGE to choose another"
        )
    if not request.confirm(f"Run on {platform.name} in image {image}?"):
        raise UsageError(
            f"{platform.name}: image {image} not confirmed; pass --image IMAGE to choose another"
        )
    return {"platform": platform.name, "image": image, "source": resolved["source"], "confirmed": "terminal"}


def _check_request(request: NormalTrainRequest, network: Network) -> None:
    """The request's own consistency: policy, a train action, datasets present and allowed."""
    if request.automl_policy not in POLICIES:
        raise UsageError(f"--automl-policy {request.automl_policy!r}: expected one of {', '.join(POLICIES)}")
    if "train" not in network.actions:
        raise UsageError(f"{network.name} train is not available in this version")
    if not request.train_dataset_uri:
        raise UsageError("no training dataset: pass --train-dataset-uri URI (a folder or an archive)")
    _check_uri("--train-dataset-uri", request.train_dataset_uri)
    _check_uri("--eval-dataset-uri", request.eval_dataset_uri)
    eval_mode = network.metadata.eval_dataset
    if eval_mode == "required" and not request.eval_dataset_uri:
        raise UsageError(
            f"{network.name} needs an evaluation dataset (eval_dataset: required): pass --eval-dataset-uri URI"
        )
    if request.eval_dataset_uri and (eval_mode == "none" or "evaluate" not in network.actions):
        raise UsageError(f"{network.name} has no evaluate stage; drop --eval-dataset-uri")


def plan_normal_train(request: NormalTrainRequest, workspace: Workspace) -> Plan:
    """Check the request and decide every stage; raises a one-line UsageError before anything runs."""
    network = find_network(request.model)
    platform = find_platform(request.platform)
    _check_request(request, network)
    parsed = parse_overrides(request.overrides)  # SpecError for a malformed key=value
    explicit = set(parsed)
    uris = (request.train_dataset_uri, request.eval_dataset_uri)
    stage_overrides: dict[str, list[str]] = {
        action: dataset_overrides(network, action, *uris, explicit) + list(request.overrides)
        for action in ("train", "evaluate", "export")
        if action == "train" or (action == "evaluate" and request.eval_dataset_uri) or action == "export"
    }
    train_gets_val = any(
        n["source"] in EVAL_SOURCES and bool(request.eval_dataset_uri or n["spec_key"] in explicit)
        for n in catalog.dataset_requirements(network).get("train", [])
    )
    metric = catalog.monitoring(
        network, str(parsed.get("train.stage") or "") or None, has_validation=train_gets_val
    )
    use_automl, note = _decide_automl(request, network, platform)
    if use_automl:
        note = note[:-1] + f", trials ranked on {metric['metric']} ({metric['direction']}))"
    base = _decide_base(request, network, explicit, workspace)
    if base["path"] and base["source"] != f"override {base['key']}":
        stage_overrides["train"].append(f"{base['key']}={base['path']}")
    settings = resolve_settings(platform, uris)
    if platform.remote:
        from foveal.platforms.runner import get_runner

        get_runner(platform.name, settings)  # a platform without runner files fails here, before jobs
    environment = _decide_environment(request, network, platform)
    notes = [note]
    if request.image and not platform.remote:
        notes.append("--image is ignored on the local platform (jobs run in this Python environment)")
    if settings.missing:
        names = ", ".join(f"{s.name} (${s.env})" for s in settings.missing)
        notes.append(f"{platform.name} settings not set: {names}")
    export = True if request.export else (None if request.confirm is not None else False)
    return Plan(
        network, platform, settings, use_automl, note, metric, stage_overrides, base, environment,
        evaluate=bool(request.eval_dataset_uri), export=export, notes=notes,
    )  # fmt: skip


# ------------------------------------------------------------------------------------- running


@dataclass
class _Run:
    """State shared by the stages of one workflow run."""

    request: NormalTrainRequest
    plan: Plan
    workspace: Workspace
    registry: JobRegistry
    monitor: Any = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    automl: dict[str, Any] | None = None


def _stage_record(stage: str, job: Any, **extra: Any) -> dict[str, Any]:
    return {
        "stage": stage,
        "job_id": job.id,
        "status": job.status.value,
        "platform": job.platform,
        "kpis": job.kpis,
        "artifacts": job.artifacts,
        "results_dir": job.results_dir,
        "message": job.message,
        **extra,
    }


def _run_local(run: _Run, action: str, parent_id: str | None) -> Any:
    """Prepare and execute one stage in this process (the progress bar shows in the foreground)."""
    from foveal.jobs.lifecycle import execute_job, prepare_job

    prepared = prepare_job(
        run.plan.network.name,
        action,
        overrides=run.plan.stage_overrides[action],
        parent_id=parent_id,
        workspace=run.workspace,
    )
    run.request.emit(f"{action}: job {prepared.job.id} -> {prepared.job.results_dir}")
    if run.monitor is not None:
        run.monitor.watch(action, prepared.job.id)
    try:
        return execute_job(prepared, workspace=run.workspace, debug=run.request.debug)
    except Exception as exc:  # noqa: BLE001 - recorded by the job lifecycle; the summary reports it
        logger.debug("stage %s failed", action, exc_info=True)
        job = run.registry.get(prepared.job.id)
        if not job.message:
            job.message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return job


def _run_remote(run: _Run, action: str, parent_id: str | None) -> tuple[Any, dict[str, Any]]:
    from foveal.platforms.remote import launch_remote, prepare_remote_job
    from foveal.platforms.runner import get_runner

    plan = run.plan
    job = prepare_remote_job(
        plan.network.name,
        action,
        plan.platform.name,
        overrides=plan.stage_overrides[action],
        parent_id=parent_id,
        workspace=run.workspace,
    )
    if run.monitor is not None:
        run.monitor.watch(action, job.id)
    outcome = launch_remote(
        job,
        get_runner(plan.platform.name, plan.settings),
        run.workspace,
        image=plan.environment["image"],
        needs_s3=needs_s3((run.request.train_dataset_uri, run.request.eval_dataset_uri)),
        poll_s=run.request.remote_poll_s,
        submit=run.request.submit,
    )
    run.request.emit(f"{action}: job {job.id}: runner file {outcome.runner_file}")
    extra = {
        "runner_file": str(outcome.runner_file),
        "submitted": outcome.submitted,
        "scheduler_id": outcome.scheduler_id,
        "scheduler_state": outcome.scheduler_state,
    }
    if outcome.hint:
        extra["next_step"] = outcome.hint
    return outcome.job, extra


def _run_stage(run: _Run, action: str, parent_id: str | None) -> Any:
    if run.plan.platform.remote:
        job, extra = _run_remote(run, action, parent_id)
    else:
        job, extra = _run_local(run, action, parent_id), {}
    run.stages.append(_stage_record(action, job, parent_id=parent_id, **extra))
    return job


def _max_concurrent(request: NormalTrainRequest, plan: Plan) -> int:
    if request.max_concurrent is not None:
        return request.max_concurrent
    value = str(plan.settings.get("max_concurrent", "1"))
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"local setting max_concurrent={value!r}: expected a whole number >= 1")
    return int(value)


def _run_automl(run: _Run) -> Any:
    """The train stage through AutoML; returns the best trial's job."""
    from foveal.tuning import StudyRequest, run_study

    plan, request = run.plan, run.request
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    study = StudyRequest(
        network=plan.network.name,
        workspace=run.workspace.root,
        overrides=plan.stage_overrides["train"],
        algorithm=request.algorithm,
        max_trials=request.max_trials,
        max_concurrent=_max_concurrent(request, plan),
        metric=plan.metric["metric"],
        direction=plan.metric["direction"],
        study_name=f"{plan.network.name}-workflow-{stamp}",
        on_progress=run.monitor.automl if run.monitor is not None else None,
    )
    request.emit(f"train: AutoML study {study.study_name} ({request.algorithm}, {request.max_trials} trials)")
    if run.monitor is not None:
        run.monitor.automl({"trials_done": 0, "trials_total": request.max_trials})
    result = run_study(study)
    run.automl = {
        "study": result.study_name,
        "study_dir": str(result.study_dir),
        "metric": result.metric,
        "direction": result.direction,
        "best_trial": result.best_trial,
        "best_value": result.best_value,
        "best_params": result.best_params,
        "best_job_id": result.best_job_id,
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "trials": len(result.trials),
        "artifacts": result.artifacts,
    }
    job = run.registry.get(str(result.best_job_id))
    run.stages.append(_stage_record("train", job, automl_trial=result.best_trial, parent_id=job.parent_id))
    return job


def _want_export(run: _Run) -> bool:
    if run.plan.export is not None:
        return run.plan.export
    confirm = run.request.confirm
    return bool(confirm and confirm("Training finished. Export the model to ONNX?"))


def _stages(run: _Run) -> None:
    train = _run_automl(run) if run.plan.use_automl else _run_stage(run, "train", None)
    if train.status.value != "Done":
        return  # later stages need a finished train job (the summary says what happened)
    if run.plan.evaluate:
        _run_stage(run, "evaluate", train.id)
    if "export" in run.plan.network.actions and _want_export(run):
        _run_stage(run, "export", train.id)


def run_normal_train(request: NormalTrainRequest, workspace: Workspace | None = None) -> dict[str, Any]:
    """Plan, then run train (AutoML or plain) -> evaluate -> export; returns the summary.

    Raises:
        UsageError, SpecError, DatasetError...: one-line problems with the request, before any job.
    """
    from foveal.jobs.monitor import Monitor

    ws = (workspace or Workspace.resolve()).ensure()
    plan = plan_normal_train(request, ws)
    if plan.use_automl:
        _max_concurrent(request, plan)  # a bad setting is an error before any trial starts
    for note in plan.notes:
        request.emit(note)
    request.emit(f"base checkpoint: {plan.base_checkpoint['path'] or plan.base_checkpoint['source']}")
    run = _Run(request, plan, ws, JobRegistry(ws.db_path))
    if request.monitor:
        run.monitor = Monitor(run.registry, request.monitor_interval_s, request.emit, plan.metric["metric"])
        run.monitor.start()
    start = time.perf_counter()
    try:
        _stages(run)
    finally:
        if run.monitor is not None:
            run.monitor.stop()
    summary = _summary(run, time.perf_counter() - start)
    try:
        summary["report"] = str(write_workflow_page(summary, ws))
    except Exception as exc:  # noqa: BLE001 - the page never costs the workflow its result
        logger.warning("could not write the workflow's report.html: %s", exc)
    return summary


def write_workflow_page(summary: dict[str, Any], ws: Workspace) -> Path:
    """``<workspace>/workflows/<model>-<stamp>/`` with ``summary.json`` and ``report.html``: the
    plan, each stage's job and KPIs (linked to its own page), and the trained model's curves."""
    import json

    from foveal.engine.status import read_status
    from foveal.jobs.report import curve_figures, epoch_curves, html_page, section, table, write_report

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder = ws.root / "workflows" / f"{summary['model']}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    metric = summary["metric"]
    head = {
        "model": summary["model"], "status": summary["status"], "platform": summary["platform"],
        "train": summary["train_note"], "ranking metric": f"{metric['metric']} ({metric['direction']})",
        "train data": summary["datasets"]["train"], "eval data": summary["datasets"]["eval"],
        "seconds": summary["seconds"],
    }  # fmt: skip
    parts = [table([{"": k, "value": v} for k, v in head.items() if v is not None])]
    rows, links = [], []
    for stage in summary["stages"]:
        rows.append({k: stage.get(k) for k in ("stage", "job_id", "status", "kpis", "message")})
        page = Path(stage.get("results_dir") or ".") / "report.html"
        if page.is_file():
            links.append(f'<li>{stage["stage"]}: <a href="{page.as_uri()}">{stage["job_id"]}</a></li>')
    parts.append(section("Stages", table(rows, ["stage", "job_id", "status", "kpis", "message"])))
    automl = summary.get("automl") or {}
    study_page = Path(automl.get("study_dir") or ".") / "report.html"
    if automl and study_page.is_file():
        links.append(f'<li>AutoML study {automl["study"]}: <a href="{study_page.as_uri()}">trials and history</a></li>')
    if links:
        parts.append(section("Pages", "<ul>" + "".join(links) + "</ul>"))
    trained = next((s for s in summary["stages"] if s["stage"] == "train"), None)
    if trained and trained.get("results_dir"):
        curves = epoch_curves(read_status(Path(trained["results_dir"]) / "status.json"))
        if curves:
            parts.append(section("The trained model's curves", "\n".join(curve_figures(curves, "epoch"))))
    return write_report(folder / "report.html", html_page(f"normal-train workflow: {summary['model']}", parts))


def _summary(run: _Run, seconds: float) -> dict[str, Any]:
    plan = run.plan
    failed = [s for s in run.stages if s["status"] in ("Error", "Canceled")]
    pending = [s for s in run.stages if s["status"] in ("Pending", "Running")]
    # pending: a remote stage was written (or submitted) and has not finished; later stages wait.
    status = "failed" if failed else "pending" if pending else "done"
    artifacts = {f"{s['stage']}.{k}": v for s in run.stages for k, v in s["artifacts"].items()}
    return {
        "workflow": "normal-train",
        "status": status,
        "model": plan.network.name,
        "platform": plan.platform.name,
        "environment": plan.environment,
        "workspace": str(run.workspace.root),
        "seconds": round(seconds, 1),
        "automl_policy": run.request.automl_policy,
        "train_mode": "automl" if plan.use_automl else "plain",
        "train_note": plan.automl_note,
        "metric": plan.metric,
        "base_checkpoint": plan.base_checkpoint,
        "datasets": {"train": run.request.train_dataset_uri, "eval": run.request.eval_dataset_uri},
        "stages": run.stages,
        "automl": run.automl,
        "artifacts": artifacts,
        "notes": plan.notes,
    }
