"""``foveal jobs list|show|logs|cancel``."""

from __future__ import annotations

from pathlib import Path

import typer

from foveal.cli.output import Format, echo_json, print_table

jobs_app = typer.Typer(help="List, inspect and cancel jobs.", no_args_is_help=True)

WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="Workspace folder.")


def _registry(workspace: Path | None):
    from foveal.jobs.registry import JobRegistry
    from foveal.jobs.workspace import Workspace

    ws = Workspace.resolve(workspace)
    ws.ensure()
    return JobRegistry(ws.db_path)


@jobs_app.command("list")
def list_jobs(
    network: str = typer.Option(None, help="Only this network."),
    status: str = typer.Option(None, help="Only this status (Pending, Running, Done, Error, Canceled)."),
    limit: int = typer.Option(50, help="At most this many, newest first."),
    workspace: Path = WorkspaceOpt,
    fmt: Format = typer.Option(Format.text, "--format", help="text or json"),
) -> None:
    """List jobs, newest first."""
    from foveal.jobs import api

    jobs = api.list_jobs(network=network, status=status, limit=limit, workspace=workspace)
    if fmt is Format.json:
        echo_json([j.to_dict() for j in jobs])
        return
    print_table(
        ["id", "network", "action", "status", "parent", "created", "results"],
        [
            [j.id, j.network, j.action, j.status.value, j.parent_id or "", j.created_at, j.results_dir]
            for j in jobs
        ],
    )


@jobs_app.command("show")
def show(
    job_id: str,
    workspace: Path = WorkspaceOpt,
    fmt: Format = typer.Option(Format.json, "--format", help="json (default) or text"),
) -> None:
    """Show one job (id or unique prefix)."""
    from foveal.jobs import api

    job = api.get(job_id, workspace)
    data = job.to_dict()
    if fmt is Format.json:
        echo_json(data)
        return
    for key, value in data.items():
        if key != "spec":
            typer.echo(f"{key}: {value}")


@jobs_app.command("logs")
def logs(
    job_id: str,
    status: bool = typer.Option(False, "--status", help="Print status.json instead of the log."),
    workspace: Path = WorkspaceOpt,
) -> None:
    """Print a job's log file (or its status.json lines)."""
    from foveal.jobs import api

    typer.echo(api.logs(job_id, status=status, workspace=workspace), nl=False)


@jobs_app.command("cancel")
def cancel(job_id: str, workspace: Path = WorkspaceOpt) -> None:
    """Cancel a pending or running job (a local subprocess job is stopped with its workers)."""
    from foveal.jobs import api

    job, stopped = api.cancel_job(job_id, workspace)
    typer.echo(f"job {job.id}: {job.status.value}" + (" (process stopped)" if stopped else ""))


@jobs_app.command("watch")
def watch(
    job_id: str,
    every: str = typer.Option(
        "5m", "--every", help="Time between status lines: 30s, 5m, 1h (bare number: minutes)."
    ),
    workspace: Path = WorkspaceOpt,
) -> None:
    """Print a status line (epoch/step, latest KPI, ETA) every interval until the job ends."""
    from foveal.jobs.monitor import parse_interval, watch_job
    from foveal.networks.registry import get_network

    interval = parse_interval(every)
    registry = _registry(workspace)
    job = registry.get(job_id)
    try:
        stage = (job.spec.get("train") or {}).get("stage")
        metric: str | None = get_network(job.network).metadata.monitoring.choose(stage).metric
    except KeyError:
        metric = None
    final = watch_job(registry, job.id, interval, typer.echo, metric=metric)
    if final.status.value in ("Error", "Canceled"):
        raise typer.Exit(1)
