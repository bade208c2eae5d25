"""Inputs named one by one: a single image file, or a folder / archive, as one dataset.

Inference takes whatever the user points at: ``resolve_image_inputs`` turns a local image file
into a one-file dataset and anything else (folder, archive, URI) into an
:class:`~foveal.data.folders.ImageFolderDataset` searched recursively.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from foveal.errors import DatasetError

from .images import IMG_EXTENSIONS, is_image_file, load_image


class ImageFilesDataset(Dataset):
    """Given image files; items are ``(transform(image), path as str)``.

    Raises:
        DatasetError: a file is missing or is not an image.
    """

    def __init__(self, paths: Sequence[str | Path], transform: Callable[[Image.Image], Any] | None = None):
        self.files = [Path(p).expanduser() for p in paths]
        if not self.files:
            raise DatasetError("(no files)", "no image files given", "name an image, a folder or an archive")
        for path in self.files:
            if not path.is_file():
                raise DatasetError(path, "not found", "check the path")
            if not is_image_file(path):
                raise DatasetError(
                    path, "is not an image file", f"expected one of {', '.join(IMG_EXTENSIONS)}"
                )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, str]:
        image = load_image(self.files[index])
        item = self.transform(image) if self.transform is not None else image
        return item, str(self.files[index])


def local_image_file(uri: str) -> Path | None:
    """The local path when ``uri`` (a path or ``file://``) names one image file, else None."""
    text = str(uri).strip()
    path = Path(text.removeprefix("file://")).expanduser()
    return path if path.is_file() and is_image_file(path) else None


def resolve_image_inputs(
    uri: str, cache_dir: Path, transform: Callable[[Image.Image], Any] | None = None
) -> Dataset:
    """A dataset of ``(transform(image), path)`` for an image file, a folder or an archive (any URI)."""
    single = local_image_file(uri)
    if single is not None:
        return ImageFilesDataset([single], transform)
    from .folders import ImageFolderDataset
    from .uri import resolve_dataset

    root = resolve_dataset(uri, cache_dir)
    return ImageFolderDataset(root, transform=transform, recursive=True, return_path=True)
