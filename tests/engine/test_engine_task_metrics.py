"""The task metrics against hand-computed values (and pycocotools on perfect / shifted boxes)."""

from __future__ import annotations

import math

import pytest
import torch

from foveal.engine.task_metrics import DepthMeter, DetectionMeter, SegmentationMeter

pytestmark = pytest.mark.unit

GT = {
    "images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.png"},
               {"id": 2, "width": 100, "height": 100, "file_name": "b.png"}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
                    {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 20, 30, 60], "area": 1800, "iscrowd": 0}],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
}  # fmt: skip


def test_perfect_detections_score_one_and_shifted_ones_less():
    meter = DetectionMeter(GT)
    meter.add(1, torch.tensor([[10.0, 10, 40, 40]]), torch.tensor([0.9]), [1])
    meter.add(2, torch.tensor([[50.0, 20, 30, 60]]), torch.tensor([0.8]), [2])
    assert meter.compute()["mAP"] == pytest.approx(1.0)
    shifted = DetectionMeter(GT)
    shifted.add(1, torch.tensor([[20.0, 20, 40, 40]]), torch.tensor([0.9]), [1])  # IoU 0.39
    shifted.add(2, torch.tensor([[50.0, 20, 30, 60]]), torch.tensor([0.8]), [2])
    scores = shifted.compute()
    assert scores["mAP50"] == pytest.approx(0.5) and scores["mAP"] < 0.6
    wrong_class = DetectionMeter(GT)
    wrong_class.add(1, torch.tensor([[10.0, 10, 40, 40]]), torch.tensor([0.9]), [2])
    assert wrong_class.compute()["mAP50"] == 0.0
    assert DetectionMeter(GT).compute()["mAP"] == 0.0  # no detections at all


def test_segmentation_iou_by_hand():
    meter = SegmentationMeter(3)
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 255]])
    predicted = torch.tensor([[0, 1, 1, 1], [0, 0, 2, 2]])
    meter.add(predicted, target)
    scores = meter.compute()
    # class 0: inter 3, union 4; class 1: inter 2, union 4 (1 false positive, 1 missed); class 2: absent
    assert scores["per_class_iou"][:2] == pytest.approx([0.75, 0.5]) and scores["per_class_iou"][2] is None
    assert scores["mIoU"] == pytest.approx(0.625) and scores["pixel_accuracy"] == pytest.approx(5 / 7)


def test_depth_metrics_by_hand_skip_unmeasured_pixels():
    meter = DepthMeter()
    target = torch.tensor([[1.0, 2.0], [4.0, 0.0]])
    predicted = torch.tensor([[1.0, 2.2], [6.0, 9.0]])
    meter.add(predicted, target)
    scores = meter.compute()
    assert scores["abs_rel"] == pytest.approx((0 + 0.1 + 0.5) / 3)
    assert scores["rmse"] == pytest.approx(math.sqrt((0 + 0.04 + 4) / 3))
    assert scores["delta1"] == pytest.approx(2 / 3) and scores["num_pixels"] == 3
