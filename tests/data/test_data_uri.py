"""resolve_dataset: local paths, file://, s3:// (real moto server on loopback) and http://."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from urllib.parse import quote

import fsspec
import pytest

from foveal.data import DatasetError, resolve_dataset, scan_images


def _listing(root: Path) -> list[tuple[str, bytes]]:
    return [(p.relative_to(root).as_posix(), p.read_bytes()) for p in scan_images(root)]


# --------------------------------------------------------------------------- local


@pytest.mark.unit
def test_local_folder_is_used_in_place(image_tree, tmp_path):
    assert resolve_dataset(image_tree, tmp_path / "cache") == image_tree
    assert resolve_dataset(str(image_tree), tmp_path / "cache") == image_tree
    assert not (tmp_path / "cache").exists()  # nothing copied


@pytest.mark.unit
def test_local_archive_and_folder_give_the_same_files(pack, image_tree, tmp_path):
    archive = pack(image_tree, tmp_path / "images_train.tar.gz")
    root = resolve_dataset(archive, tmp_path / "cache")
    assert _listing(root) == _listing(image_tree)


@pytest.mark.unit
def test_file_uris(pack, image_tree, tmp_path):
    spaced = tmp_path / "with space"
    shutil.copytree(image_tree, spaced)
    archive = pack(image_tree, tmp_path / "images.zip")
    cache = tmp_path / "cache"
    assert resolve_dataset(f"file://{quote(str(spaced))}", cache) == spaced
    assert resolve_dataset(f"file://localhost{image_tree}", cache) == image_tree
    assert _listing(resolve_dataset(f"file://{archive}", cache)) == _listing(image_tree)


@pytest.mark.unit
def test_missing_folder_suggests_the_archive_and_vice_versa(pack, image_tree, tmp_path):
    archive = pack(image_tree, tmp_path / "images_train.tar.gz")
    with pytest.raises(DatasetError, match=r"not found; did you mean .*images_train\.tar\.gz\?") as info:
        resolve_dataset(tmp_path / "images_train", tmp_path / "cache")
    assert str(tmp_path / "images_train") in str(info.value)
    archive.rename(tmp_path / "images_train.zip")
    with pytest.raises(DatasetError, match=r"did you mean .*images_train\.zip\?"):
        resolve_dataset(f"file://{tmp_path}/images_train.tgz", tmp_path / "cache")
    with pytest.raises(DatasetError, match=r"did you mean .*/images\?"):
        resolve_dataset(tmp_path / "images.tar.gz", tmp_path / "cache")


@pytest.mark.unit
def test_missing_path_typo_and_missing_parent(image_tree, tmp_path):
    with pytest.raises(DatasetError, match=r"did you mean .*/images\?"):
        resolve_dataset(tmp_path / "imagse", tmp_path / "cache")
    with pytest.raises(DatasetError, match="does not exist either"):
        resolve_dataset(tmp_path / "no" / "such" / "images", tmp_path / "cache")


@pytest.mark.unit
def test_plain_file_and_unknown_scheme_are_errors(image_tree, tmp_path):
    with pytest.raises(DatasetError, match="found a .png file; archives must end in"):
        resolve_dataset(image_tree / "a0.png", tmp_path / "cache")
    with pytest.raises(DatasetError, match="unsupported URI scheme ftp://"):
        resolve_dataset("ftp://host/x.tar.gz", tmp_path / "cache")


@pytest.mark.unit
def test_missing_optional_dependency_names_the_extra(tmp_path, monkeypatch):
    def no_s3fs(*args, **kwargs):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec, "filesystem", no_s3fs)
    with pytest.raises(DatasetError) as info:
        resolve_dataset("s3://bucket/images.tar.gz", tmp_path / "cache")
    assert str(info.value) == (
        "s3://bucket/images.tar.gz: reading s3:// needs the optional package s3fs, "
        "which is not installed; run pip install 'foveal[s3]'"
    )


# --------------------------------------------------------------------------- S3


@pytest.mark.integration
def test_s3_archive_is_downloaded_once_and_refreshed_on_change(pack, s3, image_tree, tmp_path, caplog):
    s3.create_bucket(Bucket="arch")
    archive = pack(image_tree, tmp_path / "images_train.tar.gz")
    s3.upload_file(str(archive), "arch", "sets/images_train.tar.gz")
    cache = tmp_path / "cache"
    root = resolve_dataset("s3://arch/sets/images_train.tar.gz", cache)
    assert _listing(root) == _listing(image_tree)
    caplog.clear()  # only what the second call logs
    with caplog.at_level(logging.INFO, logger="foveal.data"):
        assert resolve_dataset("s3://arch/sets/images_train.tar.gz", cache) == root
    assert "Downloading" not in caplog.text and "Extracting" not in caplog.text
    (image_tree / "a0.png").unlink()
    s3.upload_file(
        str(pack(image_tree, tmp_path / "v2.tar.gz", arc_root="images")), "arch", "sets/images_train.tar.gz"
    )
    updated = resolve_dataset("s3://arch/sets/images_train.tar.gz", cache)
    assert updated != root and _listing(updated) == _listing(image_tree)


@pytest.mark.integration
def test_s3_folder_is_mirrored_and_synced(s3, labeled_tree, tmp_path, caplog):
    s3.create_bucket(Bucket="folders")
    for path in labeled_tree.rglob("*.png"):
        s3.upload_file(str(path), "folders", f"train/{path.relative_to(labeled_tree).as_posix()}")
    s3.put_object(Bucket="folders", Key="train/README.txt", Body=b"not an image")
    cache = tmp_path / "cache"
    root = resolve_dataset("s3://folders/train", cache)
    assert _listing(root) == _listing(labeled_tree)
    assert not (root / "README.txt").exists()
    assert resolve_dataset("s3://folders/train/", cache) == root  # the same folder, with or without "/"
    s3.delete_object(Bucket="folders", Key="train/cat/cat0.png")
    s3.upload_file(str(labeled_tree / "dog" / "dog0.png"), "folders", "train/dog/new.png")
    caplog.clear()  # only what the second call logs
    with caplog.at_level(logging.INFO, logger="foveal.data"):
        again = resolve_dataset("s3://folders/train", cache)
    assert again == root and "(1 fetched)" in caplog.text
    names = [rel for rel, _ in _listing(root)]
    assert "cat/cat0.png" not in names and "dog/new.png" in names


@pytest.mark.integration
def test_s3_missing_key_suggests_the_archive(pack, s3, image_tree, tmp_path, monkeypatch, moto_endpoint):
    s3.create_bucket(Bucket="miss")
    s3.upload_file(str(pack(image_tree, tmp_path / "x.tar.gz")), "miss", "images_val.tar.gz")
    monkeypatch.delenv("FOVEAL_S3_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)  # the standard variable works too
    with pytest.raises(
        DatasetError, match=r"^s3://miss/images_val: not found; did you mean s3://miss/images_val\.tar\.gz\?$"
    ):
        resolve_dataset("s3://miss/images_val", tmp_path / "cache")


@pytest.mark.integration
def test_s3_prefix_without_images_suggests_archive(pack, s3, image_tree, tmp_path):
    s3.create_bucket(Bucket="noimg")
    s3.upload_file(str(pack(image_tree, tmp_path / "x.tar.gz")), "noimg", "sets/images_train.tar.gz")
    with pytest.raises(
        DatasetError,
        match=r"no images \(found 1 files, none an image\); point at the archive s3://noimg/sets/images_train\.tar\.gz",
    ):
        resolve_dataset("s3://noimg/sets", tmp_path / "cache")


# --------------------------------------------------------------------------- HTTP


@pytest.mark.integration
def test_http_archive(pack, http_root, image_tree, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    base, served = http_root
    pack(image_tree, served / "images_train.tar.gz")
    cache = tmp_path / "cache"
    root = resolve_dataset(f"{base}/images_train.tar.gz", cache)
    assert _listing(root) == _listing(image_tree)
    caplog.clear()  # only what the second call logs
    with caplog.at_level(logging.INFO, logger="foveal.data"):
        assert resolve_dataset(f"{base}/images_train.tar.gz", cache) == root
    assert "Downloading" not in caplog.text  # Last-Modified and size unchanged
    with pytest.raises(DatasetError, match=r"not found; did you mean .*/images_train\.tar\.gz\?"):
        resolve_dataset(f"{base}/images_train", cache)


@pytest.mark.integration
def test_http_folder_listing_is_mirrored(http_root, labeled_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    base, served = http_root
    shutil.copytree(labeled_tree, served / "labeled")
    root = resolve_dataset(f"{base}/labeled/", tmp_path / "cache")
    assert _listing(root) == _listing(labeled_tree)
