"""Dataset URIs to local folders: local paths, ``file://``, ``s3://`` and ``http(s)://``.

A URI names a folder of images or an archive (see `archive.ARCHIVE_SUFFIXES`). Local folders are
used in place; everything else lands in the cache::

    downloads/<key>/<name>     a remote archive; key = sha256 of (URI, ETag, size, mtime)
    mirrors/<key>/             a remote folder's images; key = sha256 of the URI
    mirrors/<key>/.foveal-manifest.json   fingerprint per file, written last
    extracted/<sha256>/        archives, keyed by content (see `archive.py`)

S3 uses the standard AWS credential chain (environment, profile, instance role). For
S3-compatible stores set ``FOVEAL_S3_ENDPOINT_URL`` (or the standard ``AWS_ENDPOINT_URL``; the
first wins). A remote archive is fetched again only when its ETag, size or modification time
changes; servers that send neither ETag nor Last-Modified are fetched on every call.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import fsspec
from filelock import FileLock

from foveal.errors import DatasetError

from .archive import ARCHIVE_SUFFIXES, archive_suffix, extract_archive, is_archive
from .images import is_image_file

logger = logging.getLogger(__name__)

_MANIFEST = ".foveal-manifest.json"
_EXTRAS = {"s3": ("s3fs", "s3"), "http": ("aiohttp", "http"), "https": ("aiohttp", "http")}


def default_cache_dir() -> Path:
    """`$FOVEAL_CACHE_DIR`, else `$XDG_CACHE_HOME/foveal`, else `~/.cache/foveal`."""
    if os.environ.get("FOVEAL_CACHE_DIR"):
        return Path(os.environ["FOVEAL_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "foveal"


def resolve_dataset(uri: str | Path, cache_dir: Path) -> Path:
    """Return a local folder holding the dataset that `uri` names.

    Args:
        uri: a local path, `file://`, `s3://` or `http(s)://` URI to a folder or an archive.
        cache_dir: where downloads, mirrors and extractions are kept (see the module docstring).

    Returns:
        A folder: the local folder itself, a mirror of a remote folder, or the folder that holds
        an archive's dataset.

    Raises:
        DatasetError: missing path (with a near-miss suggestion), unsupported scheme or file,
            missing optional dependency, access problem, or an unsafe archive.
    """
    cache_dir = Path(cache_dir).expanduser()
    if isinstance(uri, Path):
        return _resolve_local(uri, cache_dir, str(uri))
    text = str(uri).strip()
    scheme = urlparse(text).scheme.lower()
    if len(scheme) <= 1:  # no scheme, or a Windows drive letter
        return _resolve_local(Path(text), cache_dir, text)
    if scheme == "file":
        return _resolve_local(_file_uri_path(text), cache_dir, text)
    if scheme in _EXTRAS:
        return _resolve_remote(text, scheme, cache_dir)
    raise DatasetError(
        text, f"unsupported URI scheme {scheme}://", "use a local path, file://, s3:// or http(s)://"
    )


def _file_uri_path(uri: str) -> Path:
    parsed = urlparse(uri)
    # `file://data/x` is not a valid URI but is a common spelling of the relative path `data/x`.
    host = "" if parsed.netloc in ("", "localhost") else parsed.netloc
    path = unquote(host + parsed.path)
    if re.match(r"^/[A-Za-z]:", path):  # file:///C:/data -> C:/data
        path = path[1:]
    return Path(path)


# --------------------------------------------------------------------------- local


def _resolve_local(path: Path, cache_dir: Path, shown: str) -> Path:
    path = path.expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        if is_archive(path):
            return extract_archive(path, cache_dir)
        raise DatasetError(
            shown,
            f"expected a folder of images or an archive, found a {path.suffix or 'suffix-less'} file",
            f"archives must end in {', '.join(ARCHIVE_SUFFIXES)}",
        )
    raise DatasetError(shown, "not found", _local_near_miss(path))


def _alternatives(name: str) -> list[str]:
    """`foo` -> `foo.tar.gz`, `foo.tgz`, ...; `foo.tar.gz` -> `foo`, `foo.zip`, ..."""
    suffix = archive_suffix(name)
    stem = name[: -len(suffix)] if suffix else name.rstrip("/")
    return [c for c in [stem, *(stem + s for s in ARCHIVE_SUFFIXES)] if c and c != name]


def _local_near_miss(path: Path) -> str:
    parent = path.parent
    if not parent.is_dir():
        ancestor = next((a for a in path.parents if a.is_dir()), None)
        return f"the folder {parent} does not exist either" + (
            f" (nearest existing: {ancestor})" if ancestor else ""
        )
    for alt in _alternatives(path.name):
        if (parent / alt).exists():
            return f"did you mean {parent / alt}?"
    names = [p.name for p in itertools.islice(parent.iterdir(), 10_000)]
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.75)
    return f"did you mean {parent / close[0]}?" if close else "check the path"


# --------------------------------------------------------------------------- remote


def _resolve_remote(uri: str, scheme: str, cache_dir: Path) -> Path:
    fs = _filesystem(uri, scheme)
    rpath = fs._strip_protocol(uri) if scheme == "s3" else uri
    url_path = urlparse(uri).path
    if scheme != "s3" and url_path.endswith("/"):
        return _mirror_folder(fs, rpath, uri, cache_dir)
    info = _remote(uri, fs, lambda: fs.info(rpath))
    if info.get("type") == "directory":
        return _mirror_folder(fs, rpath, uri, cache_dir)
    if not is_archive(url_path):
        hint = f"archives must end in {', '.join(ARCHIVE_SUFFIXES)}"
        hint += "" if scheme == "s3" else "; a folder URL must end in '/'"
        raise DatasetError(uri, "expected a folder of images or an archive, found a file", hint)
    return extract_archive(_download(fs, rpath, uri, info, cache_dir), cache_dir)


def _filesystem(uri: str, scheme: str) -> fsspec.AbstractFileSystem:
    package, extra = _EXTRAS[scheme]
    options: dict[str, Any] = {}
    endpoint = os.environ.get("FOVEAL_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    if scheme == "s3" and endpoint:
        options["endpoint_url"] = endpoint
    try:
        # A fresh instance: fsspec's shared instances cache listings, which would hide updates.
        return fsspec.filesystem(scheme, skip_instance_cache=True, **options)
    except ImportError as e:
        raise DatasetError(
            uri,
            f"reading {scheme}:// needs the optional package {package}, which is not installed",
            f"run pip install 'foveal[{extra}]'",
        ) from e


def _remote(uri: str, fs: fsspec.AbstractFileSystem, call, *, near_miss: bool = True):
    """Run a filesystem call, turning its many failure types into one-line DatasetErrors."""
    try:
        return call()
    except DatasetError:
        raise
    except FileNotFoundError as e:
        raise DatasetError(
            uri, "not found", _remote_near_miss(fs, uri) if near_miss else "check the URI"
        ) from e
    except PermissionError as e:
        raise DatasetError(
            uri,
            f"access denied ({e})",
            "check the credentials (AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and permissions",
        ) from e
    except Exception as e:  # network stacks raise botocore, aiohttp and asyncio errors alike
        detail = str(e).splitlines()[0] if str(e) else ""
        hint = "check the network, the endpoint (FOVEAL_S3_ENDPOINT_URL) and the credentials"
        if type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            hint = "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        raise DatasetError(uri, f"cannot read ({type(e).__name__}: {detail})", hint) from e


def _remote_near_miss(fs: fsspec.AbstractFileSystem, uri: str) -> str:
    base, _, name = uri.rstrip("/").rpartition("/")
    for alt in _alternatives(name):
        candidate = f"{base}/{alt}"
        try:
            if fs.exists(candidate if candidate.startswith("http") else fs._strip_protocol(candidate)):
                return f"did you mean {candidate}?"
        except Exception:  # a failed probe only loses the suggestion
            logger.debug("near-miss probe failed for %s", candidate, exc_info=True)
    return "check the URI"


def _fingerprint(info: dict[str, Any]) -> str | None:
    """ETag / mtime / size of a remote file as a string, or None if the server gives no validator."""
    keys = ("ETag", "Last-Modified", "LastModified", "last_modified", "mtime")
    found = {k: str(info[k]) for k in keys if info.get(k) is not None}
    if not found:
        return None
    found["size"] = str(info.get("size"))
    return json.dumps(found, sort_keys=True)


def _download(fs, rpath: str, uri: str, info: dict[str, Any], cache_dir: Path) -> Path:
    """Fetch a remote archive into `downloads/<key>/` unless an identical version is there."""
    fingerprint = _fingerprint(info)
    key = hashlib.sha256(json.dumps([uri, fingerprint]).encode()).hexdigest()[:32]
    name = unquote(urlparse(uri).path.rstrip("/").rpartition("/")[2]) or "archive"
    downloads = cache_dir / "downloads"
    target = downloads / key / name
    downloads.mkdir(parents=True, exist_ok=True)
    with FileLock(str(downloads / f"{key}.lock")):
        if fingerprint is not None and target.is_file():
            logger.debug("Reusing download of %s at %s", uri, target)
            return target
        if fingerprint is None:
            logger.info("%s: the server sends no ETag or Last-Modified, so it is downloaded again", uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{name}.part-{os.getpid()}")
        start = time.monotonic()
        logger.info("Downloading %s", uri)
        try:
            _remote(uri, fs, lambda: fs.get_file(rpath, str(part)), near_miss=False)
            size = info.get("size")
            if size is not None and part.stat().st_size != int(size):
                raise DatasetError(
                    uri, f"download truncated ({part.stat().st_size} of {size} bytes)", "try again"
                )
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        logger.info(
            "Downloaded %s (%.1f MB) in %.1f s", uri, target.stat().st_size / 1e6, time.monotonic() - start
        )
    return target


def _mirror_folder(fs, rpath: str, uri: str, cache_dir: Path) -> Path:
    """Mirror the images under a remote folder into `mirrors/<key>/`, fetching only changes."""
    key = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:32]
    mirrors = cache_dir / "mirrors"
    mirror = mirrors / key
    mirror.mkdir(parents=True, exist_ok=True)
    with FileLock(str(mirrors / f"{key}.lock")):
        remote = _list_remote_images(fs, rpath, uri)
        try:
            manifest = json.loads((mirror / _MANIFEST).read_text())["files"]
        except (OSError, ValueError, KeyError):
            manifest = {}
        todo = [
            rel
            for rel, (_, fp) in remote.items()
            if fp is None or manifest.get(rel) != fp or not (mirror / rel).is_file()
        ]
        _prune_mirror(mirror, remote)
        if todo:
            _fetch_files(fs, uri, mirror, [(remote[rel][0], rel) for rel in todo])
        tmp = mirror / f"{_MANIFEST}.{os.getpid()}"
        tmp.write_text(json.dumps({"uri": uri, "files": {rel: fp for rel, (_, fp) in remote.items()}}))
        os.replace(tmp, mirror / _MANIFEST)
    logger.info("%s: mirrored %d images (%d fetched) at %s", uri, len(remote), len(todo), mirror)
    return mirror


def _list_remote_images(fs, rpath: str, uri: str) -> dict[str, tuple[str, str | None]]:
    """relative path -> (remote path, fingerprint) for every image file under the folder."""
    listing = _remote(uri, fs, lambda: fs.find(rpath, detail=True))
    base = rpath.rstrip("/") + "/"
    remote: dict[str, tuple[str, str | None]] = {}
    others: list[str] = []
    for path, info in sorted(listing.items()):
        if info.get("type") != "file" or not path.startswith(base) or path.endswith("/"):
            continue
        rel = unquote(path[len(base) :]) if path.startswith("http") else path[len(base) :]
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise DatasetError(uri, f"remote file {rel!r} has an unsafe relative path", "rename the object")
        if is_image_file(parts[-1]) and not any(p.startswith(".") for p in parts):
            remote[rel] = (path, _fingerprint(info))
        else:
            others.append(rel)
    if not remote:
        archives = [o for o in others if is_archive(o)]
        found = f"found {len(others)} files, none an image" if others else "folder is empty"
        hint = f"point at the archive {uri.rstrip('/')}/{archives[0]}" if archives else "check the URI"
        raise DatasetError(uri, f"no images ({found})", hint)
    return remote


def _prune_mirror(mirror: Path, remote: dict[str, Any]) -> None:
    """Delete mirrored files that are no longer in the remote folder."""
    for path in [p for p in mirror.rglob("*") if p.is_file()]:
        rel = path.relative_to(mirror).as_posix()
        if rel != _MANIFEST and rel not in remote:
            path.unlink()


def _fetch_files(fs, uri: str, mirror: Path, items: list[tuple[str, str]]) -> None:
    """Download (remote path, relative path) pairs, each via a hidden part file then a rename."""
    start = time.monotonic()
    parts = []
    for _, rel in items:
        final = mirror / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        parts.append(final.with_name(f".{final.name}.part"))
    try:
        # One batched call lets async filesystems (s3fs, http) fetch concurrently.
        _remote(uri, fs, lambda: fs.get([r for r, _ in items], [str(p) for p in parts]), near_miss=False)
        for part, (_, rel) in zip(parts, items, strict=True):
            os.replace(part, mirror / rel)
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
    logger.info("%s: fetched %d files in %.1f s", uri, len(items), time.monotonic() - start)
