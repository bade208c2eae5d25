"""make_demo_dataset: layout, determinism, balance, reproducible archives, loading round trip."""

from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from foveal.data import (
    SHAPE_CLASSES,
    DatasetError,
    ImageFolderDataset,
    LabeledImageFolderDataset,
    extract_archive,
    load_image,
    make_demo_dataset,
    resolve_dataset,
)

SMALL = dict(num_train=48, num_val=16, num_test=8, image_size=32, num_classes=6)


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), seed=3, **SMALL)


@pytest.mark.unit
def test_layout_and_returned_names(demo):
    expected = {
        f"{kind}_{split}{ext}"
        for kind in ("images", "labeled")
        for split in ("train", "val", "test")
        for ext in ("", ".tar.gz")
    } | {"dataset.json"}
    assert set(demo) == expected and all(p.exists() for p in demo.values())
    assert len(list(demo["images_train"].iterdir())) == 48
    assert sorted(p.name for p in demo["labeled_val"].iterdir()) == sorted(SHAPE_CLASSES[:6])
    meta = json.loads(demo["dataset.json"].read_text())
    assert meta["classes"] == list(SHAPE_CLASSES[:6]) and meta["splits"]["train"]["num_images"] == 48
    assert {k: meta[k] for k in SMALL} == SMALL and meta["seed"] == 3 and meta["generator_version"] >= 1


@pytest.mark.unit
def test_same_images_in_both_layouts_and_balanced_classes(demo):
    labeled = LabeledImageFolderDataset(demo["labeled_train"])
    counts = labeled.class_counts()
    assert sum(counts.values()) == 48 and max(counts.values()) - min(counts.values()) <= 1
    meta = json.loads(demo["dataset.json"].read_text())
    assert meta["splits"]["train"]["class_counts"] == counts
    for path, _ in labeled.samples[:10]:
        assert path.read_bytes() == (demo["images_train"] / path.name).read_bytes()
    image = ImageFolderDataset(demo["images_test"])[0]
    assert image.size == (32, 32) and image.mode == "RGB"


@pytest.mark.integration
def test_same_seed_gives_identical_bytes_whatever_the_workers(demo, tmp_path):
    again = make_demo_dataset(tmp_path / "again", seed=3, num_workers=2, **SMALL)
    first_root, second_root = demo["dataset.json"].parent, again["dataset.json"].parent
    assert _all_bytes(first_root) == _all_bytes(second_root)  # images, archives and dataset.json
    other = make_demo_dataset(
        tmp_path / "other",
        seed=4,
        num_train=4,
        num_val=0,
        num_test=0,
        image_size=32,
        num_classes=6,
        archives=False,
    )
    assert (
        other["images_train"].joinpath("img_000000.png").read_bytes()
        != demo["images_train"].joinpath("img_000000.png").read_bytes()
    )
    assert "images_val" not in other and "images_train.tar.gz" not in other


@pytest.mark.unit
def test_archives_are_reproducible_and_load_like_the_folders(demo, tmp_path):
    archive = demo["labeled_train.tar.gz"]
    assert gzip.open(archive).read(1) and archive.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime 0
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names[0] == "labeled_train" and names == sorted(names)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(1_704_067_200, 0, 0, "", "")}
    root = extract_archive(archive, tmp_path / "cache")
    assert root.name == "labeled_train"
    assert (
        LabeledImageFolderDataset(root).class_counts()
        == LabeledImageFolderDataset(demo["labeled_train"]).class_counts()
    )
    flat = resolve_dataset(demo["images_val.tar.gz"], tmp_path / "cache")
    assert _all_bytes(flat) == _all_bytes(demo["images_val"])


@pytest.mark.unit
def test_sizes_formats_and_argument_checks(tmp_path):
    out = make_demo_dataset(
        tmp_path / "a",
        num_train=3,
        num_val=0,
        num_test=0,
        image_size=20,
        num_classes=12,
        image_format="jpg",
        archives=False,
    )
    image = load_image(out["images_train"] / "img_000000.jpg")
    assert image.size == (20, 20)
    with pytest.raises(DatasetError, match="already holds a dataset"):
        make_demo_dataset(tmp_path / "a", num_train=3, num_val=0, num_test=0)
    out = make_demo_dataset(
        tmp_path / "a", num_train=2, num_val=0, num_test=0, image_size=100, archives=False, overwrite=True
    )
    assert [p.name for p in sorted(out["images_train"].iterdir())] == ["img_000000.png", "img_000001.png"]
    assert load_image(out["images_train"] / "img_000001.png").size == (100, 100)
    for bad in (
        dict(num_classes=13),
        dict(image_size=4),
        dict(num_train=0, num_val=0, num_test=0),
        dict(image_format="gif"),
    ):
        with pytest.raises(DatasetError):
            make_demo_dataset(tmp_path / "bad", **bad)


@pytest.mark.unit
def test_raw_pixels_classify_poorly(tmp_path):
    """Nuisances dominate pixel statistics: nearest class mean on raw pixels stays near chance."""
    out = make_demo_dataset(
        tmp_path, num_train=240, num_val=80, num_test=0, image_size=24, num_classes=4, archives=False
    )

    def arrays(split):
        ds = LabeledImageFolderDataset(out[f"labeled_{split}"], verify=False)
        return np.stack([np.asarray(load_image(p), dtype=np.float32).ravel() for p in ds.files]), np.array(
            ds.targets
        )

    x_train, y_train = arrays("train")
    x_val, y_val = arrays("val")
    means = np.stack([x_train[y_train == c].mean(0) for c in range(4)])
    predicted = np.argmin(((x_val[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == y_val).mean() < 0.45  # chance is 0.25


@pytest.mark.unit
def test_background_kind_names_the_texture_the_image_was_drawn_with():
    from foveal.data.synthetic import BACKGROUND_KINDS, background_kind, render_demo_image

    kinds = [background_kind(3, "train", i) for i in range(80)]
    assert set(kinds) == set(range(len(BACKGROUND_KINDS)))  # every kind occurs
    assert kinds == [background_kind(3, "train", i) for i in range(80)]  # deterministic

    def border_spread(i: int) -> float:  # pixel spread along the edges, where the shape rarely is
        a = np.asarray(render_demo_image(3, "train", i, 0, 32), dtype=np.float32)
        edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        return float(edge.std(axis=0).mean())

    solid = [border_spread(i) for i, k in enumerate(kinds) if BACKGROUND_KINDS[k] == "solid"]
    checker = [border_spread(i) for i, k in enumerate(kinds) if BACKGROUND_KINDS[k] == "checker"]
    assert np.median(solid) < np.median(checker)
