"""Fixtures for foveal.data tests: small image trees, a loopback S3 server and an HTTP server."""

from __future__ import annotations

import functools
import http.server
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _write_image(path: Path, seed: int = 0, size: int = 16, fmt: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB").save(path, format=fmt)
    return path


def _pack(folder: Path, archive: Path, arc_root: str | None = None) -> Path:
    """Archive every file under `folder` as `<arc_root or folder name>/<relative path>`."""
    base = arc_root if arc_root is not None else folder.name
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    names = [f"{base}/{p.relative_to(folder).as_posix()}".lstrip("/") for p in files]
    suffix = next(s for s in _TAR_MODES if archive.name.endswith(s))
    if _TAR_MODES[suffix] is None:
        with zipfile.ZipFile(archive, "w") as zf:
            for path, name in zip(files, names, strict=True):
                zf.write(path, name)
    else:
        with tarfile.open(archive, _TAR_MODES[suffix]) as tf:
            for path, name in zip(files, names, strict=True):
                tf.add(path, name)
    return archive


_TAR_MODES = {
    ".tar.gz": "w:gz",
    ".tgz": "w:gz",
    ".tar": "w",
    ".zip": None,
    ".tar.bz2": "w:bz2",
    ".tar.xz": "w:xz",
}


@pytest.fixture
def pack() -> Callable[..., Path]:
    """pack(folder, archive, arc_root=None) archives a folder by the archive's suffix."""
    return _pack


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """write_image(path, seed=0, size=16, fmt=None) writes a small random RGB image."""
    return _write_image


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """A flat folder of 6 images (png and jpg) plus a non-image file and a hidden file."""
    root = tmp_path / "images"
    for i in range(3):
        _write_image(root / f"a{i}.png", seed=i)
        _write_image(root / f"b{i}.JPG", seed=10 + i, fmt="JPEG")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"junk")
    return root


@pytest.fixture
def labeled_tree(tmp_path: Path) -> Path:
    """root/<class>/ images: cat x3, dog x2, zebra x1."""
    root = tmp_path / "labeled"
    for k, (cls, n) in enumerate((("cat", 3), ("dog", 2), ("zebra", 1))):
        for i in range(n):
            _write_image(root / cls / f"{cls}{i}.png", seed=100 * k + i)
    return root


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


# --------------------------------------------------------------------------- HTTP


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output clean
        pass


@pytest.fixture(scope="session")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, served folder): a threaded http.server on 127.0.0.1."""
    root = tmp_path_factory.mktemp("http_root")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()
    thread.join()
