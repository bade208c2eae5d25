"""The ``foveal`` command: parsing and printing only; all logic lives in the library.

Every failure caused by input is one line on stderr and exit code 2 (no traceback unless
``--debug``); listings take ``--format json`` for agents.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from foveal.cli import errors
from foveal.cli.jobs import jobs_app
from foveal.cli.output import Format, echo_json, print_table
from foveal.networks.registry import ACTIONS, list_networks

app = typer.Typer(
    name="foveal",
    help="Train, tune, evaluate and export vision foundation models from typed spec files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(jobs_app, name="jobs")
data_app = typer.Typer(help="Datasets: make the synthetic demo data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

WorkspaceOpt = typer.Option(
    None, "--workspace", "-w", help="Workspace folder (default: $FOVEAL_WORKSPACE or ./foveal-workspace)."
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
    workspace: Path = typer.Option(
        None, "--workspace", "-w", help="Workspace folder for every command (default: ./foveal-workspace)."
    ),
) -> None:
    if workspace is not None:
        os.environ["FOVEAL_WORKSPACE"] = str(workspace)
    errors.DEBUG = debug or os.environ.get("FOVEAL_DEBUG") == "1"
    level = logging.DEBUG if errors.DEBUG else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(message)s" if errors.DEBUG else "%(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "torch", "onnxscript", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


@app.command("models")
def models(fmt: Format = typer.Option(Format.text, "--format", help="text or json")) -> None:
    """List the registered networks and their actions."""
    rows = [
        {
            "name": n.name,
            "description": n.description,
            "actions": list(n.actions),
            "task": n.metadata.get("task"),
            "automl_enabled": bool(n.metadata.get("automl_enabled")),
        }
        for n in list_networks()
    ]
    if fmt is Format.json:
        echo_json(rows)
    else:
        print_table(
            ["network", "actions", "task", "description"],
            [
                [r["name"], ", ".join(r["actions"]) or "(schema only)", r["task"] or "", r["description"]]
                for r in rows
            ],
        )


@app.command("schema")
def schema(network: str, action: str) -> None:
    """Print the JSON schema of NETWORK ACTION."""
    from foveal.jobs.runner import check_action, find_network
    from foveal.spec import action_schema

    net = find_network(network)
    check_action(net, action)
    echo_json(action_schema(net.config_cls, action, net.action_sections.get(action)))


@app.command("spec")
def spec(
    network: str,
    action: str,
    output: Path = typer.Option(None, "--output", "-o", help="Write the template here instead of stdout."),
) -> None:
    """Print a YAML spec template (the defaults) for NETWORK ACTION."""
    from foveal.jobs.runner import check_action, find_network
    from foveal.spec import spec_template

    net = find_network(network)
    check_action(net, action)
    text = spec_template(net.config_cls, action, net.action_sections.get(action))
    if output is None:
        typer.echo(text, nl=False)
        return
    if output.exists():
        raise errors.UsageError(f"{output} exists; choose another --output or remove it")
    output.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {output}")


@data_app.command("demo")
def data_demo(
    out_dir: Path = typer.Argument(..., help="Folder to write the synthetic dataset into."),
    num_train: int = typer.Option(2000, help="Training images."),
    num_val: int = typer.Option(400, help="Validation images."),
    num_test: int = typer.Option(400, help="Test images."),
    image_size: int = typer.Option(64, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)."),
) -> None:
    """Write the synthetic shapes dataset (TAO SSL archives + labeled class folders)."""
    from foveal.data.synthetic import make_demo_dataset

    paths = make_demo_dataset(
        out_dir, num_train=num_train, num_val=num_val, num_test=num_test, image_size=image_size, seed=seed
    )
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")


@app.command("demo")
def demo(
    workspace: Path = WorkspaceOpt,
    epochs: int = typer.Option(None, help="Training epochs (default: the demo's own)."),
    fmt: Format = typer.Option(Format.text, "--format", help="text or json"),
) -> None:
    """Make the synthetic dataset, train, evaluate and export a small model on CPU."""
    from foveal.jobs.workspace import Workspace
    from foveal.workflows.demo import run_demo

    summary = run_demo(Workspace.resolve(workspace), epochs=epochs)
    if fmt is Format.json:
        echo_json(summary)
        return
    print_table(
        ["stage", "job", "status", "KPIs", "artifacts"],
        [
            [s["stage"], s["job_id"], s["status"], _fmt_kpis(s["kpis"]), "\n".join(s["artifacts"].values())]
            for s in summary["stages"]
        ],
        title="foveal demo",
    )
    typer.echo(summary["message"])


def _fmt_kpis(kpis: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kpis.items())


def _network_command(network_name: str, action: str):
    def command(
        overrides: list[str] = typer.Argument(
            None, metavar="[KEY=VALUE]...", help="Spec overrides, applied last."
        ),
        experiment_spec: Path = typer.Option(
            None, "--experiment-spec", "-e", help="Spec YAML (only the keys that differ from the defaults)."
        ),
        parent: str = typer.Option(
            None, "--parent", help="Parent job id: fills checkpoints and paths from it."
        ),
        parent_checkpoint: str = typer.Option(
            "best", "--parent-checkpoint", help="Which parent checkpoint: best, latest or epoch:N."
        ),
        new: bool = typer.Option(
            False, "--new", help="Start a new job even if an identical one was interrupted."
        ),
        workspace: Path = WorkspaceOpt,
        fmt: Format = typer.Option(Format.text, "--format", help="text or json"),
    ) -> None:
        from foveal.jobs.runner import execute_job, prepare_job
        from foveal.jobs.workspace import Workspace

        ws = Workspace.resolve(workspace)
        prepared = prepare_job(
            network_name,
            action,
            spec_file=experiment_spec,
            overrides=overrides or [],
            parent_id=parent,
            parent_checkpoint=parent_checkpoint,
            workspace=ws,
            new=new,
        )
        verb = "resuming" if prepared.resumed else "running"
        typer.echo(
            f"{verb} job {prepared.job.id}: {network_name} {action} -> {prepared.job.results_dir}", err=True
        )
        job = execute_job(prepared, workspace=ws, debug=errors.DEBUG)
        if fmt is Format.json:
            echo_json(job.to_dict())
            return
        typer.echo(f"job {job.id} {job.status.value}: {job.results_dir}")
        if job.kpis:
            typer.echo("kpis: " + _fmt_kpis(job.kpis))
        for kind, path in job.artifacts.items():
            typer.echo(f"{kind}: {path}")

    command.__doc__ = f"Run {network_name} {action} as a job."
    return command


def _add_network_commands() -> None:
    for net in list_networks():
        sub = typer.Typer(help=net.description or net.name, no_args_is_help=True)
        for action in ACTIONS:
            sub.command(action)(_network_command(net.name, action))
        app.add_typer(sub, name=net.name)


_add_network_commands()


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    return errors.run_cli(app, argv)


if __name__ == "__main__":
    sys.exit(main())
