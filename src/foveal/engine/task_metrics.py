"""Metrics of the dense and box tasks, accumulated over batches.

* :class:`DetectionMeter`: COCO mAP@[.5:.95], mAP50, mAP75 with pycocotools (the reference
  implementation; ``pip install foveal[tasks]``), from COCO-format detections.
* :class:`InstanceMeter`: the same for instance masks (COCO ``segm`` mAP).
* :class:`SegmentationMeter`: a confusion matrix -> mIoU, per-class IoU, pixel accuracy
  (ignored pixels, id 255, are left out).
* :class:`DepthMeter`: AbsRel, RMSE and delta1 (share of pixels with max(p/g, g/p) < 1.25) over
  the pixels with a measurement (depth > 0), as in the KITTI/NYU protocol.
* :class:`TopKMeter`: top-1 / top-k accuracy (zero-shot and fine-tuned classification).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from typing import Any

import torch

IGNORE_INDEX = 255


class DetectionMeter:
    """COCO-style box mAP of detections against one COCO ground-truth document.

    Args:
        coco_gt: the ground truth (``images``, ``annotations``, ``categories``).
    """

    iou_type = "bbox"

    def __init__(self, coco_gt: dict[str, Any]) -> None:
        self.coco_gt = coco_gt
        self.detections: list[dict[str, Any]] = []

    def add(self, image_id: int, boxes_xywh: torch.Tensor, scores: torch.Tensor, category_ids: list[int]) -> None:
        """Detections of one image: boxes in pixels [x, y, w, h], their scores and COCO category ids."""
        for box, score, category in zip(boxes_xywh.tolist(), scores.tolist(), category_ids, strict=True):
            self.detections.append(
                {"image_id": int(image_id), "category_id": int(category), "bbox": [float(v) for v in box],
                 "score": float(score)}
            )  # fmt: skip

    def compute(self) -> dict[str, float]:
        try:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        except ImportError:  # pragma: no cover - a declared dependency of the tasks extra
            raise ImportError("COCO mAP needs pycocotools: pip install 'foveal[tasks]'") from None
        if not self.detections or not self.coco_gt.get("annotations"):
            return {"mAP": 0.0, "mAP50": 0.0, "mAP75": 0.0, "num_detections": float(len(self.detections))}
        gt = {"info": {}, "licenses": [], **self.coco_gt}
        # pycocotools prints its tables, and warns under numpy 2 (a copy-keyword DeprecationWarning)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            coco = COCO()
            coco.dataset = gt
            coco.createIndex()
            found = coco.loadRes(list(self.detections))
            evaluation = COCOeval(coco, found, iouType=self.iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        stats = [max(0.0, float(v)) for v in evaluation.stats[:3]]  # -1 = no ground truth
        return {"mAP": stats[0], "mAP50": stats[1], "mAP75": stats[2], "num_detections": float(len(self.detections))}


class InstanceMeter(DetectionMeter):
    """COCO mask mAP (pycocotools ``segm``) of instance masks, given as COCO RLE."""

    iou_type = "segm"

    def add_masks(self, image_id: int, rles: list[dict[str, Any]], scores: torch.Tensor,
                  category_ids: list[int]) -> None:  # fmt: skip
        for rle, score, category in zip(rles, scores.tolist(), category_ids, strict=True):
            self.detections.append({"image_id": int(image_id), "category_id": int(category), "segmentation": rle,
                                    "score": float(score)})  # fmt: skip


class SegmentationMeter:
    """Confusion matrix of per-pixel class ids (rows: truth, columns: prediction)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)

    def add(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        keep = target != IGNORE_INDEX
        truth, guess = target[keep].long().cpu(), predicted[keep].long().cpu()
        index = truth * self.num_classes + guess.clamp(0, self.num_classes - 1)
        self.confusion += torch.bincount(index, minlength=self.num_classes**2).view(self.num_classes, -1)

    def compute(self) -> dict[str, Any]:
        c = self.confusion.double()
        inter = c.diag()
        union = c.sum(0) + c.sum(1) - inter
        present = c.sum(1) > 0  # classes with ground-truth pixels
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
        total = float(c.sum())
        return {
            "mIoU": float(iou[present].mean()) if present.any() else 0.0,
            "per_class_iou": [float(v) if p else None for v, p in zip(iou, present, strict=True)],
            "pixel_accuracy": float(inter.sum() / total) if total else 0.0,
        }


class DepthMeter:
    """AbsRel, RMSE and delta1 over the measured pixels of every image added."""

    def __init__(self) -> None:
        self.count = 0
        self.abs_rel = 0.0
        self.squared = 0.0
        self.delta1 = 0.0

    def add(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        valid = target > 0
        p, g = predicted[valid].double().clamp(min=1e-6), target[valid].double()
        if not g.numel():
            return
        self.count += g.numel()
        self.abs_rel += float(((p - g).abs() / g).sum())
        self.squared += float(((p - g) ** 2).sum())
        self.delta1 += float((torch.maximum(p / g, g / p) < 1.25).sum())

    def compute(self) -> dict[str, float]:
        n = max(1, self.count)
        return {
            "abs_rel": self.abs_rel / n if self.count else math.nan,
            "rmse": math.sqrt(self.squared / n) if self.count else math.nan,
            "delta1": self.delta1 / n if self.count else math.nan,
            "num_pixels": float(self.count),
        }


class TopKMeter:
    """Top-1 (and top-k) accuracy of (B, C) class scores against (B,) labels."""

    def __init__(self, topk: tuple[int, ...] = (1, 5)) -> None:
        self.topk = topk
        self.count = 0
        self.correct: dict[int, int] = {k: 0 for k in topk}

    def add(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        ranked = scores.float().argsort(dim=1, descending=True)
        for k in self.topk:
            self.correct[k] += int((ranked[:, :k] == labels[:, None]).any(dim=1).sum())
        self.count += int(labels.numel())

    def compute(self) -> dict[str, float]:
        n = max(1, self.count)
        return {f"top{k}": self.correct[k] / n for k in self.topk} | {"num_images": float(self.count)}
