"""ImageFolderDataset and LabeledImageFolderDataset: layouts, corrupt files, errors."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from torch.utils.data import DataLoader

from foveal.data import (
    DatasetError,
    ImageFolderDataset,
    LabeledImageFolderDataset,
    build_eval_transform,
)

pytestmark = pytest.mark.unit


def _add_corrupt_files(root, write_image):
    good = write_image(root / "big.jpg", size=64, fmt="JPEG")
    (root / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "random.png").write_bytes(os.urandom(300))


def test_unlabeled_folder_skips_and_reports_corrupt_files(image_tree, write_image, caplog):
    _add_corrupt_files(image_tree, write_image)
    with caplog.at_level(logging.WARNING, logger="foveal.data"):
        ds = ImageFolderDataset(image_tree)
    assert len(ds) == 7  # 6 images + big.jpg; notes.txt and the hidden file are not images
    assert ds.num_corrupt == 2
    assert sorted(p.name for p in ds.corrupt_files) == ["random.png", "truncated.jpg"]
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "2 corrupt" in warning and "random.png" in warning
    assert ds[0].mode == "RGB"


def test_corrupt_file_found_while_loading_is_skipped_and_counted(image_tree):
    ds = ImageFolderDataset(image_tree, verify=False)
    ds.files[0].write_bytes(b"broken after the dataset was built")
    image = ds[0]
    assert image.size == (16, 16) and ds.num_corrupt == 1 and ds.corrupt_files == [ds.files[0]]
    ds[0]
    assert ds.num_corrupt == 1  # a known bad file is not re-read or re-counted
    assert len(list(ds)) == len(ds)  # iteration ends: out-of-range indices raise IndexError
    with_paths = ImageFolderDataset(image_tree, verify=False, return_path=True)
    assert with_paths[0][1] == str(ds.files[1])  # the path of the image actually returned


def test_transform_and_dataloader(image_tree):
    ds = ImageFolderDataset(image_tree, transform=build_eval_transform(8, crop_pct=1.0))
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch.shape == (4, 3, 8, 8) and batch.dtype == torch.float32


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="folder is empty") as info:
        ImageFolderDataset(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_folder_without_images_names_what_it_found(tmp_path):
    for name in ("a.txt", "b.csv", "c.txt"):
        (tmp_path / name).write_text("x")
    with pytest.raises(DatasetError, match=r"found 3 files, none an image \(extensions seen: \.csv, \.txt\)"):
        ImageFolderDataset(tmp_path)


def test_folder_holding_an_archive_suggests_it(tmp_path):
    (tmp_path / "images_train.tar.gz").write_bytes(b"x")
    with pytest.raises(DatasetError, match="point at the archive images_train.tar.gz"):
        ImageFolderDataset(tmp_path)


def test_all_corrupt_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"nope")
    with pytest.raises(DatasetError, match="all 1 images are unreadable"):
        ImageFolderDataset(tmp_path)


def test_non_recursive_suggests_recursive(labeled_tree):
    assert len(ImageFolderDataset(labeled_tree)) == 6  # SSL on a labeled tree uses every image
    with pytest.raises(DatasetError, match="recursive=True"):
        ImageFolderDataset(labeled_tree, recursive=False)


def test_labeled_folder(labeled_tree):
    ds = LabeledImageFolderDataset(labeled_tree)
    assert ds.classes == ["cat", "dog", "zebra"]
    assert ds.class_to_idx == {"cat": 0, "dog": 1, "zebra": 2}
    assert ds.targets == [0, 0, 0, 1, 1, 2]
    assert ds.class_counts() == {"cat": 3, "dog": 2, "zebra": 1}
    image, label = ds[3]
    assert image.mode == "RGB" and label == 1 and ds.samples[3][0].parent.name == "dog"


def test_labeled_with_train_classes(labeled_tree):
    classes = ["ant", "cat", "dog", "zebra"]  # e.g. the train set's; 'ant' has no folder here
    ds = LabeledImageFolderDataset(labeled_tree, classes=classes)
    assert ds.class_to_idx["cat"] == 1 and ds.targets[0] == 1
    assert ds.class_counts() == {"ant": 0, "cat": 3, "dog": 2, "zebra": 1}


def test_labeled_unknown_class_is_an_error(labeled_tree):
    with pytest.raises(DatasetError, match="not among the 2 known classes: zebra") as info:
        LabeledImageFolderDataset(labeled_tree, classes=["cat", "dog"])
    assert str(labeled_tree) in str(info.value)


def test_labeled_on_flat_folder_suggests_unlabeled_layout(image_tree):
    with pytest.raises(DatasetError, match="unlabeled layout"):
        LabeledImageFolderDataset(image_tree)


def test_labeled_on_split_parent_suggests_a_split(tmp_path, write_image):
    for split in ("train", "val"):
        write_image(tmp_path / split / "cat" / "x.png")
    with pytest.raises(DatasetError, match="splits .*point at one of them"):
        LabeledImageFolderDataset(tmp_path)


def test_labeled_class_folders_without_images(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="1 class folders but no images"):
        LabeledImageFolderDataset(tmp_path)


def test_labeled_skips_corrupt(labeled_tree, write_image):
    (labeled_tree / "dog" / "bad.png").write_bytes(b"\x89PNG garbage")
    ds = LabeledImageFolderDataset(labeled_tree)
    assert ds.num_corrupt == 1 and ds.class_counts()["dog"] == 2 and len(ds) == 6
