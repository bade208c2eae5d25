"""Safe, content-addressed, once-only extraction of dataset archives.

Cache layout under ``cache_dir``::

    extracted/<sha256>/             the archive's members; one folder per archive *content*
    extracted/<sha256>/.complete    JSON marker, written last (holds the dataset root, see below)
    extracted/<sha256>.lock         file lock shared by threads, processes and jobs on one host
    extracted/by-stat/<key>         sha256 remembered per (path, size, mtime) so reuse skips hashing

Extraction goes into a temporary folder next to the final one and is renamed into place, so a
crash never leaves a folder that looks complete. Keying by content means the same archive reached
through different paths or URIs is extracted once.

Safety: every member is checked before it is written. Absolute names, ``..`` components, device
files and fifos refuse the whole archive. Links are never created on disk: a hard or symbolic
link whose target is a regular file inside the archive is materialised as a copy; a link that
points outside the archive (or at a folder) refuses the archive; a dangling one is skipped.

Dataset root: when the visible top level of the archive is exactly one folder (the usual
``tar czf images_train.tar.gz images_train/`` layout, as in TAO's archives), that folder is
returned, because it is the folder that holds the images or the class folders. Only one level
is stripped, so a labeled archive ``train/<class>/...`` keeps its class folders. Hidden entries
and macOS ``__MACOSX`` folders are ignored when deciding.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple, cast

from filelock import FileLock, Timeout

from foveal.errors import DatasetError

from .images import is_ignored_name

logger = logging.getLogger(__name__)

#: Archive suffixes understood by `extract_archive`, longest first so `.tar.gz` beats `.gz`.
ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip")

_MARKER = ".complete"
_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


def archive_suffix(name: str | Path) -> str | None:
    """Return the archive suffix of a file name (case-insensitive), or None if it is not one."""
    lower = str(name).lower()
    return next((s for s in ARCHIVE_SUFFIXES if lower.endswith(s)), None)


def is_archive(path: str | Path) -> bool:
    """True if the name ends with a supported archive suffix (the file is not opened)."""
    return archive_suffix(path) is not None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def extract_archive(archive: Path, cache_dir: Path) -> Path:
    """Extract an archive once into the cache and return the folder holding its dataset.

    Args:
        archive: a local `.tar.gz`, `.tgz`, `.tar`, `.zip` (or `.tar.bz2`, `.tar.xz`) file.
        cache_dir: cache root; extraction goes to `cache_dir/extracted/<sha256>/`.

    Returns:
        The extraction folder, or its single top-level folder (see the module docstring).

    Raises:
        DatasetError: the archive is missing, unreadable, or holds an unsafe member.
    """
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise DatasetError(archive, "archive not found", "check the path")
    if not is_archive(archive):
        raise DatasetError(
            archive, "not a supported archive", f"expected one of {', '.join(ARCHIVE_SUFFIXES)}"
        )
    extracted = Path(cache_dir).expanduser() / "extracted"
    extracted.mkdir(parents=True, exist_ok=True)
    sha = _cached_sha256(archive, extracted / "by-stat")
    dest = extracted / sha
    root = _read_marker(dest)
    if root is not None:
        logger.debug("Reusing extraction of %s at %s", archive, dest)
    else:
        lock = FileLock(str(extracted / f"{sha}.lock"))
        try:
            lock.acquire(timeout=1)
        except Timeout:
            logger.info("Waiting for another process to finish extracting %s", archive)
            lock.acquire()
        try:
            root = _read_marker(dest)  # another process may have finished while we waited
            if root is None:
                root = _extract_locked(archive, extracted, sha)
        finally:
            lock.release()
    return dest / root if root else dest


def _extract_locked(archive: Path, extracted: Path, sha: str) -> str:
    for stale in extracted.glob(f".{sha}.tmp-*"):  # left by a crashed extraction; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    start = time.monotonic()
    size_mb = archive.stat().st_size / 1e6
    logger.info("Extracting %s (%.1f MB) into %s", archive, size_mb, extracted / sha)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha}.tmp-", dir=extracted))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; a shared cache must stay readable
    try:
        count = _extract_into(archive, tmp)
        root = _dataset_root(tmp)
        marker = {"archive": archive.name, "sha256": sha, "root": root, "files": count}
        (tmp / _MARKER).write_text(json.dumps(marker))
        dest = extracted / sha
        if dest.exists():  # an incomplete folder from an older layout or a manual copy
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Extracted %d files from %s in %.1f s", count, archive.name, time.monotonic() - start)
    return root


def _read_marker(dest: Path) -> str | None:
    try:
        return json.loads((dest / _MARKER).read_text())["root"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cached_sha256(archive: Path, by_stat: Path) -> str:
    """sha256 of the archive, remembered per (path, size, mtime, inode) to avoid re-reading it."""
    st = archive.stat()
    key_src = f"{archive.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"
    entry = by_stat / hashlib.sha256(key_src.encode()).hexdigest()
    try:
        known = entry.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{64}", known):
            return known
    except OSError:
        pass
    sha = sha256_file(archive)
    by_stat.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(sha)
    os.replace(tmp, entry)
    return sha


def _dataset_root(folder: Path) -> str:
    visible = [p for p in folder.iterdir() if not is_ignored_name(p.name)]
    if len(visible) == 1 and visible[0].is_dir():
        return visible[0].name
    return ""


# --------------------------------------------------------------------------- member handling


def _extract_into(archive: Path, out: Path) -> int:
    """Write the archive's safe members under `out`; return the number of files written."""
    try:
        if archive_suffix(archive) == ".zip":
            with zipfile.ZipFile(archive) as zf:
                links = _write_members(archive, out, _zip_members(archive, zf))
        else:
            with tarfile.open(archive, "r:*") as tf:
                links = _write_members(archive, out, _tar_members(archive, tf))
    except DatasetError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, RuntimeError, OSError) as e:
        raise DatasetError(
            archive,
            f"cannot read archive ({type(e).__name__}: {e})",
            "the file may be truncated; fetch it again",
        ) from e
    _materialise_links(archive, out, links)
    return sum(1 for p in out.rglob("*") if p.is_file())


class _Member(NamedTuple):
    kind: str  # "dir", "file" or "link"
    name: str  # safe, normalised, relative
    target: str | None = None  # links: the archive-relative name they point at
    opener: Callable[[], BinaryIO] | None = None  # files: opens the member's bytes


def _tar_member(tf: tarfile.TarFile, member: tarfile.TarInfo) -> BinaryIO:
    handle = tf.extractfile(member)
    if handle is None:  # only regular files are opened
        raise OSError(f"{member.name}: not a regular file")
    return cast(BinaryIO, handle)


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> BinaryIO:
    return cast(BinaryIO, zf.open(info))


def _write_members(archive: Path, out: Path, members: Iterator[_Member]) -> list[tuple[str, str]]:
    links: list[tuple[str, str]] = []
    for kind, name, target, opener in members:
        path = out / name
        try:
            if kind == "dir":
                path.mkdir(parents=True, exist_ok=True)
            elif kind == "link":
                links.append((name, target or ""))
            else:
                assert opener is not None  # files always have one
                path.parent.mkdir(parents=True, exist_ok=True)
                with opener() as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:
            raise DatasetError(archive, f"member {name!r} clashes with another member ({e.strerror})") from e
    return links


def _materialise_links(archive: Path, out: Path, links: list[tuple[str, str]]) -> None:
    """Copy each link's target file to the link's name; chains of links resolve over passes."""
    pending = links
    while pending:
        waiting = []
        for name, target in pending:
            src = out / target
            if src.is_dir():
                raise DatasetError(
                    archive,
                    f"link {name!r} points at a folder",
                    "links to folders are not supported; archive the files instead",
                )
            if src.is_file():
                try:
                    (out / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, out / name)
                except OSError as e:
                    raise DatasetError(
                        archive, f"link {name!r} clashes with another member ({e.strerror})"
                    ) from e
            else:
                waiting.append((name, target))
        if len(waiting) == len(pending):  # no progress: the rest point at nothing in the archive
            for name, target in waiting:
                logger.warning(
                    "%s: skipping link %r, its target %r is not in the archive", archive, name, target
                )
            return
        pending = waiting


def _safe_name(archive: Path, raw: str, *, backslash_sep: bool = False) -> str | None:
    """Normalised relative name, None for the archive root itself; refuse unsafe names."""
    name = raw.replace("\\", "/") if backslash_sep else raw
    if name.startswith("/") or _DRIVE.match(name):
        raise DatasetError(
            archive, f"member {raw!r} has an absolute path", "refusing to extract an unsafe archive"
        )
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DatasetError(archive, f"member {raw!r} contains '..'", "refusing to extract an unsafe archive")
    return "/".join(parts) or None


def _link_target(archive: Path, name: str, linkname: str, *, relative_to_member: bool) -> str:
    """Archive-relative name a link points at; refuse links that leave the archive."""
    if linkname.startswith("/") or _DRIVE.match(linkname):
        raise DatasetError(
            archive,
            f"link {name!r} points outside the archive (to {linkname!r})",
            "refusing to extract an unsafe archive",
        )
    base = posixpath.dirname(name) if relative_to_member else ""
    target = posixpath.normpath(posixpath.join(base, linkname))
    if target == ".." or target.startswith("../") or target == ".":
        raise DatasetError(
            archive,
            f"link {name!r} points outside the archive (to {linkname!r})",
            "refusing to extract an unsafe archive",
        )
    return target


def _tar_members(archive: Path, tf: tarfile.TarFile) -> Iterator[_Member]:
    for m in tf:  # streamed: one pass over compressed tars
        name = _safe_name(archive, m.name)
        if name is None:
            continue
        if m.isdir():
            yield _Member("dir", name)
        elif m.isreg():
            yield _Member("file", name, opener=functools.partial(_tar_member, tf, m))
        elif m.issym() or m.islnk():
            target = _link_target(archive, name, m.linkname, relative_to_member=m.issym())
            yield _Member("link", name, target)
        elif m.ischr() or m.isblk() or m.isfifo():
            raise DatasetError(
                archive,
                f"member {m.name!r} is a device file or fifo",
                "refusing to extract an unsafe archive",
            )
        else:
            raise DatasetError(
                archive,
                f"member {m.name!r} has unsupported tar type {m.type!r}",
                "repack the archive with regular files only",
            )


def _zip_members(archive: Path, zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        name = _safe_name(archive, info.filename, backslash_sep=True)
        if name is None:
            continue
        mode = info.external_attr >> 16
        if info.is_dir() or stat.S_ISDIR(mode):
            yield _Member("dir", name)
        elif stat.S_ISLNK(mode):
            linkname = zf.read(info).decode("utf-8", errors="replace")
            yield _Member("link", name, _link_target(archive, name, linkname, relative_to_member=True))
        elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise DatasetError(
                archive,
                f"member {info.filename!r} is a device file or fifo",
                "refusing to extract an unsafe archive",
            )
        else:
            yield _Member("file", name, opener=functools.partial(_zip_member, zf, info))
