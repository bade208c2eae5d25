"""``foveal automl NETWORK``: hyperparameter search, each trial a child train job."""

from __future__ import annotations

from pathlib import Path

import typer

from foveal.cli.output import Format, echo_json, print_table


def _parse_ranges(items: list[str]) -> dict[str, str]:
    from foveal.errors import UsageError

    ranges: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(
                f"--range {item}: expected KEY=LOW:HIGH[:log] or KEY=a,b,c (e.g. train.optim.lr=1e-5:1e-3:log)"
            )
        ranges[key.strip()] = value.strip()
    return ranges


def automl(
    network: str = typer.Argument(..., help="A network with AutoML enabled (see `foveal models`)."),
    overrides: list[str] = typer.Argument(
        None, metavar="[KEY=VALUE]...", help="Spec overrides for every trial."
    ),
    experiment_spec: Path = typer.Option(None, "--experiment-spec", "-e", help="Base train spec YAML."),
    algorithm: str = typer.Option(
        "bayesian", "--algorithm", help="bayesian, hyperband, asha, bohb or random."
    ),
    max_trials: int = typer.Option(8, "--max-trials", help="Trial budget (failed and pruned trials count)."),
    max_concurrent: int = typer.Option(
        None,
        "--max-concurrent",
        help="Trials running at once, each on its own train.num_gpus GPUs (CPU: its share of the cores). "
        "Default: visible GPUs / train.num_gpus, 1 on CPU.",
    ),
    timeout: float = typer.Option(None, "--timeout", help="Stop after this many seconds (resume later)."),
    metric: str = typer.Option(None, "--metric", help="Metric to optimise (default: the network's)."),
    direction: str = typer.Option(None, "--direction", help="minimize or maximize (default: the network's)."),
    params: str = typer.Option(None, "--params", help="Comma-separated spec keys to search."),
    ranges: list[str] = typer.Option(None, "--range", help="KEY=LOW:HIGH[:log] or KEY=a,b,c; repeatable."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the study without redoing finished trials."
    ),
    study: str = typer.Option(None, "--study", help="Study name (default: NETWORK-ALGORITHM)."),
    delete_intermediate_ckpt: bool = typer.Option(
        False, "--delete-intermediate-ckpt", help="Remove the checkpoints of all trials but the best."
    ),
    parent: str = typer.Option(None, "--parent", help="Parent job id of every trial."),
    storage: str = typer.Option(
        None,
        "--storage",
        envvar="FOVEAL_AUTOML_STORAGE",
        help="A shared study storage for several workers: postgresql://user@host/db (any SQLAlchemy URL) "
        "or journal:///shared/path/study.log. Workers with the same --study join it. Default: the "
        "workspace's SQLite file (one worker). Keep the password off the command line: PGPASSWORD, "
        "~/.pgpass, or the whole URL in $FOVEAL_AUTOML_STORAGE.",
    ),
    platform: str = typer.Option(
        "local", "--platform", help="Where trials run: local, or slurm (each trial an sbatch job; sbatch here)."
    ),
    heartbeat: float = typer.Option(
        30.0, "--heartbeat", help="Seconds between a worker's heartbeats; a trial unseen for 3 is rerun."
    ),
    workspace: Path = typer.Option(None, "--workspace", "-w", help="Workspace folder."),
    fmt: Format = typer.Option(Format.text, "--format", help="text or json"),
) -> None:
    """Search hyperparameters of NETWORK's train action with Optuna."""
    from foveal.jobs.workspace import Workspace
    from foveal.tuning import StudyRequest, run_study

    def progress(state: dict) -> None:
        best = (
            ""
            if state["best_value"] is None
            else f", best {state['best_value']:.6g} (trial {state['best_trial']})"
        )
        typer.echo(f"automl: {state['trials_done']}/{state['trials_total']} trials done{best}", err=True)

    request = StudyRequest(
        network=network,
        workspace=Workspace.resolve(workspace).root,
        spec_file=experiment_spec,
        overrides=list(overrides or []),
        algorithm=algorithm,
        max_trials=max_trials,
        max_concurrent=max_concurrent,
        timeout_s=timeout,
        metric=metric,
        direction=direction,
        params=[p.strip() for p in params.split(",") if p.strip()] if params else None,
        ranges=_parse_ranges(list(ranges or [])),
        study_name=study,
        resume=resume,
        delete_intermediate_ckpt=delete_intermediate_ckpt,
        parent_job_id=parent,
        storage=storage,
        heartbeat_s=heartbeat,
        platform=platform,
        on_progress=progress,
    )
    result = run_study(request)
    if fmt is Format.json:
        echo_json(result.to_dict())
        return
    keys = sorted({k for t in result.trials for k in t["params"]})
    print_table(
        ["trial", "state", result.metric, *keys, "job", "error"],
        [
            [
                t["number"],
                t["state"] + (f"@{t['pruned_at_epoch']}" if t["pruned_at_epoch"] else ""),
                "" if t["value"] is None else f"{t['value']:.6g}",
                *[_fmt(t["params"].get(k)) for k in keys],
                t["job_id"] or "",
                t["error"] or "",
            ]
            for t in result.trials
        ],
        title=f"study {result.study_name} ({result.direction} {result.metric})",
    )
    if result.best_trial is not None:
        typer.echo(
            f"best trial {result.best_trial}: {result.metric}={result.best_value:.6g} job {result.best_job_id}"
        )
    if result.best_checkpoint:
        typer.echo(f"best checkpoint: {result.best_checkpoint}")
    typer.echo(f"study folder: {result.study_dir}")


def _fmt(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
