"""extract_archive: formats, dataset root, idempotence, concurrency and refusal of unsafe members."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from foveal.data import DatasetError, extract_archive, scan_images
from foveal.data import archive as archive_mod

FORMATS = [".tar.gz", ".tgz", ".tar", ".zip", ".tar.bz2", ".tar.xz"]


def tar_with(archive: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return archive


def member(name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, linkname
    return info


def _rel(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


@pytest.mark.unit
@pytest.mark.parametrize("suffix", list(FORMATS))
def test_each_format_gives_the_same_files_as_the_folder(pack, image_tree, tmp_path, suffix):
    archive = pack(image_tree, tmp_path / f"images_train{suffix}")
    root = extract_archive(archive, tmp_path / "cache")
    assert root.name == "images"  # the single top-level folder is the dataset root
    assert root.parent.parent == tmp_path / "cache" / "extracted"
    assert _rel(scan_images(root), root) == _rel(scan_images(image_tree), image_tree)
    assert (root / "a0.png").read_bytes() == (image_tree / "a0.png").read_bytes()


@pytest.mark.unit
def test_archive_without_single_top_folder_returns_extraction_root(pack, labeled_tree, tmp_path):
    archive = pack(labeled_tree, tmp_path / "flat.zip", arc_root="")
    root = extract_archive(archive, tmp_path / "cache")
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["cat", "dog", "zebra"]


@pytest.mark.unit
def test_macos_debris_is_ignored_when_finding_the_root(pack, image_tree, tmp_path):
    archive = pack(image_tree, tmp_path / "mac.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("__MACOSX/images/._a0.png", b"resource fork")
    assert extract_archive(archive, tmp_path / "cache").name == "images"


@pytest.mark.unit
def test_second_call_neither_extracts_nor_hashes_again(pack, image_tree, tmp_path, monkeypatch):
    archive = pack(image_tree, tmp_path / "images.tar.gz")
    first = extract_archive(archive, tmp_path / "cache")

    def forbidden(*args, **kwargs):
        raise AssertionError("should have been cached")

    monkeypatch.setattr(archive_mod, "_extract_into", forbidden)
    monkeypatch.setattr(archive_mod, "sha256_file", forbidden)
    assert extract_archive(archive, tmp_path / "cache") == first


@pytest.mark.unit
def test_same_content_elsewhere_shares_the_extraction_and_changes_do_not(pack, image_tree, tmp_path):
    archive = pack(image_tree, tmp_path / "images.tar")
    copy = tmp_path / "copy" / "other_name.tar"
    copy.parent.mkdir()
    copy.write_bytes(archive.read_bytes())
    cache = tmp_path / "cache"
    assert extract_archive(copy, cache) == extract_archive(archive, cache)
    (image_tree / "a0.png").unlink()
    changed = pack(image_tree, tmp_path / "images.tar")  # same path, new content
    os.utime(changed, ns=(1, 1))
    root = extract_archive(changed, cache)
    assert not (root / "a0.png").exists()
    content_folders = [p for p in (cache / "extracted").iterdir() if p.is_dir() and len(p.name) == 64]
    assert len(content_folders) == 2


@pytest.mark.unit
def test_crash_leftovers_are_cleaned(pack, image_tree, tmp_path):
    archive = pack(image_tree, tmp_path / "images.tgz")
    cache = tmp_path / "cache"
    sha = archive_mod.sha256_file(archive)
    stale = cache / "extracted" / f".{sha}.tmp-dead"
    stale.mkdir(parents=True)
    half = cache / "extracted" / sha  # a folder without the .complete marker
    (half / "images").mkdir(parents=True)
    (half / "images" / "partial.png").write_bytes(b"x")
    root = extract_archive(archive, cache)
    assert not stale.exists() and not (root / "partial.png").exists() and (root / "a0.png").exists()


@pytest.mark.integration
def test_two_processes_share_one_extraction(pack, image_tree, tmp_path):
    archive = pack(image_tree, tmp_path / "images.tar.gz")
    cache, log, barrier = tmp_path / "cache", tmp_path / "extractions.log", tmp_path / "barrier"
    barrier.mkdir()
    code = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from foveal.data import archive as a
        real = a._extract_locked
        def counted(*args):
            with open({str(log)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(0.5)  # hold the lock so the other process has to wait
            return real(*args)
        a._extract_locked = counted
        Path({str(barrier)!r}, str(os.getpid())).touch()
        while len(os.listdir({str(barrier)!r})) < 2:
            time.sleep(0.01)
        print(a.extract_archive(Path({str(archive)!r}), Path({str(cache)!r})))
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1] and Path(outputs[0]).is_dir()
    assert len(log.read_text().split()) == 1
    assert not list((cache / "extracted").glob(".*.tmp-*"))


UNSAFE_TARS = {
    "dotdot": [(member("images/../../evil.png"), b"x")],
    "absolute": [(member("/tmp/foveal_evil.png"), b"x")],
    "symlink_escape": [(member("images/link.png", tarfile.SYMTYPE, "../../../etc/passwd"), None)],
    "symlink_absolute": [(member("images/link.png", tarfile.SYMTYPE, "/etc/passwd"), None)],
    "hardlink_escape": [(member("images/hard.png", tarfile.LNKTYPE, "../outside.png"), None)],
    "char_device": [(member("images/dev", tarfile.CHRTYPE), None)],
    "fifo": [(member("images/fifo", tarfile.FIFOTYPE), None)],
    "symlink_to_folder": [
        (member("images/sub", tarfile.DIRTYPE), None),
        (member("images/alias", tarfile.SYMTYPE, "sub"), None),
    ],
}


@pytest.mark.unit
@pytest.mark.parametrize("case", list(UNSAFE_TARS))
def test_unsafe_tar_members_are_refused(tmp_path, case):
    archive = tar_with(tmp_path / f"{case}.tar.gz", [(member("images/ok.png"), b"fine"), *UNSAFE_TARS[case]])
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError) as info:
        extract_archive(archive, cache)
    message = str(info.value)
    assert str(archive) in message and "\n" not in message
    bad_name = UNSAFE_TARS[case][-1][0].name
    assert bad_name.rsplit("/", 1)[-1] in message
    leftovers = [
        p.name
        for p in (cache / "extracted").iterdir()
        if p.name != "by-stat" and not p.name.endswith(".lock")
    ]
    assert leftovers == []  # nothing kept, not even a temporary folder
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/foveal_evil.png").exists()


@pytest.mark.unit
@pytest.mark.parametrize("name", ["../evil.png", "/abs/evil.png", "images/..\\..\\evil.png"])
def test_unsafe_zip_names_are_refused(tmp_path, name):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/ok.png", b"fine")
        zf.writestr(zipfile.ZipInfo(name), b"x")
    with pytest.raises(DatasetError, match="refusing to extract an unsafe archive"):
        extract_archive(archive, tmp_path / "cache")


@pytest.mark.unit
def test_zip_symlink_escaping_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("images/link.png")
        info.create_system = 3
        info.external_attr = 0o120777 << 16  # S_IFLNK
        zf.writestr(info, "../../secret")
    with pytest.raises(DatasetError, match="points outside the archive"):
        extract_archive(archive, tmp_path / "cache")


@pytest.mark.unit
def test_links_inside_are_copied_and_dangling_ones_skipped(tmp_path, caplog):
    archive = tar_with(
        tmp_path / "links.tar.gz",
        [
            (member("images/a.png"), b"payload"),
            (member("images/sub/soft.png", tarfile.SYMTYPE, "../a.png"), None),
            (member("images/hard.png", tarfile.LNKTYPE, "images/a.png"), None),
            (member("images/chain.png", tarfile.SYMTYPE, "sub/soft.png"), None),
            (member("images/dangling.png", tarfile.SYMTYPE, "missing.png"), None),
        ],
    )
    root = extract_archive(archive, tmp_path / "cache")
    for name in ("sub/soft.png", "hard.png", "chain.png"):
        path = root / name
        assert path.is_file() and not path.is_symlink() and path.read_bytes() == b"payload"
    assert not (root / "dangling.png").exists()
    assert "dangling.png" in caplog.text


@pytest.mark.unit
def test_truncated_or_missing_archive(pack, image_tree, tmp_path):
    archive = pack(image_tree, tmp_path / "images.tar.gz")
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DatasetError, match="cannot read archive"):
        extract_archive(archive, tmp_path / "cache")
    with pytest.raises(DatasetError, match="archive not found"):
        extract_archive(tmp_path / "nope.zip", tmp_path / "cache")
    with pytest.raises(DatasetError, match="not a supported archive"):
        extract_archive(image_tree / "a0.png", tmp_path / "cache")
