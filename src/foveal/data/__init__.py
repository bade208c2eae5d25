"""Datasets for Foveal: URIs, safe archive extraction, image folders, transforms, synthetic data.

Public API (all importable from `foveal.data`):

- `resolve_dataset(uri, cache_dir)`: local path, ``file://``, ``s3://`` or ``http(s)://`` URI of
  a folder or archive -> local folder (`uri.py`); `default_cache_dir()`.
- `extract_archive(archive, cache_dir)`: safe, content-addressed, once-only extraction (`archive.py`).
- `load_image`, `scan_images`, `verify_images`, `IMG_EXTENSIONS` (`images.py`);
  `ImageFolderDataset`, `LabeledImageFolderDataset` (`folders.py`).
- Transforms without torchvision and `build_train_transform` / `build_eval_transform` (`transforms.py`);
  `RandAugment` from a timm-style policy string (`randaugment.py`).
- `make_demo_dataset`: synthetic shape datasets (`synthetic.py`).
- `DatasetError`: the one error type; its message is one line.

Names are loaded on first use, so importing `foveal.data` (or its torch-free modules, as process
pool workers do) does not import torch until a dataset or transform is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from foveal.errors import DatasetError

_EXPORTS = {
    "ARCHIVE_SUFFIXES": "archive",
    "extract_archive": "archive",
    "is_archive": "archive",
    "IMG_EXTENSIONS": "images",
    "is_image_file": "images",
    "load_image": "images",
    "scan_images": "images",
    "verify_images": "images",
    "ImageFolderDataset": "folders",
    "LabeledImageFolderDataset": "folders",
    "resolve_dataset": "uri",
    "default_cache_dir": "uri",
    "IMAGENET_DEFAULT_MEAN": "transforms",
    "IMAGENET_DEFAULT_STD": "transforms",
    "Compose": "transforms",
    "RandomResizedCrop": "transforms",
    "Resize": "transforms",
    "CenterCrop": "transforms",
    "RandomHorizontalFlip": "transforms",
    "ColorJitter": "transforms",
    "RandomGrayscale": "transforms",
    "GaussianBlur": "transforms",
    "Solarize": "transforms",
    "ToTensor": "transforms",
    "Normalize": "transforms",
    "build_train_transform": "transforms",
    "build_eval_transform": "transforms",
    "RandAugment": "randaugment",
    "SHAPE_CLASSES": "synthetic",
    "make_demo_dataset": "synthetic",
    "make_loader": "loader",
}

__all__ = [
    "ARCHIVE_SUFFIXES",
    "CenterCrop",
    "ColorJitter",
    "Compose",
    "DatasetError",
    "GaussianBlur",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "IMG_EXTENSIONS",
    "ImageFolderDataset",
    "LabeledImageFolderDataset",
    "Normalize",
    "RandAugment",
    "RandomGrayscale",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "SHAPE_CLASSES",
    "Solarize",
    "ToTensor",
    "build_eval_transform",
    "build_train_transform",
    "default_cache_dir",
    "extract_archive",
    "is_archive",
    "is_image_file",
    "load_image",
    "make_demo_dataset",
    "make_loader",
    "resolve_dataset",
    "scan_images",
    "verify_images",
]

if TYPE_CHECKING:  # static tools see plain imports
    from .archive import ARCHIVE_SUFFIXES, extract_archive, is_archive
    from .folders import ImageFolderDataset, LabeledImageFolderDataset
    from .images import IMG_EXTENSIONS, is_image_file, load_image, scan_images, verify_images
    from .loader import make_loader
    from .randaugment import RandAugment
    from .synthetic import SHAPE_CLASSES, make_demo_dataset
    from .transforms import (
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        CenterCrop,
        ColorJitter,
        Compose,
        GaussianBlur,
        Normalize,
        RandomGrayscale,
        RandomHorizontalFlip,
        RandomResizedCrop,
        Resize,
        Solarize,
        ToTensor,
        build_eval_transform,
        build_train_transform,
    )
    from .uri import default_cache_dir, resolve_dataset


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
