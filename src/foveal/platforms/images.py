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
