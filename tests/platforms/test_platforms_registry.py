"""The platform registry, credentials (env, file, never shown) and image resolution."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from foveal.errors import UsageError
from foveal.networks.registry import ImageRef, Monitoring, NetworkMetadata
from foveal.platforms import (
    describe_platform,
    find_platform,
    list_platforms,
    needs_s3,
    resolve_settings,
)
from foveal.platforms.images import describe_image, load_versions, resolve_image

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in (
        "FOVEAL_SLURM_PARTITION",
        "FOVEAL_SLURM_SSH_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "RAY_ADDRESS",
        "FOVEAL_IMAGES_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FOVEAL_CREDENTIALS_FILE", str(tmp_path / "no-credentials.yaml"))


def test_every_issue_platform_is_registered_with_its_settings():
    names = [p.name for p in list_platforms()]
    assert names[0] == "local" and set(names) == {"local", "slurm", "kubernetes", "docker"}
    slurm = {s.name for s in find_platform("slurm").settings}
    assert {"user", "hostname", "partition", "ssh_key"} <= slurm
    assert {"kubeconfig", "namespace", "context"} <= {s.name for s in find_platform("k8s").settings}
    assert {"host", "network", "pull_policy"} <= {s.name for s in find_platform("docker").settings}
    assert not find_platform("local").remote and find_platform("slurm").runner_file == "job.sbatch"
    with pytest.raises(UsageError, match="unknown platform 'lsf'; expected one of local, slurm"):
        find_platform("lsf")


def test_settings_come_from_env_then_file_and_secrets_are_never_shown(monkeypatch, tmp_path):
    creds = tmp_path / "credentials.yaml"
    creds.write_text("slurm:\n  partition: from-file\n  ssh_key: /secret/key\n")
    monkeypatch.setenv("FOVEAL_CREDENTIALS_FILE", str(creds))
    slurm = find_platform("slurm")
    resolved = resolve_settings(slurm)
    assert resolved.get("partition") == "from-file" and resolved.get("ssh_key") == "/secret/key"
    assert "/secret/key" not in repr(resolved)
    monkeypatch.setenv("FOVEAL_SLURM_PARTITION", "from-env")
    assert resolve_settings(slurm).get("partition") == "from-env"
    row = describe_platform(slurm)
    text = json.dumps(row)
    assert "/secret/key" not in text
    key = next(s for s in row["settings"] if s["name"] == "ssh_key")
    assert key["secret"] and key["is_set"] and key["value"] is None and key["source"].startswith("file:")
    part = next(s for s in row["settings"] if s["name"] == "partition")
    assert part["value"] == "from-env" and part["source"] == "env:FOVEAL_SLURM_PARTITION"


def test_s3_credentials_only_when_a_dataset_uri_is_s3():
    docker = find_platform("docker")
    assert needs_s3(["/data", "s3://bucket/x.tar.gz"]) and not needs_s3(["/data", None, "https://x"])
    assert describe_platform(docker, ["/local/data"])["dataset_credentials"] == []
    rows = describe_platform(docker, ["s3://bucket/train.tar.gz"])["dataset_credentials"]
    assert {r["env"] for r in rows} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    missing = resolve_settings(docker, ["s3://bucket/train"]).missing
    assert {s.env for s in missing} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert resolve_settings(docker, ["/local"]).missing == []


def test_a_profile_replaces_s3_keys(monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "team")
    assert resolve_settings(find_platform("docker"), ["s3://b/x"]).missing == []


def test_bad_credentials_file_is_one_line(monkeypatch, tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("slurm: [1, 2]\n")
    monkeypatch.setenv("FOVEAL_CREDENTIALS_FILE", str(bad))
    with pytest.raises(UsageError, match="expected a mapping per platform"):
        resolve_settings(find_platform("slurm"))


def _net(image=None, container_image=None, action_images=None):
    metadata = NetworkMetadata(
        task="toy",
        automl_enabled=False,
        monitoring=Monitoring("train_loss"),
        image=ImageRef(image, container_image),
        action_images={a: ImageRef(**refs) for a, refs in (action_images or {}).items()},
    )
    return SimpleNamespace(name="toy", metadata=metadata)


def test_image_precedence_follows_tao_order():
    versions = load_versions()
    assert "foveal-pytorch" in versions and "{version}" not in versions["foveal-pytorch"]
    full = _net(
        image="foveal-pytorch",
        container_image="registry/model:c",
        action_images={"export": {"image": "foveal-tensorrt", "container_image": "registry/export:c"}},
    )
    assert resolve_image(full, "export")["source"] == "action.container_image"
    assert resolve_image(full, "export")["image"] == "registry/export:c"
    no_action_container = _net(image="foveal-pytorch", action_images={"export": {"image": "foveal-tensorrt"}})
    got = resolve_image(no_action_container, "export")
    assert got["source"] == "action.image" and got["image"] == versions["foveal-tensorrt"]
    assert resolve_image(full, "train")["source"] == "model.container_image"
    got = resolve_image(_net(image="foveal-pytorch"), "train")
    assert (
        got["source"] == "model.image"
        and got["image"] == versions["foveal-pytorch"]
        and got["in_versions_file"]
    )
    with pytest.raises(UsageError, match="names no container image .* --image"):
        resolve_image(_net(), "train")


def test_site_versions_file_overrides_the_packaged_one(monkeypatch, tmp_path):
    site = tmp_path / "images.yaml"
    site.write_text("images:\n  foveal-pytorch: registry.local/foveal:{version}\n")
    monkeypatch.setenv("FOVEAL_IMAGES_FILE", str(site))
    from foveal import __version__

    assert (
        resolve_image(_net(image="foveal-pytorch"), "train")["image"]
        == f"registry.local/foveal:{__version__}"
    )
    site.write_text("just text\n")
    monkeypatch.setenv("FOVEAL_IMAGES_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(UsageError, match="versions file .*missing.yaml cannot be read"):
        load_versions()


def test_local_platform_reports_this_python_environment():
    import platform

    import torch

    from foveal.networks.registry import get_network

    info = describe_image(get_network("nvdinov2"), "train", "local")
    env = info["environment"]
    assert env["python"] == platform.python_version() and env["torch"] == torch.__version__
    assert env["cuda"] == torch.version.cuda and "image" in info
    assert "environment" not in describe_image(get_network("nvdinov2"), "train", "slurm")
