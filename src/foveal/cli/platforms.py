"""``foveal platforms`` and ``foveal image resolve``: where jobs can run and in which environment."""

from __future__ import annotations

import typer

from foveal.cli.output import Format, echo_json, print_table

image_app = typer.Typer(help="Container images: which one a model/action runs in.", no_args_is_help=True)


def platforms(
    platform: str = typer.Option(None, "--platform", help="Only this platform."),
    dataset_uri: list[str] = typer.Option(
        None, "--dataset-uri", help="Dataset URIs the run will read (s3:// adds the S3 credentials)."
    ),
    fmt: Format = typer.Option(Format.text, "--format", help="text or json"),
) -> None:
    """List execution platforms with their required and optional credentials/settings."""
    from foveal.platforms import describe_platform, find_platform, list_platforms

    chosen = [find_platform(platform)] if platform else list_platforms()
    rows = [describe_platform(p, dataset_uri or []) for p in chosen]
    if fmt is Format.json:
        echo_json(rows)
        return

    def settings(row: dict, required: bool) -> str:
        items = [s for s in row["settings"] + row["dataset_credentials"] if s["required"] is required]
        return ", ".join(f"{s['name']} (${s['env']}{'' if s['is_set'] else ', unset'})" for s in items) or "-"

    print_table(
        ["platform", "clients", "required", "optional", "description"],
        [
            [
                r["name"],
                ", ".join(f"{c}{'' if ok else ' (missing)'}" for c, ok in r["clients"].items()) or "-",
                settings(r, True),
                settings(r, False),
                r["description"],
            ]
            for r in rows
        ],
    )


@image_app.command("resolve")
def resolve(
    model: str = typer.Option(..., "--model", help="A registered network, e.g. mae."),
    action: str = typer.Option(
        "train", "--action", help="train, evaluate, inference, export, gen_trt_engine."
    ),
    platform: str = typer.Option("local", "--platform", help="local also reports this Python environment."),
    fmt: Format = typer.Option(Format.text, "--format", help="text or json"),
) -> None:
    """The default image of MODEL ACTION (action.container_image -> action.image -> model.container_image
    -> model.image, through the versions file); for local, the current Python environment too."""
    from foveal.jobs.lifecycle import check_action, find_network
    from foveal.platforms import find_platform
    from foveal.platforms.images import describe_image

    network = find_network(model)
    check_action(network, action)
    info = describe_image(network, action, find_platform(platform).name)
    if fmt is Format.json:
        echo_json(info)
        return
    typer.echo(
        f"image: {info['image']} ({info['source']} = {info['key']}; versions file {info['versions_file']})"
    )
    for key, value in (info.get("environment") or {}).items():
        typer.echo(f"{key}: {value}")


@image_app.command("build")
def build(
    variant: str = typer.Option("cuda", "--variant", help="cpu, cuda (GPU platforms) or tensorrt."),
    builder: str = typer.Option(None, "--builder", help="docker, podman or buildah (default: the first found)."),
    tag: str = typer.Option(None, "--tag", help="Image tag (default: the versions file's reference)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the build command; build nothing."),
    fmt: Format = typer.Option(Format.text, "--format", help="text or json"),
) -> None:
    """Build Foveal's container image from this source checkout (foveal/platforms/container/Dockerfile)
    and tag it as the default image reference the remote platforms use."""
    from foveal.platforms.images import build_command, build_image

    plan = build_command(variant, builder, tag) if dry_run else build_image(variant, builder, tag)
    if fmt is Format.json:
        echo_json(plan)
        return
    typer.echo(" ".join(plan["argv"]) if dry_run else f"built {plan['tag']} with {plan['builder']}")
