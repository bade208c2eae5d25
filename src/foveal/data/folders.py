"""Folder datasets: unlabeled images (self-supervised layout) and class subfolders.

Both check every file when built (`verify_images`), so corrupt files are skipped, counted and
reported once instead of failing a training run hours in. A file that still fails to load later
is skipped in favour of the next sample and counted too.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from foveal.errors import DatasetError

from .images import (
    IMG_EXTENSIONS,
    _existing_folder,
    _suffix,
    describe_folder,
    is_ignored_name,
    load_image,
    scan_images,
    verify_images,
)

logger = logging.getLogger(__name__)

_SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing"}


class _CheckedImageFiles(Dataset):
    """Shared part of the folder datasets: verified file list and skip-on-corrupt loading.

    Counters (`num_corrupt`, `corrupt_files`) include files found corrupt while loading; in
    DataLoader workers those increments happen in the worker's copy and are only logged.
    """

    _max_skips = 50

    def __init__(self, root: Path, transform: Callable[[Image.Image], Any] | None):
        self.root = root
        self.transform = transform
        self.files: list[Path] = []
        self.corrupt_files: list[Path] = []
        self._bad: set[int] = set()

    @property
    def num_corrupt(self) -> int:
        return len(self.corrupt_files)

    def _keep_readable(self, paths: list[Path], verify: bool) -> list[int]:
        """Verify `paths`; remember the corrupt ones; return the indices of the good ones."""
        reasons = verify_images(paths) if verify else [None] * len(paths)
        keep = [i for i, r in enumerate(reasons) if r is None]
        self.corrupt_files = [p for p, r in zip(paths, reasons, strict=True) if r is not None]
        if self.corrupt_files:
            names = ", ".join(str(p.relative_to(self.root)) for p in self.corrupt_files[:5])
            more = ", ..." if len(self.corrupt_files) > 5 else ""
            logger.warning(
                "%s: skipping %d corrupt image(s) of %d: %s%s",
                self.root,
                self.num_corrupt,
                len(paths),
                names,
                more,
            )
        if not keep and paths:
            first, reason = paths[0].name, reasons[0]
            raise DatasetError(
                self.root,
                f"all {len(paths)} images are unreadable (first: {first}: {reason})",
                "replace the files",
            )
        return keep

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> tuple[Image.Image, int]:
        """Load sample `index`, or the next readable one if it is corrupt; return it and its index."""
        n = len(self.files)
        if not -n <= index < n:  # plain iteration (`for x in dataset`) stops on IndexError
            raise IndexError(f"index {index} out of range for {n} images")
        for step in range(min(n, self._max_skips)):
            i = (index + step) % n
            if i in self._bad:
                continue
            try:
                return load_image(self.files[i]), i
            except DatasetError as e:
                self._bad.add(i)
                self.corrupt_files.append(self.files[i])
                logger.warning("Skipping corrupt image (%d so far in this process): %s", self.num_corrupt, e)
        raise DatasetError(
            self.root,
            f"no readable image among {self._max_skips} samples from index {index}",
            "check the files",
        )


class ImageFolderDataset(_CheckedImageFiles):
    """Unlabeled images under a folder (self-supervised layout); items are `transform(image)`.

    Args:
        root: folder of images (subfolders are searched when `recursive`).
        transform: callable applied to the RGB PIL image; None returns the image.
        recursive: also take images from subfolders.
        verify: decode-check every file now and skip corrupt ones (see `verify_images`).
        return_path: items are `(transform(image), path as str)`, e.g. for inference reports.

    Raises:
        DatasetError: the folder is missing or has no readable image.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], Any] | None = None,
        recursive: bool = True,
        verify: bool = True,
        return_path: bool = False,
    ):
        super().__init__(_existing_folder(root), transform)
        paths = scan_images(self.root, recursive=recursive)
        if not paths:
            self._raise_no_images(recursive)
        self.return_path = return_path
        self.files = [paths[i] for i in self._keep_readable(paths, verify)]
        logger.info("%s: %d images", self.root, len(self.files))

    def _raise_no_images(self, recursive: bool) -> None:
        found = describe_folder(self.root)
        if not recursive and scan_images(self.root, recursive=True):
            raise DatasetError(
                self.root,
                f"no images directly in the folder ({found})",
                "the images are in subfolders; use recursive=True",
            )
        archives = [
            p.name for p in self.root.iterdir() if _suffix(p.name) in (".tar.gz", ".tgz", ".tar", ".zip")
        ]
        hint = (
            f"point at the archive {archives[0]} instead"
            if archives
            else f"expected image files ({', '.join(IMG_EXTENSIONS)})"
        )
        raise DatasetError(self.root, f"no images ({found})", hint)

    def __getitem__(self, index: int) -> Any:
        image, used = self._load(index)
        item = self.transform(image) if self.transform is not None else image
        # The path of the image actually returned: a corrupt one is replaced by the next.
        return (item, str(self.files[used])) if self.return_path else item


class LabeledImageFolderDataset(_CheckedImageFiles):
    """Images in class subfolders, `root/<class>/**/<image>`; items are `(transform(image), label)`.

    Labels index `classes` (sorted folder names unless `classes` is given, e.g. the train set's
    classes when loading val/test, so the same name gets the same index).

    Raises:
        DatasetError: no class subfolders, a class folder not in `classes`, or no readable image.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], Any] | None = None,
        classes: Sequence[str] | None = None,
        verify: bool = True,
    ):
        super().__init__(_existing_folder(root), transform)
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not is_ignored_name(d.name))
        self._check_class_folders(found, classes)
        self.classes = list(classes) if classes is not None else found
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        samples = self._scan_classes(found)
        keep = self._keep_readable([p for p, _ in samples], verify)
        self.samples = [samples[i] for i in keep]
        self.files = [p for p, _ in self.samples]
        self.targets = [label for _, label in self.samples]
        logger.info("%s: %d images in %d classes", self.root, len(self.samples), len(self.classes))

    def _check_class_folders(self, found: list[str], classes: Sequence[str] | None) -> None:
        if not found:
            loose = scan_images(self.root, recursive=False)
            if loose:
                raise DatasetError(
                    self.root,
                    f"no class subfolders, but {len(loose)} images directly in the folder",
                    "this is the unlabeled layout; put each class's images in root/<class>/ or use ImageFolderDataset",
                )
            raise DatasetError(
                self.root,
                f"no class subfolders ({describe_folder(self.root)})",
                "expected root/<class>/<image> files",
            )
        if set(found) <= _SPLIT_NAMES:
            raise DatasetError(
                self.root,
                f"the subfolders are splits ({', '.join(found)}), not classes",
                f"point at one of them, e.g. {self.root / found[0]}",
            )
        if classes is not None:
            unknown = [c for c in found if c not in set(classes)]
            if unknown:
                known = ", ".join(list(classes)[:10]) + (", ..." if len(classes) > 10 else "")
                raise DatasetError(
                    self.root,
                    f"class folder(s) not among the {len(classes)} known classes: {', '.join(unknown[:10])}",
                    f"known classes are {known}; rename or remove these folders",
                )

    def _scan_classes(self, found: list[str]) -> list[tuple[Path, int]]:
        samples: list[tuple[Path, int]] = []
        empty = []
        for name in found:
            paths = scan_images(self.root / name, recursive=True)
            empty += [] if paths else [name]
            samples += [(p, self.class_to_idx[name]) for p in paths]
        if not samples:
            raise DatasetError(
                self.root,
                f"{len(found)} class folders but no images in them ({describe_folder(self.root)})",
                f"expected image files ({', '.join(IMG_EXTENSIONS)}) in root/<class>/",
            )
        if empty:
            logger.warning(
                "%s: %d class folder(s) without images: %s", self.root, len(empty), ", ".join(empty[:10])
            )
        loose = scan_images(self.root, recursive=False)
        if loose:
            logger.warning("%s: ignoring %d image(s) outside the class folders", self.root, len(loose))
        return samples

    def class_counts(self) -> dict[str, int]:
        """Number of (readable) images per class name, including classes with none."""
        counts = Counter(self.targets)
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, used = self._load(index)
        label = self.targets[used]
        return (self.transform(image) if self.transform is not None else image), label
