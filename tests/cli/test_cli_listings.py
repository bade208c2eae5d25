"""Listings an agent calls: `foveal platforms`, `foveal image resolve` (valid JSON, the issue's fields)."""

from __future__ import annotations

import json

import pytest

from foveal.cli.main import main

pytestmark = pytest.mark.unit


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("FOVEAL_CREDENTIALS_FILE", str(tmp_path / "none.yaml"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "FOVEAL_SLURM_SSH_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_platforms_json(capsys):
    code, out, _ = run(capsys, "platforms", "--format", "json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == {"local", "slurm", "kubernetes", "docker"}  # only platforms that can submit
    for row in rows.values():
        assert {"required", "optional", "settings", "clients", "remote", "dataset_credentials"} <= set(row)
        assert row["dataset_credentials"] == []  # no s3:// URI given
    assert rows["local"]["required"] == [] and not rows["local"]["remote"]
    assert set(rows["slurm"]["clients"]) == {"sbatch", "squeue", "sacct"}
    assert {"partition", "user", "hostname", "ssh_key"} <= set(
        rows["slurm"]["optional"] + rows["slurm"]["required"]
    )
    assert "kubeconfig" in rows["kubernetes"]["required"]


def test_platforms_for_one_platform_and_an_s3_dataset(capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-print-me")
    code, out, _ = run(
        capsys,
        "platforms",
        "--platform",
        "docker",
        "--dataset-uri",
        "s3://bucket/train.tar.gz",
        "--format",
        "json",
    )
    assert code == 0 and "do-not-print-me" not in out
    (row,) = json.loads(out)
    creds = {c["env"]: c for c in row["dataset_credentials"]}
    assert creds["AWS_SECRET_ACCESS_KEY"]["is_set"] and creds["AWS_SECRET_ACCESS_KEY"]["value"] is None
    assert not creds["AWS_ACCESS_KEY_ID"]["is_set"] and creds["AWS_ACCESS_KEY_ID"]["required"]
    code, out, _ = run(capsys, "platforms", "--platform", "docker")
    assert code == 0 and out.splitlines()[0].split("\t")[0] == "platform" and "docker" in out
    code, _, err = run(capsys, "platforms", "--platform", "lsf")
    assert code == 2 and "unknown platform 'lsf'" in err


def test_image_resolve_json(capsys):
    code, out, _ = run(
        capsys, "image", "resolve", "--model", "nvdinov2", "--action", "train", "--format", "json"
    )
    assert code == 0
    info = json.loads(out)
    assert info["model"] == "nvdinov2" and info["action"] == "train" and info["platform"] == "local"
    assert (
        info["source"] == "model.image"
        and info["key"] == "foveal-pytorch"
        and info["image"].startswith("localhost/foveal:")
    )
    assert info["versions_file"].endswith("images.yaml")
    assert {"python", "torch", "cuda"} <= set(info["environment"])
    code, out, _ = run(
        capsys,
        "image",
        "resolve",
        "--model",
        "mae",
        "--action",
        "gen_trt_engine",
        "--platform",
        "slurm",
        "--format",
        "json",
    )
    info = json.loads(out)
    assert (
        code == 0
        and info["source"] == "action.image"
        and "tensorrt" in info["image"]
        and "environment" not in info
    )
    code, out, _ = run(capsys, "image", "resolve", "--model", "mae")
    assert code == 0 and out.startswith("image: localhost/foveal:") and "torch:" in out


def test_image_resolve_errors_are_one_line(capsys):
    code, _, err = run(capsys, "image", "resolve", "--model", "maee")
    assert code == 2 and "unknown network 'maee' (did you mean mae?)" in err
    code, _, err = run(capsys, "image", "resolve", "--model", "mae", "--action", "fly")
    assert code == 2 and "unknown action 'fly'" in err and len(err.strip().splitlines()) == 1
