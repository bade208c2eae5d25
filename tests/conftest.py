"""Fixtures shared by every test folder: registries restored after each test, a real S3-compatible
server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# --------------------------------------------------------------------------- registries


@pytest.fixture(autouse=True)
def _restore_registries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Ported networks and backbones registered by a test (a port, a task demo) must not leak into
    the next one; ``-w`` sets $FOVEAL_WORKSPACE for the process, which monkeypatch puts back."""
    from foveal.networks import registry as networks
    from foveal.nn import registry as backbones

    networks.list_networks()
    saved_networks, saved_backbones = dict(networks._NETWORKS), dict(backbones._BACKBONES)
    monkeypatch.delenv("FOVEAL_WORKSPACE", raising=False)
    yield
    networks._NETWORKS.clear()
    networks._NETWORKS.update(saved_networks)
    backbones._BACKBONES.clear()
    backbones._BACKBONES.update(saved_backbones)


# --------------------------------------------------------------------------- S3 (moto server)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3-compatible HTTP server on loopback (moto's server mode), one per session."""
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Environment pointing foveal and boto3 at the moto server; returns a boto3 S3 client."""
    boto3 = pytest.importorskip("boto3")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("FOVEAL_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
