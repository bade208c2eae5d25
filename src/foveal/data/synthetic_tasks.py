"""Synthetic shapes with the annotations of every dense and box task (detection, semantic
segmentation, depth), for demos, port verification and tests.

The images are those of :mod:`foveal.data.synthetic` (one shape per image, its type the class);
each gets, from the shape's own coverage map:

* a COCO box (the tight box of the pixels more than half covered) of category ``shape`` (ids 1..K)
  and its instance mask (COCO RLE, the same pixels);
* a semantic mask: 0 background, ``1 + class`` on the shape (TAO segformer's id PNGs);
* a depth map in metres: a ground plane receding from 4 m (bottom) to 6 m (top), and the shape
  standing ``1 + 0.4 * class`` m in front of it (a per-shape height), as a 16-bit PNG in mm.

Layout under ``out_dir``::

    images/<split>/img_000000.png
    annotations/instances_<split>.json   COCO detection (file_name relative to images/<split>)
    masks/<split>/img_000000.png         class ids (L mode)
    depth/<split>/img_000000.png         16-bit, millimetres (depth_scale 1000)
    coco_<split>/images/ + annotations.json
                                         the same images and boxes as one COCO folder per split
                                         (TAO's dataset layout; hard links where possible)
    classes.txt                          the segmentation ids' names (background first)
    dataset.json                         the arguments, classes and GENERATOR_VERSION
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from foveal.data.synthetic import GENERATOR_VERSION, SHAPE_CLASSES, SPLITS, render_annotated, split_labels
from foveal.errors import DatasetError

logger = logging.getLogger(__name__)

DEPTH_SCALE = 1000.0  # PNG units per metre
TASK_KINDS = ("detection", "segmentation", "depth")


def shape_height(label: int) -> float:
    """How far (m) shape class ``label`` stands in front of the ground plane."""
    return 1.0 + 0.4 * label


def ground_depth(size: int) -> np.ndarray:
    """(size, size) metres: 6 m at the top row to 4 m at the bottom row."""
    rows = np.linspace(6.0, 4.0, size, dtype=np.float32)
    return np.repeat(rows[:, None], size, axis=1)


def annotate(coverage: np.ndarray, label: int) -> dict[str, Any]:
    """The box [x, y, w, h], semantic mask and depth map (m) of one rendered shape."""
    inside = coverage > 0.5
    rows, cols = np.nonzero(inside)
    if rows.size == 0:  # cannot happen for the generator's sizes; keep the sample box-free
        box = None
    else:
        box = [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1),
               float(rows.max() - rows.min() + 1)]  # fmt: skip
    mask = np.where(inside, label + 1, 0).astype(np.uint8)
    depth = ground_depth(coverage.shape[0])
    depth = np.where(inside, depth - shape_height(label), depth).astype(np.float32)
    return {"box": box, "mask": mask, "depth": depth}


def _link(source: Path, target: Path) -> None:
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def make_task_dataset(
    out_dir: str | Path,
    *,
    num_train: int = 64,
    num_val: int = 16,
    num_test: int = 0,
    image_size: int = 64,
    num_classes: int = 3,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the annotated shapes (layout in the module docstring).

    Returns:
        ``images_<split>``, ``instances_<split>``, ``masks_<split>``, ``depth_<split>`` and
        ``dataset.json`` -> path.

    Raises:
        DatasetError: bad arguments, or ``out_dir`` holds another dataset and ``overwrite`` is off.
    """
    from foveal.data.tasks import encode_mask, write_coco, write_depth

    out_dir = Path(out_dir).expanduser()
    if not 1 <= num_classes <= len(SHAPE_CLASSES):
        raise DatasetError(out_dir, f"num_classes={num_classes}", f"expected 1 to {len(SHAPE_CLASSES)}")
    if image_size < 16:
        raise DatasetError(out_dir, f"image_size={image_size}", "expected at least 16 pixels")
    meta_file = out_dir / "dataset.json"
    if meta_file.exists() and not overwrite:
        raise DatasetError(out_dir, "already holds a dataset", "choose another folder, or remove this one first")
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(SHAPE_CLASSES[:num_classes])]
    counts = {"train": num_train, "val": num_val, "test": num_test}
    written: dict[str, Path] = {}
    for split in SPLITS:
        if counts[split] <= 0:
            continue
        folders = {kind: out_dir / kind / split for kind in ("images", "masks", "depth")}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for index, label in enumerate(split_labels(seed, split, counts[split], num_classes).tolist()):
            image, coverage = render_annotated(seed, split, index, label, image_size)
            name = f"img_{index:06d}.png"
            image.save(folders["images"] / name, optimize=False, compress_level=6)
            parts = annotate(coverage, label)
            Image.fromarray(parts["mask"], mode="L").save(folders["masks"] / name)
            write_depth(folders["depth"] / name, parts["depth"], DEPTH_SCALE)
            images.append({"id": index + 1, "file_name": name, "width": image_size, "height": image_size})
            if parts["box"] is not None:
                annotations.append({"image_id": index + 1, "category_id": label + 1, "bbox": parts["box"],
                                    "segmentation": encode_mask(parts["mask"] > 0)})  # fmt: skip
        coco = write_coco(out_dir / "annotations" / f"instances_{split}.json", images, annotations, categories)
        coco_dir = out_dir / f"coco_{split}"
        (coco_dir / "images").mkdir(parents=True, exist_ok=True)
        for info in images:
            _link(folders["images"] / str(info["file_name"]), coco_dir / "images" / str(info["file_name"]))
        write_coco(coco_dir / "annotations.json", images, annotations, categories)
        written[f"coco_{split}"] = coco_dir
        written.update({f"images_{split}": folders["images"], f"masks_{split}": folders["masks"],
                        f"depth_{split}": folders["depth"], f"instances_{split}": coco})  # fmt: skip
    names = ["background", *(str(c["name"]) for c in categories)]
    (out_dir / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    meta = {
        "generator": "foveal.data.synthetic_tasks",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "num_classes": num_classes,
        "image_size": image_size,
        "classes": [c["name"] for c in categories],
        "segmentation_classes": names,
        "depth_scale": DEPTH_SCALE,
    }
    meta_file.parent.mkdir(parents=True, exist_ok=True)
    meta_file.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    written["dataset.json"] = meta_file
    logger.info("wrote %d annotated synthetic images to %s", sum(counts.values()), out_dir)
    return written
