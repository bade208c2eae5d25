"""Which environment a job runs in: a container image for remote platforms, this Python for local.

A network names its image in its metadata, per action or for the whole model; the first one
set wins, in TAO's order::

    action.container_image -> action.image -> model.container_image -> model.image

where ``action.*`` is ``metadata.action_images[action]`` and ``model.*`` is ``metadata.image``
(:class:`~foveal.networks.registry.ImageRef`).
The value is a key of the versions file (``images.yaml`` next to this module, or
``$FOVEAL_IMAGES_FILE``) or, when it is not a key there, a full image reference.
"""

from __future__ import annotations

import os
import platform as _platform
import shutil
import sys
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

IMAGES_ENV = "FOVEAL_IMAGES_FILE"
_PRECEDENCE = (
    ("action", "container_image"),
    ("action", "image"),
    ("model", "container_image"),
    ("model", "image"),
)


def versions_file() -> str:
    """Where the versions file is read from (for listings and error messages)."""
    custom = os.environ.get(IMAGES_ENV)
    if custom:
        return str(Path(custom).expanduser())
    return str(resources.files("foveal.platforms").joinpath("images.yaml"))


@lru_cache(maxsize=4)
def _load_versions(path: str) -> dict[str, str]:
    from foveal._version import __version__
    from foveal.errors import UsageError

    try:
        text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"versions file {path} cannot be read ({str(exc).splitlines()[0]})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, dict):
        raise UsageError(f"versions file {path}: expected a top-level 'images:' mapping of key -> image")
    return {str(k): str(v).replace("{version}", __version__) for k, v in images.items()}


def load_versions() -> dict[str, str]:
    """Image key -> image reference from the versions file."""
    return dict(_load_versions(versions_file()))


def resolve_image(network: Any, action: str) -> dict[str, Any]:
    """The default container image of ``network`` ``action``.

    Returns:
        ``{"image", "key", "source", "versions_file"}``: the reference, the metadata value it
        came from, which metadata field set it (e.g. ``"model.image"``) and the versions file.

    Raises:
        UsageError: the network names no image at all.
    """
    from foveal.errors import UsageError

    metadata = network.metadata
    scopes = {"action": metadata.action_images.get(action), "model": metadata.image}
    versions = load_versions()
    for scope, field_name in _PRECEDENCE:
        value = getattr(scopes[scope], field_name, None)
        if value:
            return {
                "image": versions.get(str(value), str(value)),
                "key": str(value),
                "source": f"{scope}.{field_name}",
                "in_versions_file": str(value) in versions,
                "versions_file": versions_file(),
            }
    raise UsageError(
        f"{network.name} names no container image (metadata image/container_image); pass --image IMAGE"
    )


def local_environment() -> dict[str, Any]:
    """The current Python environment: what the local platform runs jobs with."""
    from foveal._version import __version__

    env: dict[str, Any] = {
        "python": _platform.python_version(),
        "executable": sys.executable,
        "foveal": __version__,
        "platform": _platform.platform(),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
        env["gpus"] = torch.cuda.device_count() if env["cuda_available"] else 0
    except ImportError:  # a listing must not fail on a broken install: say what is missing
        env["torch"] = None
    return env


def describe_image(network: Any, action: str, platform_name: str = "local") -> dict[str, Any]:
    """``foveal image resolve``: the container image, and for local the Python environment."""
    out: dict[str, Any] = {"model": network.name, "action": action, "platform": platform_name}
    out.update(resolve_image(network, action))
    if platform_name == "local":
        # Local jobs never use the container: they run in this interpreter.
        out["environment"] = local_environment()
    return out


# ------------------------------------------------------------------------------ building

BUILDERS = ("docker", "podman", "buildah")
# variant -> (versions-file key of its tag, build arguments)
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "cpu": ("foveal-cpu", {"TORCH_INDEX": "https://download.pytorch.org/whl/cpu"}),
    "cuda": ("foveal-pytorch", {}),
    "tensorrt": ("foveal-tensorrt", {"EXTRAS": "tasks,postgres,tensorrt"}),
}


def dockerfile() -> Path:
    """The Dockerfile shipped with the package (``foveal/platforms/container/Dockerfile``)."""
    return Path(str(resources.files("foveal.platforms").joinpath("container/Dockerfile")))


def source_root() -> Path | None:
    """The Foveal source checkout this package runs from (its pyproject.toml), or None."""
    here = Path(__file__).resolve()
    for folder in here.parents:
        project = folder / "pyproject.toml"
        if project.is_file() and 'name = "foveal"' in project.read_text(encoding="utf-8"):
            return folder
    return None


def build_command(
    variant: str = "cuda", builder: str | None = None, tag: str | None = None, context: Path | None = None
) -> dict[str, Any]:
    """What ``foveal image build`` runs: ``{"argv", "tag", "builder", "context", "dockerfile"}``.

    Raises:
        UsageError: an unknown variant or builder, none of docker/podman/buildah installed, or no
            source checkout to build from.
    """
    from foveal.errors import UsageError

    if variant not in VARIANTS:
        raise UsageError(f"--variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    if builder is not None and builder not in BUILDERS:
        raise UsageError(f"--builder {builder!r}: expected one of {', '.join(BUILDERS)}")
    chosen = builder or next((b for b in BUILDERS if shutil.which(b)), None)
    context = context or source_root()
    if context is None:
        raise UsageError(
            "foveal image build needs a Foveal source checkout (pyproject.toml, src/) as its build context; "
            "run it from a clone of the repository (pip install -e .)"
        )
    key, args = VARIANTS[variant]
    tag = tag or load_versions().get(key) or f"localhost/foveal:{variant}"
    build = ["build"] if chosen != "buildah" else ["bud"]
    argv = [chosen or BUILDERS[0], *build, "-f", str(dockerfile()), "-t", tag]
    for name, value in args.items():
        argv += ["--build-arg", f"{name}={value}"]
    argv.append(str(context))
    return {"argv": argv, "tag": tag, "builder": chosen, "context": str(context), "dockerfile": str(dockerfile()),
            "variant": variant}  # fmt: skip


def build_image(variant: str = "cuda", builder: str | None = None, tag: str | None = None) -> dict[str, Any]:
    """Build the image with the builder found (docker, podman or buildah); returns
    :func:`build_command`'s record. The builder's output goes to this process's stdout/stderr.

    Raises:
        UsageError: see :func:`build_command`; the builder failing (its exit code and last line).
    """
    import subprocess

    from foveal.errors import UsageError

    plan = build_command(variant, builder, tag)
    if plan["builder"] is None:
        raise UsageError(
            f"no image builder found (one of {', '.join(BUILDERS)}); install one, or run by hand: "
            + " ".join(plan["argv"])
        )
    done = subprocess.run(plan["argv"], stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        last = [line for line in (done.stderr or "").splitlines() if line.strip()]
        raise UsageError(f"{plan['builder']} build failed (exit {done.returncode}): {last[-1] if last else 'no output'}")
    return plan
