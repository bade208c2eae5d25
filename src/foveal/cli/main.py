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
from foveal.cli.automl import automl
from foveal.cli.jobs import jobs_app
from foveal.cli.output import Format, JobFormat, echo_json, print_table
from foveal.cli.platforms import image_app, platforms
from foveal.cli.port import port_app
from foveal.cli.workflow import workflow_app
from foveal.networks.registry import ACTIONS, list_networks

app = typer.Typer(
    name="foveal",
    help="Train, tune, evaluate and export vision foundation models from typed spec files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(jobs_app, name="jobs")
app.command("automl")(automl)
app.command("platforms")(platforms)
app.add_typer(image_app, name="image")
app.add_typer(workflow_app, name="workflow")
data_app = typer.Typer(help="Datasets: make the synthetic demo data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(port_app, name="port")

WorkspaceOpt = typer.Option(
    None, "--workspace", "-w", help="Workspace folder (default: $FOVEAL_WORKSPACE or ./foveal-workspace)."
)


def _print_version(value: bool) -> None:
    if value:
        import foveal

        typer.echo(f"foveal {foveal.__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
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
    for handler in logging.getLogger().handlers:  # a job's log file may lower the root level: not the console's
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(level)
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "torch", "onnxscript", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


@app.command("models")
def models(
    scope: str = typer.Option(None, "--scope", help="automl: only networks AutoML can tune."),
    fmt: Format = typer.Option(Format.text, "--format", help="text or json"),
) -> None:
    """List the registered networks: actions, AutoML, monitoring, dataset needs, checkpoints."""
    from foveal import api

    if scope not in (None, "all", "automl"):
        raise errors.UsageError(f"--scope {scope!r}: expected automl or all")
    rows = api.models(scope)
    if fmt is Format.json:
        echo_json(rows)
    else:
        print_table(
            ["network", "actions", "task", "automl", "monitor", "description"],
            [
                [
                    r["name"],
                    ", ".join(r["actions"]) or "(schema only)",
                    r["task"] or "",
                    ("yes" if r["automl_runnable"] else "enabled, not runnable")
                    if r["automl_enabled"]
                    else "no",
                    f"{r['monitoring_metric']} ({r['monitoring_direction']})",
                    r["description"],
                ]
                for r in rows
            ],
        )


@app.command("schema")
def schema(network: str, action: str) -> None:
    """Print the JSON schema of NETWORK ACTION."""
    from foveal import api

    echo_json(api.schema(network, action))


@app.command("spec", context_settings={"ignore_unknown_options": True})
def spec(
    words: list[str] = typer.Argument(
        ..., metavar="NETWORK ACTION | check NETWORK ACTION [KEY=VALUE]...", show_default=False
    ),
    experiment_spec: Path = typer.Option(
        None, "--experiment-spec", "-e", help="check: the spec YAML to check (only keys that differ)."
    ),
    output: Path = typer.Option(None, "--output", "-o", help="Write the template here instead of stdout."),
    fmt: Format = typer.Option(Format.text, "--format", help="check: text or json"),
) -> None:
    """Print a YAML spec template (the defaults) for NETWORK ACTION; or, as ``spec check``,
    validate a spec (file and overrides) without running anything: the resolved spec, or every
    error (exit 2). ``--format json`` gives ``{ok, errors: [{key, message, suggestion}], spec}``."""
    from foveal import api
    from foveal.spec import dump_yaml

    if words[0] == "check":
        if len(words) < 3:
            raise errors.UsageError("spec check needs NETWORK ACTION, e.g. foveal spec check mae train -e spec.yaml")
        result = api.check(words[1], words[2], spec=experiment_spec, overrides=words[3:])
        if fmt is Format.json:
            echo_json(result.to_dict())
        elif result.ok:
            typer.echo(dump_yaml(result.spec or {}), nl=False)
        else:
            for issue in result.errors:
                typer.echo(f"spec error: {issue}", err=True)
        raise typer.Exit(0 if result.ok else 2)
    if len(words) != 2:
        raise errors.UsageError(f"expected NETWORK ACTION (or check NETWORK ACTION ...), got {' '.join(words)}")
    text = api.template(words[0], words[1])
    if output is None:
        typer.echo(text, nl=False)
        return
    if output.exists():
        raise errors.UsageError(f"{output} exists; choose another --output or remove it")
    output.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {output}")


@app.command("decrypt")
def decrypt(
    file: Path = typer.Argument(..., help="A model file Foveal wrote under an encryption key."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the plain file."),
    key_file: Path = typer.Option(
        None, "--key-file", help="Read the key from this file (default: $FOVEAL_ENCRYPTION_KEY, else a prompt)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT if it exists."),
) -> None:
    """Write the plain copy of an encrypted checkpoint or ONNX file, for other tools."""
    from foveal import secrets
    from foveal.engine.checkpoint import atomic_write

    if not file.is_file():
        raise errors.UsageError(f"{file}: no such file")
    if not secrets.is_encrypted(file):
        raise errors.UsageError(f"{file} is not encrypted; use it as it is")
    if output.exists() and not force:
        raise errors.UsageError(f"{output} exists; choose another --output or pass --force")
    if key_file is not None:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise errors.UsageError(f"--key-file {key_file}: {exc.strerror or exc}") from None
    else:
        key = os.environ.get(secrets.ENV_KEY) or ""
        if not key and sys.stdin.isatty():
            key = typer.prompt("encryption key", hide_input=True)
    if not key:
        raise errors.UsageError(f"no key: set {secrets.ENV_KEY}, pass --key-file, or run it in a terminal")
    plain = secrets.decrypt_bytes(file.read_bytes(), secrets.check_key(key), file)
    atomic_write(output, lambda handle: handle.write(plain))
    typer.echo(f"wrote {output}")


@data_app.command("demo")
def data_demo(
    out_dir: Path = typer.Argument(..., help="Folder to write the synthetic dataset into."),
    num_train: int = typer.Option(2000, help="Training images."),
    num_val: int = typer.Option(400, help="Validation images."),
    num_test: int = typer.Option(400, help="Test images."),
    image_size: int = typer.Option(64, help="Image side in pixels."),
    num_classes: int = typer.Option(8, help="Shape classes (2 to 12)."),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)."),
) -> None:
    """Write the synthetic shapes dataset (TAO SSL archives + labeled class folders)."""
    from foveal.data.synthetic import make_demo_dataset

    paths = make_demo_dataset(
        out_dir,
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        image_size=image_size,
        num_classes=num_classes,
        seed=seed,
    )
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")


@data_app.command("tasks")
def data_tasks(
    out_dir: Path = typer.Argument(..., help="Folder to write the annotated dataset into."),
    num_train: int = typer.Option(256, help="Training images."),
    num_val: int = typer.Option(64, help="Validation images."),
    num_test: int = typer.Option(32, help="Test images."),
    image_size: int = typer.Option(64, help="Image side in pixels."),
    num_classes: int = typer.Option(3, help="Shape classes (1 to 12)."),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)."),
) -> None:
    """Write the synthetic shapes with detection, segmentation and depth annotations (COCO JSON and
    per-split COCO folders, class-id masks, 16-bit depth maps)."""
    from foveal.data.synthetic_tasks import make_task_dataset

    paths = make_task_dataset(out_dir, num_train=num_train, num_val=num_val, num_test=num_test,
                              image_size=image_size, num_classes=num_classes, seed=seed)  # fmt: skip
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")


@app.command("demo")
def demo(
    workspace: Path = WorkspaceOpt,
    epochs: int = typer.Option(None, help="MAE pretraining epochs (default: the demo's own)."),
    finetune_epochs: int = typer.Option(None, help="Fine-tuning epochs (default: the demo's own)."),
    task: str = typer.Option(
        "classification",
        help="classification (MAE pretrain + finetune), or a ported Hugging Face model's task: detection, "
        "segmentation, depth, zero-shot, grounding, instance.",
    ),
    fmt: Format = typer.Option(Format.text, "--format", help="text or json"),
) -> None:
    """Make the synthetic dataset, then MAE pretrain -> finetune -> evaluate -> export on CPU (or, with
    --task, port a small local Hugging Face model of that task and train -> evaluate -> infer -> export it)."""
    from foveal.jobs.workspace import Workspace
    from foveal.workflows.demo import run_demo, run_task_demo

    if task == "classification":
        summary = run_demo(Workspace.resolve(workspace), epochs=epochs, finetune_epochs=finetune_epochs)
    else:
        summary = run_task_demo(Workspace.resolve(workspace), task, epochs=epochs)
    if fmt is Format.json:
        echo_json(summary)
        return
    print_table(
        ["stage", "job", "status", "KPIs", "artifacts"],
        [
            [
                s["stage"],
                s["job_id"],
                s["status"],
                _fmt_kpis(s["kpis"]),
                "\n".join(dict.fromkeys(s["artifacts"].values())),  # best and latest may be one file
            ]
            for s in summary["stages"]
        ],
        title="foveal demo",
    )
    typer.echo(summary["message"])


@app.command("report")
def report(
    target: str = typer.Argument(..., help="A job id (or unique prefix), or an AutoML study's name or folder."),
    workspace: Path = WorkspaceOpt,
) -> None:
    """Write a job's (or an AutoML study's) self-contained report.html and print its path: KPIs,
    the spec's differences from the defaults, metric curves, pictures, the trials table."""
    from foveal.api import report as write

    typer.echo(str(write(target, workspace)))


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
        fmt: JobFormat = typer.Option(
            JobFormat.text, "--format", help="text, json, or id (only the job id, e.g. for --parent $(...))"
        ),
    ) -> None:
        from foveal.jobs.lifecycle import execute_job, prepare_job
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
        if fmt is JobFormat.json:
            echo_json(job.to_dict())
            return
        if fmt is JobFormat.id:
            typer.echo(job.id)
            return
        typer.echo(f"job {job.id} {job.status.value}: {job.results_dir}")
        if job.kpis:
            typer.echo("kpis: " + _fmt_kpis(job.kpis))
        for kind, path in job.artifacts.items():
            typer.echo(f"{kind}: {path}")

    command.__doc__ = f"Run {network_name} {action} as a job."
    return command


_COMMAND_NETWORKS: set[str] = set()


def _add_network_commands() -> None:
    """One sub-command per registered network not given one yet (built-ins at import time,
    ported networks once ``main`` has loaded the workspace)."""
    for net in list_networks():
        if net.name in _COMMAND_NETWORKS:
            continue
        _COMMAND_NETWORKS.add(net.name)
        sub = typer.Typer(help=net.description or net.name, no_args_is_help=True)
        for action in ACTIONS:
            sub.command(action)(_network_command(net.name, action))
        app.add_typer(sub, name=net.name)


_add_network_commands()


def _workspace_from_argv(argv: list[str]) -> str | None:
    """The ``-w/--workspace`` value anywhere on the command line (None when absent)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg in ("-w", "--workspace") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--workspace="):
            return arg.split("=", 1)[1]
    return None


def _load_ported_networks(argv: list[str]) -> None:
    """Sub-commands are built before parsing, so learn the workspace first and register the
    networks ported into it (``foveal port hf``)."""
    from foveal.jobs.workspace import Workspace
    from foveal.networks.registry import load_workspace_networks

    load_workspace_networks(Workspace.resolve(_workspace_from_argv(argv)).root)
    _add_network_commands()


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    errors.install_sigterm_handler()
    _load_ported_networks(argv)
    return errors.run_cli(app, argv)


if __name__ == "__main__":
    sys.exit(main())
