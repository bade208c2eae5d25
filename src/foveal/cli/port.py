"""``foveal port``: port a Hugging Face vision model, list and remove ported networks."""

from __future__ import annotations

from pathlib import Path

import typer

from foveal.cli.output import Format, echo_json, print_table

port_app = typer.Typer(
    help="Port a Hugging Face vision model into a Foveal network, verified end to end.",
    no_args_is_help=True,
)
_WORKSPACE = typer.Option(
    None, "--workspace", "-w", help="Workspace folder (default: $FOVEAL_WORKSPACE or ./foveal-workspace)."
)


@port_app.command("hf")
def port_hf_command(
    source: str = typer.Argument(..., help="A local model folder (config.json + weights) or a hub id."),
    name: str = typer.Option(..., "--name", help="Name of the new network (e.g. my_vit)."),
    data: Path = typer.Option(
        None, "--data", help="Labeled class-folder dataset for the verify fine-tune (default: synthetic)."
    ),
    force: bool = typer.Option(False, "--force", help="Regenerate an existing port."),
    epochs: int = typer.Option(1, "--epochs", min=1, help="Verify fine-tuning epochs (4 images per class)."),
    image_size: int = typer.Option(None, "--image-size", min=32, help="Input size (default: the model's)."),
    wrap: bool = typer.Option(False, "--wrap", help="Wrap ViT/DINOv2 too instead of converting them."),
    workspace: Path = _WORKSPACE,
    fmt: Format = typer.Option(Format.text, "--format", help="text or json"),
) -> None:
    """Inspect, map, generate and verify: SOURCE becomes network NAME of the workspace."""
    from foveal.errors import PortFailedError
    from foveal.port import port_hf
    from foveal.port.report import PortReport

    try:
        report = port_hf(
            source, name, workspace=workspace, data=data, force=force, epochs=epochs,
            image_size=image_size, prefer_native=not wrap,
        )  # fmt: skip
    except PortFailedError as exc:
        if exc.report_file and Path(exc.report_file).is_file():
            failed = PortReport.read(Path(exc.report_file))
            if fmt is Format.json:
                echo_json(failed.to_dict())
            else:
                typer.echo(failed.summary())
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if fmt is Format.json:
        echo_json(report.to_dict())
        return
    typer.echo(report.summary())
    if report.status == "unchanged":
        typer.echo(f"{name} is already ported from this source; use --force to regenerate it")
    else:
        data_key = {
            "object-detection": "'dataset.train_data_sources=[{image_dir: ..., json_file: ...}]'",
            "semantic-segmentation": "dataset.segment.root_dir=...",
            "depth-estimation": "dataset.depth.root_dir=...",
        }.get(report.task or "", "dataset.train_dataset.images_dir=...")
        typer.echo(f"next: foveal {name} train {data_key} (specs: foveal spec {name} train)")


@port_app.command("remove")
def port_remove(name: str, workspace: Path = _WORKSPACE) -> None:
    """Remove the ported network NAME (its jobs and results stay)."""
    from foveal.port import remove_port

    folder = remove_port(name, workspace)
    typer.echo(f"removed {name} ({folder})")


@port_app.command("list")
def port_list(workspace: Path = _WORKSPACE, fmt: Format = typer.Option(Format.text, "--format")) -> None:
    """List the ported networks of the workspace."""
    from foveal.port import list_ports

    rows = list_ports(workspace)
    if fmt is Format.json:
        echo_json(rows)
        return
    print_table(
        ["network", "architecture", "mapping", "verified"],
        [[r["name"], r["architecture"], r["mapping"], "yes" if r["verified"] else "no"] for r in rows],
    )
