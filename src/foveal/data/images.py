"""Image files and folder datasets.

`load_image` turns every common PIL mode into 8-bit RGB, with fixed rules so a dataset mixing
modes reads consistently:

- ``L``, ``1``, ``CMYK``, ``YCbCr``: PIL's own conversion.
- ``RGBA``, ``LA``, ``PA`` and palette/grey/RGB images with a transparency key: composited on
  black (RGB times alpha). Fully transparent pixels often hold arbitrary colours; compositing
  makes them all the same black instead of leaking whatever the encoder left there.
- 16-bit (``I;16*``) and 32-bit integer (``I``) greys: scaled from the full 16-bit range,
  ``round(v * 255 / 65535)`` (``I`` is clipped to 0..65535 first). PIL's own conversion clips
  at 255 and turns most 16-bit images white. The scale is fixed, not per image, so 12-bit data
  looks dark but consistent.
- ``F`` (float) greys: taken as 0..1 if no value exceeds 1, else as 0..255; then clipped.

EXIF orientation is not applied, as in torchvision's and TAO's loaders, so features match
models pretrained with them.

This module does not import torch, so archive extraction and synthetic-data workers start fast;
the folder datasets live in `folders.py` (and are re-exported here by name).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from foveal.errors import DatasetError

logger = logging.getLogger(__name__)

#: Image file suffixes recognised by `scan_images` (compared lower-case).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def is_ignored_name(name: str) -> bool:
    """Hidden entries and macOS archive debris (`__MACOSX/`, `._x.jpg`) are never data."""
    return name.startswith(".") or name == "__MACOSX"


def is_image_file(path: str | Path) -> bool:
    """True if the file name has an image suffix and is not hidden."""
    name = Path(path).name
    return not is_ignored_name(name) and Path(name).suffix.lower() in IMG_EXTENSIONS


def load_image(path: str | Path) -> Image.Image:
    """Read an image file as 8-bit RGB (conversion rules in the module docstring).

    Raises:
        DatasetError: the file is missing, corrupt, truncated or of an unsupported mode.
    """
    try:
        with Image.open(path) as im:
            im.load()
            rgb = _to_rgb(im)
            return im.copy() if rgb is im else rgb  # `im` is unusable once the `with` closes it
    except _READ_ERRORS as e:
        raise DatasetError(
            path, f"cannot read image ({type(e).__name__}: {e})", "replace or delete the file"
        ) from e


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _SIXTEEN_BIT or mode == "I":
        values = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        return _grey_to_rgb(((values * 255 + 32767) // 65535).astype(np.uint8))
    if mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float32))
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        return _grey_to_rgb(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))
    if "A" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        black = Image.new("RGB", rgba.size, (0, 0, 0))
        black.paste(rgba, mask=rgba.getchannel("A"))  # alpha-blend onto black
        return black
    return im.convert("RGB")


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(grey, mode="L").convert("RGB")


def scan_images(root: str | Path, recursive: bool = True) -> list[Path]:
    """List image files under `root`, sorted by their relative path parts (deterministic).

    Hidden files and folders are skipped. Symlinked folders are followed once (cycles are cut).

    Raises:
        DatasetError: `root` does not exist or is not a folder.
    """
    root = _existing_folder(root)
    found: list[Path] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = [d for d in dirnames if not is_ignored_name(d)] if recursive else []
        found.extend(Path(dirpath) / f for f in filenames if is_image_file(f))
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _existing_folder(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(root, "folder not found", "check the path")
    if not root.is_dir():
        raise DatasetError(
            root,
            "expected a folder of images, found a file",
            "point at the folder (or pass the archive to resolve_dataset)",
        )
    return root


def describe_folder(root: Path, limit: int = 100_000) -> str:
    """What a folder holds, for error messages: 'folder is empty', 'found 3 files, ...'."""
    files: list[str] = []
    subfolders = 0
    for _, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not is_ignored_name(d)]
        subfolders += len(dirnames)
        files.extend(f for f in filenames if not is_ignored_name(f))
        if len(files) >= limit:
            break
    if not files:
        return f"found {subfolders} subfolders and no files" if subfolders else "folder is empty"
    kinds = Counter(_suffix(f) for f in files)
    seen = ", ".join(sorted(kinds)[:8]) + (", ..." if len(kinds) > 8 else "")
    images = sum(n for k, n in kinds.items() if k in IMG_EXTENSIONS)
    if images:
        return f"found {len(files)} files, {images} of them images"
    return f"found {len(files)} files, none an image (extensions seen: {seen})"


def _suffix(name: str) -> str:
    lower = name.lower()
    for double in (".tar.gz", ".tar.bz2", ".tar.xz"):
        if lower.endswith(double):
            return double
    return Path(lower).suffix or "(none)"


def verify_images(paths: Sequence[Path], num_threads: int | None = None) -> list[str | None]:
    """Check that each file decodes; return None for good files, else the reason.

    PNG: `verify()` (CRC of every chunk). JPEG: a decode at 1/8 scale (`draft`), which reads
    the whole stream and so catches truncation cheaply. Other formats: a full decode.
    """
    workers = num_threads or min(32, 2 * (os.cpu_count() or 1))
    if len(paths) >= 10_000:
        logger.info("Checking %d images with %d threads", len(paths), workers)
    if len(paths) < 64 or workers == 1:
        return [_check_image(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="foveal-verify") as pool:
        return list(pool.map(_check_image, paths, chunksize=64))


def _check_image(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            if im.format == "PNG":
                im.verify()
            else:
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
    except _READ_ERRORS as e:
        return f"{type(e).__name__}: {e}"
    return None


def __getattr__(name: str):
    # The datasets moved to folders.py to keep torch out of this module's imports.
    if name in ("ImageFolderDataset", "LabeledImageFolderDataset"):
        from . import folders

        return getattr(folders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
