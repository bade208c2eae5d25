"""``foveal workflow normal-train``: parsing, the terminal intake, and the summary."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from foveal.cli.output import Format, echo_json, print_table

workflow_app = typer.Typer(help="Multi-stage workflows (train -> evaluate -> export).", no_args_is_help=True)


def interactive() -> bool:
    """Ask questions only when a person is at a terminal (never for agents, pipes or CI)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def _confirm(question: str) -> bool:
    return typer.confirm(question, default=True, err=True)


def _intake(args: dict[str, Any]) -> None:
    """Fill what the command line left out, asking at the terminal (TTY only)."""
    from foveal.networks.registry import list_networks
    from foveal.platforms import list_platforms

    if not args["model"]:
        names = [n.name for n in list_networks() if "train" in n.actions]
        args["model"] = typer.prompt(f"Model ({', '.join(names)})", err=True)
    if not args["train_dataset_uri"]:
        args["train_dataset_uri"] = typer.prompt("Training dataset (folder, archive or URI)", err=True)
    if args["eval_dataset_uri"] is None:
        answer = typer.prompt("Evaluation dataset (empty: none)", default="", show_default=False, err=True)
        args["eval_dataset_uri"] = answer or None
    if args["platform"] is None:
        names = [p.name for p in list_platforms()]
        args["platform"] = typer.prompt(f"Platform ({', '.join(names)})", default="local", err=True)
    if args["monitor"] is None:
        args["monitor"] = typer.confirm("Print a status line every few minutes?", default=True, err=True)
        if args["monitor"]:
            args["monitor_interval"] = typer.prompt(
                "Minutes between status lines", default=args["monitor_interval"], type=float, err=True
            )


def _ask_image(model: str, platform_name: str) -> str | None:
    """On a remote platform: confirm the default image or type another (TTY only)."""
    from foveal.jobs.lifecycle import find_network
    from foveal.platforms import find_platform
    from foveal.platforms.images import resolve_image

    if not find_platform(platform_name).remote:
        return None
    default = resolve_image(find_network(model), "train")["image"]
    return typer.prompt(f"Container image for {platform_name} (Enter to confirm)", default=default, err=True)


def _ask_credentials(platform_name: str, uris: list[str | None]) -> None:
    """Ask only for the unset required settings of this platform and these dataset URIs; the
    answers live in this process's environment only (never written anywhere)."""
    from foveal.platforms import find_platform, resolve_settings

    for setting in resolve_settings(find_platform(platform_name), uris).missing:
        value = typer.prompt(f"{setting.description} (${setting.env})", hide_input=setting.secret, err=True)
        os.environ[setting.env] = value


def _require(args: dict[str, Any]) -> None:
    missing = [
        flag
        for key, flag in (("model", "--model M"), ("train_dataset_uri", "--train-dataset-uri URI"))
        if not args[key]
    ]
    if missing:
        from foveal.errors import UsageError

        raise UsageError(
            f"no terminal to ask: pass {' and '.join(missing)} (see foveal workflow normal-train --help)"
        )


@workflow_app.command("normal-train")
def normal_train(
    overrides: list[str] = typer.Argument(
        None, metavar="[KEY=VALUE]...", help="Spec overrides for every stage."
    ),
    model: str = typer.Option(None, "--model", help="A registered network (foveal models)."),
    train_dataset_uri: str = typer.Option(
        None, "--train-dataset-uri", help="Training images: folder, archive, URI."
    ),
    eval_dataset_uri: str = typer.Option(
        None, "--eval-dataset-uri", help="Evaluation images (enables evaluate)."
    ),
    platform: str = typer.Option(None, "--platform", help="local (default), slurm, kubernetes, docker."),
    image: str | None = typer.Option(None, "--image", help="Container image for remote platforms (confirms it)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Confirm the default image; ask nothing."),
    automl_policy: str = typer.Option("auto", "--automl-policy", help="auto, on or off."),
    max_trials: int = typer.Option(4, "--max-trials", min=1, help="AutoML trial budget."),
    algorithm: str = typer.Option("bayesian", "--algorithm", help="bayesian, hyperband, asha, bohb, random."),
    max_concurrent: int = typer.Option(
        None,
        "--max-concurrent",
        min=1,
        help="AutoML trials at once (default: $FOVEAL_LOCAL_MAX_CONCURRENT or 1).",
    ),
    base_checkpoint: Path = typer.Option(None, "--base-checkpoint", help="Start from this checkpoint."),
    export: bool = typer.Option(False, "--export", help="Export the trained model to ONNX."),
    monitor: bool = typer.Option(None, "--monitor/--no-monitor", help="Status lines while it runs."),
    monitor_interval: float = typer.Option(5.0, "--monitor-interval", help="Minutes between status lines."),
    submit: bool = typer.Option(
        True, "--submit/--no-submit", help="Remote platforms: submit the runner files, or only write them."
    ),
    poll_interval: float = typer.Option(
        15.0, "--poll-interval", min=0.1, help="Seconds between scheduler polls of a submitted job (remote platforms)."
    ),
    workspace: Path = typer.Option(None, "--workspace", "-w", help="Workspace folder."),
    fmt: Format = typer.Option(Format.text, "--format", help="text or json"),
) -> None:
    """Train (through AutoML where the model allows it), evaluate and export, as chained jobs."""
    from foveal.cli import errors
    from foveal.errors import UsageError
    from foveal.jobs.workspace import Workspace
    from foveal.workflows.normal import NormalTrainRequest, run_normal_train

    args: dict[str, Any] = dict(
        model=model,
        train_dataset_uri=train_dataset_uri,
        eval_dataset_uri=eval_dataset_uri,
        platform=platform,
        monitor=monitor,
        monitor_interval=monitor_interval,
    )
    tty = interactive() and not yes
    if tty:
        _intake(args)
        image = image or _ask_image(args["model"], args["platform"] or "local")
        _ask_credentials(args["platform"] or "local", [args["train_dataset_uri"], args["eval_dataset_uri"]])
    _require(args)
    if args["monitor_interval"] <= 0:
        raise UsageError(f"--monitor-interval {args['monitor_interval']}: expected minutes > 0, e.g. 5")
    request = NormalTrainRequest(
        model=args["model"],
        train_dataset_uri=args["train_dataset_uri"],
        eval_dataset_uri=args["eval_dataset_uri"],
        platform=args["platform"] or "local",
        image=image,
        yes=yes,
        automl_policy=automl_policy,
        algorithm=algorithm,
        max_trials=max_trials,
        max_concurrent=max_concurrent,
        base_checkpoint=str(base_checkpoint) if base_checkpoint else None,
        export=export,
        monitor=True if args["monitor"] is None else args["monitor"],
        monitor_interval_s=args["monitor_interval"] * 60.0,
        remote_poll_s=poll_interval,
        submit=submit,
        overrides=list(overrides or []),
        confirm=_confirm if tty else None,
        emit=lambda line: typer.echo(line, err=True),
        debug=errors.DEBUG,
    )
    summary = run_normal_train(request, Workspace.resolve(workspace))
    if fmt is Format.json:
        echo_json(summary)
    else:
        print_summary(summary)
    if summary["status"] == "failed":
        raise typer.Exit(1)


def _fmt_kpis(kpis: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kpis.items())


def print_summary(summary: dict[str, Any]) -> None:
    print_table(
        ["stage", "job", "status", "KPIs", "artifacts"],
        [
            [
                s["stage"],
                s["job_id"],
                s["status"],
                _fmt_kpis(s["kpis"]) or s.get("message", ""),
                "\n".join(str(v) for v in s["artifacts"].values()) or s.get("runner_file", ""),
            ]
            for s in summary["stages"]
        ],
        title=f"normal-train {summary['model']} on {summary['platform']}: {summary['status']}",
    )
    typer.echo(
        f"train: {summary['train_note']}; metric {summary['metric']['metric']} ({summary['metric']['direction']})"
    )
    base = summary["base_checkpoint"]
    typer.echo(f"base checkpoint: {base['path'] or base['source']}")
    automl = summary.get("automl")
    if automl:
        typer.echo(
            f"best AutoML trial: {automl['best_trial']} ({automl['metric']}={automl['best_value']}, "
            f"job {automl['best_job_id']}) params {automl['best_params']}; study {automl['study_dir']}"
        )
    for stage in summary["stages"]:
        if stage.get("next_step"):
            typer.echo(f"{stage['stage']}: {stage['next_step']}")
