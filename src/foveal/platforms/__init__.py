"""Execution platforms: where a job runs, what it needs to get there, and its runner files.

Every platform registers a :class:`Platform` by name (``local``, ``slurm``, ``kubernetes``,
``docker``; Ray is not one: nothing here submits to it, so it is not listed). A platform declares its settings (credentials included) with the
environment variable each one is read from; values may also come from a credentials file
(``$FOVEAL_CREDENTIALS_FILE``, default ``~/.config/foveal/credentials.yaml``)::

    slurm:
      partition: gpu
      ssh_key: ~/.ssh/id_ed25519
    s3:
      access_key_id: ...

Settings are read when a job is launched and kept in memory: they are never written into
specs, logs or ``status.json`` (runner files reference the environment variable instead of
a secret value). S3 keys are needed only when a dataset URI is ``s3://``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CREDENTIALS_ENV = "FOVEAL_CREDENTIALS_FILE"
DEFAULT_CREDENTIALS_FILE = Path("~/.config/foveal/credentials.yaml")


@dataclass(frozen=True)
class Setting:
    """One setting or credential of a platform.

    Attributes:
        name: key in the credentials file section, e.g. ``"partition"``.
        env: the environment variable it is read from (first), e.g. ``"FOVEAL_SLURM_PARTITION"``.
        description: one line for listings.
        required: needed to submit a job on this platform.
        secret: a credential: its value is never printed, written or logged.
        default: the value when neither the environment nor the file sets one.
    """

    name: str
    env: str
    description: str
    required: bool = False
    secret: bool = False
    default: str | None = None

    def describe(self, value: str | None, source: str | None) -> dict[str, Any]:
        """A listing row; secret values are reported only as set / not set."""
        shown = None if self.secret or value is None else value
        return {
            "name": self.name,
            "env": self.env,
            "required": self.required,
            "secret": self.secret,
            "description": self.description,
            "default": self.default,
            "is_set": value is not None,
            "source": source,
            "value": shown,
        }


@dataclass(frozen=True)
class Platform:
    """Descriptor of an execution platform.

    Attributes:
        name: registry name (``--platform``).
        description: one line for ``foveal platforms``.
        settings: what the platform reads (credentials and options).
        clients: executables used to submit and track jobs (``sbatch``, ``kubectl``...).
        runner_file: the file written into a job's results folder, or None (local).
        remote: jobs run in a container image elsewhere; needs image confirmation.
        writer: ``"module:function"`` building the runner (see :mod:`foveal.platforms.runner`).
    """

    name: str
    description: str
    settings: tuple[Setting, ...] = ()
    clients: tuple[str, ...] = ()
    runner_file: str | None = None
    remote: bool = True
    writer: str | None = None

    def clients_installed(self) -> dict[str, bool]:
        return {client: shutil.which(client) is not None for client in self.clients}


# Needed only when a dataset URI is s3:// (foveal.data reads these through fsspec / s3fs).
S3_SETTINGS = (
    Setting("access_key_id", "AWS_ACCESS_KEY_ID", "S3 access key (or a profile in AWS_PROFILE)", True, True),
    Setting("secret_access_key", "AWS_SECRET_ACCESS_KEY", "S3 secret key", True, True),
    Setting("session_token", "AWS_SESSION_TOKEN", "temporary-credentials token", secret=True),
    Setting("profile", "AWS_PROFILE", "a named profile from ~/.aws instead of keys"),
    Setting("region", "AWS_DEFAULT_REGION", "bucket region"),
    Setting("endpoint_url", "FOVEAL_S3_ENDPOINT_URL", "S3-compatible endpoint (MinIO, Ceph...)"),
)

_PLATFORMS: dict[str, Platform] = {}


def register_platform(platform: Platform) -> Platform:
    """Add a platform; a second registration under the same name replaces it with a warning."""
    if platform.name in _PLATFORMS and _PLATFORMS[platform.name] is not platform:
        logger.warning("platform %r registered twice; the later one wins", platform.name)
    _PLATFORMS[platform.name] = platform
    return platform


def list_platforms() -> list[Platform]:
    return list(_PLATFORMS.values())


def find_platform(name: str) -> Platform:
    """The platform ``name``; a UsageError naming the known ones otherwise."""
    from foveal.errors import UsageError

    key = (name or "").strip().lower()
    if key in ("k8s", "kube"):
        key = "kubernetes"
    if key not in _PLATFORMS:
        raise UsageError(f"unknown platform {name!r}; expected one of {', '.join(_PLATFORMS)}")
    return _PLATFORMS[key]


def needs_s3(dataset_uris: Iterable[str | None]) -> bool:
    return any(str(uri).lower().startswith("s3://") for uri in dataset_uris if uri)


def credentials_file() -> Path:
    return Path(os.environ.get(CREDENTIALS_ENV) or DEFAULT_CREDENTIALS_FILE).expanduser()


def _file_section(section: str) -> Mapping[str, Any]:
    path = credentials_file()
    if not path.is_file():
        return {}
    import yaml

    from foveal.errors import UsageError

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"credentials file {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get(section, {}), Mapping):
        raise UsageError(
            f"credentials file {path}: expected a mapping per platform, e.g. '{section}: {{...}}'"
        )
    return data.get(section) or {}


def read_setting(setting: Setting, section: str) -> tuple[str | None, str | None]:
    """``(value, source)``: the environment first, then the credentials file, then the default."""
    value = os.environ.get(setting.env)
    if value:
        return value, f"env:{setting.env}"
    from_file = _file_section(section).get(setting.name)
    if from_file not in (None, ""):
        return str(from_file), f"file:{credentials_file()}"
    if setting.default is not None:
        return setting.default, "default"
    return None, None


@dataclass
class ResolvedSettings:
    """The values a platform (and the dataset URIs) need, kept in memory only."""

    platform: str
    values: dict[str, str] = field(default_factory=dict)
    missing: list[Setting] = field(default_factory=list)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.values.get(name, default)

    def __repr__(self) -> str:  # never show values: some are secrets
        return f"ResolvedSettings({self.platform!r}, keys={sorted(self.values)}, missing={len(self.missing)})"


def settings_needed(platform: Platform, dataset_uris: Iterable[str | None] = ()) -> list[tuple[str, Setting]]:
    """``(section, setting)`` pairs: the platform's own, plus S3's when a dataset URI is s3://."""
    needed = [(platform.name, s) for s in platform.settings]
    if needs_s3(dataset_uris):
        needed += [("s3", s) for s in S3_SETTINGS]
    return needed


def resolve_settings(platform: Platform, dataset_uris: Iterable[str | None] = ()) -> ResolvedSettings:
    """Read every needed setting; required ones that are unset go to ``missing``."""
    resolved = ResolvedSettings(platform.name)
    uris = list(dataset_uris)
    s3_profile = needs_s3(uris) and read_setting(S3_SETTINGS[3], "s3")[0] is not None
    for section, setting in settings_needed(platform, uris):
        value, _ = read_setting(setting, section)
        key = setting.name if section == platform.name else f"{section}.{setting.name}"
        if value is not None:
            resolved.values[key] = value
        elif setting.required and not (section == "s3" and s3_profile):
            resolved.missing.append(setting)
    return resolved


def describe_platform(platform: Platform, dataset_uris: Iterable[str | None] = ()) -> dict[str, Any]:
    """A JSON-ready description for ``foveal platforms`` (secret values never included)."""
    uris = list(dataset_uris)
    rows: dict[str, list[dict[str, Any]]] = {"settings": [], "dataset_credentials": []}
    for section, setting in settings_needed(platform, uris):
        value, source = read_setting(setting, section)
        target = "settings" if section == platform.name else "dataset_credentials"
        rows[target].append({**setting.describe(value, source), "section": section})
    return {
        "name": platform.name,
        "description": platform.description,
        "remote": platform.remote,
        "runner_file": platform.runner_file,
        "clients": platform.clients_installed(),
        "required": [s["name"] for s in rows["settings"] if s["required"]],
        "optional": [s["name"] for s in rows["settings"] if not s["required"]],
        "settings": rows["settings"],
        # S3 keys appear only when a dataset URI is s3:// (pass --dataset-uri to see them).
        "dataset_credentials": rows["dataset_credentials"],
    }


def _builtin_platforms() -> None:
    S = Setting
    register_platform(
        Platform(
            "local",
            "Subprocesses on this machine (default): own logs, cancel, a concurrency limit.",
            settings=(S("max_concurrent", "FOVEAL_LOCAL_MAX_CONCURRENT", "jobs at once", default="1"),),
            remote=False,
        )
    )
    register_platform(
        Platform(
            "slurm",
            "SLURM cluster: an sbatch script per job, submitted with sbatch, tracked with squeue/sacct.",
            settings=(
                S("partition", "FOVEAL_SLURM_PARTITION", "partition to submit to (cluster default if unset)"),
                S("user", "FOVEAL_SLURM_USER", "login user when submitting over SSH"),
                S("hostname", "FOVEAL_SLURM_HOST", "login node; submit over SSH when sbatch is not local"),
                S(
                    "ssh_key",
                    "FOVEAL_SLURM_SSH_KEY",
                    "SSH private key file (else the SSH agent)",
                    secret=True,
                ),
                S("account", "FOVEAL_SLURM_ACCOUNT", "account to charge"),
                S("time_limit", "FOVEAL_SLURM_TIME", "wall-clock limit", default="04:00:00"),
                S("gpus_per_node", "FOVEAL_SLURM_GPUS", "GPUs per node", default="1"),
                S("container_runtime", "FOVEAL_SLURM_CONTAINER", "pyxis/enroot: srun --container-image"),
                S(
                    "python",
                    "FOVEAL_SLURM_PYTHON",
                    "the nodes' Python with foveal installed (container_runtime none)",
                    default="python",
                ),
            ),
            clients=("sbatch", "squeue", "sacct"),
            runner_file="job.sbatch",
            writer="foveal.platforms.slurm:SlurmRunner",
        )
    )
    register_platform(
        Platform(
            "kubernetes",
            "Kubernetes: a batch/v1 Job manifest per job, applied and tracked with kubectl.",
            settings=(
                S("kubeconfig", "KUBECONFIG", "kubeconfig file", True, True, default="~/.kube/config"),
                S("namespace", "FOVEAL_K8S_NAMESPACE", "namespace", default="default"),
                S("context", "FOVEAL_K8S_CONTEXT", "kubeconfig context (current if unset)"),
                S("workspace_pvc", "FOVEAL_K8S_WORKSPACE_PVC", "PVC holding the workspace (else hostPath)"),
                S("image_pull_secret", "FOVEAL_K8S_PULL_SECRET", "registry pull secret name"),
                S("gpus", "FOVEAL_K8S_GPUS", "nvidia.com/gpu limit", default="1"),
            ),
            clients=("kubectl",),
            runner_file="job.yaml",
            writer="foveal.platforms.kubernetes:KubernetesRunner",
        )
    )
    register_platform(
        Platform(
            "docker",
            "Docker: a docker run script per job (workspace mounted at the same path), run detached.",
            settings=(
                S("host", "DOCKER_HOST", "Docker daemon (local socket if unset)"),
                S("network", "FOVEAL_DOCKER_NETWORK", "container network"),
                S("pull_policy", "FOVEAL_DOCKER_PULL", "always, missing or never", default="missing"),
                S("gpus", "FOVEAL_DOCKER_GPUS", "--gpus value (none for CPU)", default="all"),
            ),
            clients=("docker",),
            runner_file="docker_run.sh",
            writer="foveal.platforms.docker:DockerRunner",
        )
    )


_builtin_platforms()

__all__ = [
    "CREDENTIALS_ENV",
    "S3_SETTINGS",
    "Platform",
    "ResolvedSettings",
    "Setting",
    "credentials_file",
    "describe_platform",
    "find_platform",
    "list_platforms",
    "needs_s3",
    "read_setting",
    "register_platform",
    "resolve_settings",
    "settings_needed",
]
