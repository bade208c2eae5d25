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
