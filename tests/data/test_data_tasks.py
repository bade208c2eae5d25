"""Task annotations stay aligned with their images: COCO boxes, class-id masks and depth maps
under the squash resize and the horizontal flip; the synthetic generator's annotations match
its shapes; bad annotation files are one-line DatasetErrors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from foveal.data.synthetic_tasks import DEPTH_SCALE, ground_depth, make_task_dataset, shape_height
from foveal.data.tasks import (
    CocoDetection,
    DepthMaps,
    PairedTransform,
    SegmentationMasks,
    detection_collate,
    read_depth,
    write_coco,
)
from foveal.errors import DatasetError

pytestmark = pytest.mark.unit
MEAN, STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_task_dataset(tmp_path_factory.mktemp("tasks"), num_train=6, num_val=2, image_size=48)


def _shape_pixels(image: torch.Tensor) -> torch.Tensor:
    """Where a synthetic image differs from its own border colour the most (rough shape mask)."""
    return image.float().sum(0)


def test_synthetic_annotations_describe_the_shape(shapes):
    coco = json.loads(shapes["instances_train"].read_text())
    assert [c["name"] for c in coco["categories"]] == ["circle", "square", "triangle"]
    assert len(coco["annotations"]) == len(coco["images"]) == 6
    for ann, info in zip(coco["annotations"], coco["images"], strict=True):
        mask = np.asarray(Image.open(shapes["masks_train"] / info["file_name"]))
        depth = read_depth(shapes["depth_train"] / info["file_name"], DEPTH_SCALE)
        label = ann["category_id"] - 1
        assert set(np.unique(mask)) == {0, label + 1}
        rows, cols = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert (x, y, x + w - 1, y + h - 1) == (cols.min(), rows.min(), cols.max(), rows.max())
        expected = ground_depth(48) - shape_height(label) * (mask > 0)
        assert np.abs(depth - expected).max() <= 0.5 / DEPTH_SCALE + 1e-6  # mm rounding


def test_flip_mirrors_boxes_masks_and_depth_with_the_image(shapes):
    plain = PairedTransform(48, MEAN, STD, hflip=0.0)
    flipped = PairedTransform(48, MEAN, STD, hflip=1.0)
    det, det_f = (CocoDetection(shapes["images_train"], shapes["instances_train"], t) for t in (plain, flipped))
    image, target = det[0]
    image_f, target_f = det_f[0]
    assert torch.equal(image_f, image.flip(-1))
    cx, cy, w, h = target["boxes"][0].tolist()
    assert target_f["boxes"][0].tolist() == pytest.approx([1 - cx, cy, w, h])
    seg, seg_f = (SegmentationMasks(shapes["images_train"], shapes["masks_train"], t, 4) for t in (plain, flipped))
    assert torch.equal(seg_f[0][1], seg[0][1].flip(-1))
    dep, dep_f = (DepthMaps(shapes["images_train"], shapes["depth_train"], t) for t in (plain, flipped))
    assert torch.equal(dep_f[0][1], dep[0][1].flip(-1))


def test_resize_keeps_normalised_boxes_and_exact_mask_ids(shapes):
    small = PairedTransform(24, MEAN, STD)
    image, target = CocoDetection(shapes["images_train"], shapes["instances_train"], small)[0]
    full = CocoDetection(shapes["images_train"], shapes["instances_train"], PairedTransform(48, MEAN, STD))[0][1]
    assert image.shape == (3, 24, 24) and torch.equal(target["boxes"], full["boxes"])
    _, mask = SegmentationMasks(shapes["images_train"], shapes["masks_train"], small, 4)[0]
    assert mask.shape == (24, 24) and mask.dtype == torch.long
    assert set(mask.unique().tolist()) <= {0, 1, 2, 3}  # nearest neighbour: no blended ids


def test_collate_keeps_per_image_box_counts(tmp_path, shapes):
    dataset = CocoDetection(shapes["images_train"], shapes["instances_train"], PairedTransform(32, MEAN, STD))
    images, targets = detection_collate([dataset[0], dataset[1]])
    assert images.shape == (2, 3, 32, 32) and [len(t["boxes"]) for t in targets] == [1, 1]


def test_coco_category_ids_become_contiguous_and_splits_must_agree(tmp_path, shapes):
    info = [{"id": 7, "file_name": "img_000000.png", "width": 48, "height": 48}]
    anns = [{"image_id": 7, "category_id": 90, "bbox": [0, 0, 10, 10]},
            {"image_id": 7, "category_id": 3, "bbox": [40, 40, 20, 20]},  # clipped at the border
            {"image_id": 7, "category_id": 3, "bbox": [60, 60, 5, 5]}]  # outside: dropped  # fmt: skip
    cats = [{"id": 90, "name": "z"}, {"id": 3, "name": "a"}]
    path = write_coco(tmp_path / "a.json", info, anns, cats)
    dataset = CocoDetection(shapes["images_train"], path, PairedTransform(48, MEAN, STD))
    assert dataset.classes == ["a", "z"]  # by category id
    _, target = dataset[0]
    assert target["class_labels"].tolist() == [1, 0]
    assert target["boxes"][1].tolist() == pytest.approx([44 / 48, 44 / 48, 8 / 48, 8 / 48])
    other = write_coco(tmp_path / "b.json", info, [], [{"id": 5, "name": "q"}])
    with pytest.raises(DatasetError, match="category ids"):
        CocoDetection(shapes["images_train"], other, PairedTransform(48, MEAN, STD), categories=dataset.categories)


@pytest.mark.parametrize(
    ("content", "message"),
    [("{", "not valid JSON"), ("[]", "expected a COCO object"), ('{"images": []}', "no 'annotations' list")],
)
def test_bad_coco_files_are_one_line(tmp_path, shapes, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as info:
        CocoDetection(shapes["images_train"], path, PairedTransform(48, MEAN, STD))
    assert "\n" not in str(info.value)


def test_masks_missing_or_with_unknown_ids_are_refused(tmp_path, shapes):
    masks = tmp_path / "masks"
    masks.mkdir()
    with pytest.raises(DatasetError, match="no mask for 6 of 6 images"):
        SegmentationMasks(shapes["images_train"], masks, PairedTransform(48, MEAN, STD), 4)
    dataset = SegmentationMasks(shapes["images_train"], shapes["masks_train"], PairedTransform(48, MEAN, STD), 2)
    ids = [int(np.asarray(Image.open(m)).max()) for _, m in dataset.pairs]
    index = next(i for i, top in enumerate(ids) if top >= 2)
    with pytest.raises(DatasetError, match="dataset.num_classes=2"):
        dataset[index]
