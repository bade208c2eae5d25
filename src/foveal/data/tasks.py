"""Datasets of dense and box tasks: COCO detection, semantic masks, depth maps.

Every sample is an image plus its annotation, transformed together so they stay aligned:

* :class:`CocoDetection`: COCO JSON (``images``, ``annotations`` with ``bbox`` = [x, y, w, h] in
  pixels, ``categories``) + an image folder; the target is ``{"class_labels": (N,) long,
  "boxes": (N, 4) normalised (cx, cy, w, h), "image_id": int, "orig_size": (h, w)}``, the label
  format of the ``transformers`` detection heads. Category ids become contiguous indices in
  id order (:attr:`CocoDetection.categories` keeps the names and ids).
* :class:`CocoInstances`: COCO instance segmentation (``segmentation`` as polygons or RLE); the
  target adds ``masks`` (N, S, S) float, one binary mask per instance at the training size.
* :class:`SegmentationMasks`: an image folder and a mask folder of the same stems (TAO
  segformer's ``images/<split>`` + ``masks/<split>``); a mask is a one-channel PNG of class ids,
  255 = ignored.
* :class:`DepthMaps`: an image folder and a folder of 16-bit PNG depth maps of the same stems,
  depth = value / ``depth_scale`` (default 1000: millimetres), 0 = no measurement.

Geometry (:class:`PairedTransform`): a squash resize to the square training size (boxes are
normalised, so they do not change), then a horizontal flip with probability ``hflip`` applied to
both sides (box centres mirrored, masks and depth flipped), then colour only on the image.
Masks and depth are resized with nearest neighbours so class ids and validity stay exact.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from foveal.data.images import is_image_file, load_image, scan_images
from foveal.errors import DatasetError

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255


class PairedTransform:
    """Image + annotation geometry (see the module docstring), then the image's normalisation.

    Args:
        size: the square side images, masks and depth maps are resized to.
        mean, std: per-channel normalisation of the image.
        hflip: probability of a horizontal flip (0 for evaluation).
        seed: the flip generator's seed (the worker's torch seed when None).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], hflip: float = 0.0) -> None:
        self.size = int(size)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
        self.hflip = float(hflip)

    def image(self, image: Image.Image) -> torch.Tensor:
        resized = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        array = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (array - self.mean) / self.std

    def flip(self) -> bool:
        return self.hflip > 0 and float(torch.rand(())) < self.hflip

    def dense(self, array: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resize of a (H, W) annotation map (ids or depth)."""
        mode = "F" if array.dtype.kind == "f" else "I"
        image = Image.fromarray(array.astype(np.float32 if mode == "F" else np.int32), mode=mode)
        resized = image.resize((self.size, self.size), Image.Resampling.NEAREST)
        return np.asarray(resized).astype(array.dtype)


def _stem_index(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and is_image_file(p)}


def _folder(path: str | Path, key: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetError(folder, f"{key}: no such folder", "pass the folder that holds the files")
    return folder


def _pairs(images_dir: Path, labels_dir: Path, what: str) -> list[tuple[Path, Path]]:
    """(image, annotation) pairs matched by file stem; every image needs its annotation."""
    images = scan_images(images_dir)
    if not images:
        raise DatasetError(images_dir, "no images found", "expected image files (png, jpg, ...)")
    labels = _stem_index(labels_dir)
    missing = [p.name for p in images if p.stem not in labels]
    if missing:
        raise DatasetError(
            labels_dir,
            f"no {what} for {len(missing)} of {len(images)} images (first: {missing[0]})",
            f"each image needs a {what} PNG of the same name",
        )
    return [(p, labels[p.stem]) for p in images]


# ------------------------------------------------------------------------------------ detection


def read_coco(json_file: str | Path) -> dict[str, Any]:
    """A COCO detection file, checked for the keys the datasets read.

    Raises:
        DatasetError: unreadable, or without ``images`` / ``annotations`` / ``categories``.
    """
    path = Path(json_file).expanduser()
    if not path.is_file():
        raise DatasetError(path, "no such COCO annotation file", "pass the instances_*.json of the split")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(document, dict):
        raise DatasetError(path, "expected a COCO object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise DatasetError(path, f"no {key!r} list", "expected COCO detection format (instances_*.json)")
    if not document["categories"]:
        raise DatasetError(path, "no categories", "list the classes under 'categories'")
    return document


class CocoDetection(Dataset):
    """A COCO detection split (see the module docstring).

    Args:
        image_dir: the folder the ``file_name`` entries are relative to.
        json_file: the COCO file.
        transform: the paired transform.
        categories: the training split's ``[{"id", "name"}]`` so that indices agree across
            splits (None: this file's).
    """

    def __init__(self, image_dir: str | Path, json_file: str | Path, transform: PairedTransform,
                 categories: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
        self.root = _folder(image_dir, "image_dir")
        self.json_file = Path(json_file).expanduser()
        self.coco = read_coco(self.json_file)
        self.transform = transform
        own: list[dict[str, Any]] = sorted(
            ({"id": int(c["id"]), "name": str(c["name"])} for c in self.coco["categories"]), key=lambda c: int(c["id"])
        )
        self.categories = categories if categories is not None else own
        self.index_of = {c["id"]: i for i, c in enumerate(self.categories)}
        unknown = {c["id"] for c in own} - set(self.index_of)
        if unknown:
            raise DatasetError(self.json_file, f"category ids {sorted(unknown)} are not in the training split's "
                               "categories", "use one category list for every split")  # fmt: skip
        self.images: list[dict[str, Any]] = sorted(self.coco["images"], key=lambda im: int(im["id"]))
        if not self.images:
            raise DatasetError(self.json_file, "no images listed")
        self.boxes: dict[int, list[tuple[list[float], int]]] = {int(im["id"]): [] for im in self.images}
        for ann in self.coco["annotations"]:
            if ann.get("iscrowd"):
                continue
            image_id = int(ann["image_id"])
            if image_id in self.boxes and int(ann["category_id"]) in self.index_of:
                self.boxes[image_id].append(([float(v) for v in ann["bbox"]], self.index_of[int(ann["category_id"])]))
        absent = [im["file_name"] for im in self.images if not (self.root / im["file_name"]).is_file()]
        if absent:
            raise DatasetError(self.root, f"{len(absent)} images of {self.json_file.name} are missing (first: "
                               f"{absent[0]})", "image_dir must be the folder file_name is relative to")  # fmt: skip

    @property
    def classes(self) -> list[str]:
        return [str(c["name"]) for c in self.categories]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        info = self.images[index]
        image = load_image(self.root / info["file_name"])
        width, height = image.size
        flip = self.transform.flip()
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        boxes, labels = [], []
        for (x, y, w, h), label in self.boxes[int(info["id"])]:
            x0, y0 = max(0.0, x), max(0.0, y)
            x1, y1 = min(float(width), x + w), min(float(height), y + h)
            if x1 <= x0 or y1 <= y0:
                continue  # a box outside the image or of no area
            cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
            boxes.append([1.0 - cx if flip else cx, cy, (x1 - x0) / width, (y1 - y0) / height])
            labels.append(label)
        target = {
            "class_labels": torch.tensor(labels, dtype=torch.long),
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "image_id": int(info["id"]),
            "orig_size": (height, width),
        }
        return self.transform.image(image), target


def instance_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, RLE or uncompressed RLE) as a (H, W) uint8 mask."""
    if isinstance(segmentation, list):  # polygons [[x0, y0, x1, y1, ...], ...]
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for polygon in segmentation:
            if len(polygon) >= 6:
                draw.polygon([(float(polygon[i]), float(polygon[i + 1])) for i in range(0, len(polygon), 2)], fill=1)
        return np.asarray(canvas, dtype=np.uint8)
    from pycocotools import mask as coco_mask

    rle = segmentation
    if isinstance(rle.get("counts"), list):  # uncompressed
        rle = coco_mask.frPyObjects(rle, height, width)
    with warnings.catch_warnings():  # pycocotools 2.0.x under numpy 2: a copy-keyword DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded: np.ndarray = coco_mask.decode(rle)
    return decoded.astype(np.uint8)


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A (H, W) binary mask as COCO compressed RLE (``counts`` as text, JSON-ready)."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


class CocoInstances(CocoDetection):
    """A COCO instance segmentation split: :class:`CocoDetection`'s target plus ``masks``."""

    def __init__(self, image_dir: str | Path, json_file: str | Path, transform: PairedTransform,
                 categories: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
        super().__init__(image_dir, json_file, transform, categories)
        self.segments: dict[int, list[tuple[Any, int]]] = {int(im["id"]): [] for im in self.images}
        for ann in self.coco["annotations"]:
            if ann.get("iscrowd") or "segmentation" not in ann:
                continue
            image_id, category = int(ann["image_id"]), int(ann["category_id"])
            if image_id in self.segments and category in self.index_of:
                self.segments[image_id].append((ann["segmentation"], self.index_of[category]))
        if not any(self.segments.values()):
            raise DatasetError(self.json_file, "no annotation has a 'segmentation'",
                               "instance segmentation needs COCO polygons or RLE masks")  # fmt: skip

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        info = self.images[index]
        image = load_image(self.root / info["file_name"])
        width, height = image.size
        flip = self.transform.flip()
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        masks, labels = [], []
        for segmentation, label in self.segments[int(info["id"])]:
            mask = instance_mask(segmentation, height, width)
            if not mask.any():
                continue
            mask = mask[:, ::-1] if flip else mask
            masks.append(self.transform.dense(np.ascontiguousarray(mask)))
            labels.append(label)
        size = self.transform.size
        stacked = np.stack(masks) if masks else np.zeros((0, size, size), dtype=np.uint8)
        target = {
            "class_labels": torch.tensor(labels, dtype=torch.long),
            "masks": torch.from_numpy(stacked.astype(np.float32)),
            "image_id": int(info["id"]),
            "orig_size": (height, width),
        }
        return self.transform.image(image), target


def detection_collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict]]:
    """Stacked images and the list of per-image targets (their box counts differ)."""
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]


def write_coco(path: str | Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    """A COCO detection file (ids as given; ``area`` and ``iscrowd`` filled in)."""
    for i, ann in enumerate(annotations):
        ann.setdefault("id", i + 1)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    document = {"images": images, "annotations": annotations, "categories": categories}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------- segmentation


class SegmentationMasks(Dataset):
    """Images and class-id masks of the same stems (see the module docstring).

    Args:
        num_classes: ids ``0..num_classes-1`` are classes; 255 is ignored; any other id is an error.
    """

    def __init__(self, images_dir: str | Path, masks_dir: str | Path, transform: PairedTransform,
                 num_classes: int) -> None:  # fmt: skip
        self.images_dir = _folder(images_dir, "images")
        self.masks_dir = _folder(masks_dir, "masks")
        self.pairs = _pairs(self.images_dir, self.masks_dir, "mask")
        self.transform = transform
        self.num_classes = int(num_classes)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_file, mask_file = self.pairs[index]
        image = load_image(image_file)
        with Image.open(mask_file) as raw:
            mask = np.asarray(raw if raw.mode in ("L", "P", "I", "I;16") else raw.convert("L")).astype(np.int64)
        if mask.ndim != 2:
            raise DatasetError(mask_file, f"a mask of shape {mask.shape}", "expected a one-channel PNG of class ids")
        bad = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            raise DatasetError(
                mask_file,
                f"class id {int(mask[bad].max())} but dataset.num_classes={self.num_classes}",
                f"ids must be 0..{self.num_classes - 1}, or {IGNORE_INDEX} for ignored pixels",
            )
        if self.transform.flip():
            image, mask = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), mask[:, ::-1]
        return self.transform.image(image), torch.from_numpy(self.transform.dense(np.ascontiguousarray(mask)))


# ---------------------------------------------------------------------------------------- depth


def read_depth(path: str | Path, depth_scale: float) -> np.ndarray:
    """A depth PNG (16-bit, or 8-bit) as metres (float32); 0 where nothing was measured."""
    with Image.open(path) as raw:
        array = np.asarray(raw)
    if array.ndim != 2:
        raise DatasetError(path, f"a depth map of shape {array.shape}", "expected a one-channel 16-bit PNG")
    return array.astype(np.float32) / float(depth_scale)


def write_depth(path: str | Path, depth: np.ndarray, depth_scale: float) -> Path:
    """Write metres as a 16-bit PNG (value = depth * depth_scale, clipped to 0..65535)."""
    values = np.clip(np.round(depth * depth_scale), 0, 65535).astype(np.uint16)
    path = Path(path)
    Image.fromarray(values).save(path)
    return path


class DepthMaps(Dataset):
    """Images and 16-bit depth PNGs of the same stems; samples are (image, depth in metres)."""

    def __init__(self, images_dir: str | Path, depth_dir: str | Path, transform: PairedTransform,
                 depth_scale: float = 1000.0) -> None:  # fmt: skip
        self.images_dir = _folder(images_dir, "images")
        self.depth_dir = _folder(depth_dir, "depth")
        self.pairs = _pairs(self.images_dir, self.depth_dir, "depth map")
        self.transform = transform
        self.depth_scale = float(depth_scale)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_file, depth_file = self.pairs[index]
        image = load_image(image_file)
        depth = read_depth(depth_file, self.depth_scale)
        if self.transform.flip():
            image, depth = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), depth[:, ::-1]
        return self.transform.image(image), torch.from_numpy(self.transform.dense(np.ascontiguousarray(depth)))
