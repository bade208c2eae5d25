"""What differs per task: which data a spec names, how a batch is scored, what inference writes.

One class per task (:data:`TASKS`), each with the same methods, so the module, the actions and
the port's verification are written once:

* ``datasets(cfg, ctx, split)``: the split's dataset (training transform for ``train``) and the
  classes; ``collate``;
* ``meter(dataset)`` / ``update(meter, outputs, target, dataset)`` / ``scores(meter)``;
* ``write(outputs, paths, images, writer)``: inference files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from foveal.data import resolve_dataset
from foveal.data.tasks import (
    CocoDetection,
    CocoInstances,
    DepthMaps,
    PairedTransform,
    SegmentationMasks,
    detection_collate,
    encode_mask,
)
from foveal.engine.task_metrics import DepthMeter, DetectionMeter, InstanceMeter, SegmentationMeter, TopKMeter
from foveal.errors import DatasetError
from foveal.spec import required

logger = logging.getLogger(__name__)


def transform(cfg: Any, train: bool, img_size: int | None = None) -> PairedTransform:
    data, aug = cfg.dataset, cfg.dataset.augmentation
    return PairedTransform(img_size or data.img_size, aug.mean, aug.std,
                           hflip=aug.hflip_probability if train else 0.0)  # fmt: skip


def _palette(n: int) -> np.ndarray:
    """n distinct RGB colours (class 0 black)."""
    rng = np.random.default_rng(7)
    colours = rng.integers(40, 256, size=(max(n, 1), 3)).astype(np.uint8)
    colours[0] = 0
    return colours


class Detection:
    task = "object-detection"
    dataset_class: Any = CocoDetection
    monitor = ("val_mAP50", "max")  # TAO's detection networks rank by mAP50
    kpis = ("mAP", "mAP50", "mAP75")

    @staticmethod
    def collate(batch: list) -> Any:
        return detection_collate(batch)

    def datasets(self, cfg: Any, ctx: Any, split: str, classes: list[str] | None = None,
                 img_size: int | None = None) -> tuple[Any, list[str]]:  # fmt: skip
        data = cfg.dataset
        sources = {"train": list(data.train_data_sources), "val": [data.val_data_sources],
                   "test": [data.test_data_sources]}[split]  # fmt: skip
        key = {"train": "train_data_sources", "val": "val_data_sources", "test": "test_data_sources"}[split]
        tf = transform(cfg, split == "train", img_size)
        parts: list[CocoDetection] = []
        for i, source in enumerate(sources):
            where = f"dataset.{key}[{i}]" if split == "train" else f"dataset.{key}"
            image_dir = resolve_dataset(required(source.image_dir, f"{where}.image_dir"), ctx.cache_dir)
            json_file = required(source.json_file, f"{where}.json_file")
            parts.append(self.dataset_class(image_dir, json_file, tf, categories=parts[0].categories if parts else None))
        if classes is not None and parts[0].classes != list(classes):
            raise DatasetError(parts[0].json_file, f"categories {parts[0].classes} differ from the trained classes "
                               f"{list(classes)}", "evaluate on data with the training categories")  # fmt: skip
        if len(parts) == 1:
            dataset: Any = parts[0]
        else:
            dataset = torch.utils.data.ConcatDataset(parts)
        names = parts[0].classes
        self._check_num_classes(cfg, names, sources[0].json_file)
        return dataset, names

    @staticmethod
    def _check_num_classes(cfg: Any, names: list[str], where: Any) -> None:
        wanted = cfg.dataset.num_classes
        if wanted and wanted != len(names):
            raise DatasetError(str(where), f"{len(names)} categories but dataset.num_classes={wanted}",
                               f"set dataset.num_classes={len(names)} (or 0)")  # fmt: skip

    def meter(self, dataset: Any) -> DetectionMeter:
        parts = getattr(dataset, "datasets", [dataset])
        if len(parts) != 1:
            raise ValueError("detection is scored on one COCO file")
        return DetectionMeter(parts[0].coco)

    @staticmethod
    def boxes(outputs: tuple[torch.Tensor, ...], num_classes: int, top: int = 100) -> list[dict[str, torch.Tensor]]:
        """Per image: ``scores``, ``labels`` (class index) and ``boxes`` (normalised x0, y0, x1, y1).

        Heads with one extra "no object" logit (DETR, YOLOS) are scored with a softmax without it;
        sigmoid heads (Deformable/Conditional DETR, RT-DETR, D-FINE) per class."""
        logits, pred_boxes = outputs[0].float(), outputs[1].float()
        if logits.shape[-1] == num_classes + 1:
            probs = logits.softmax(-1)[..., :-1]
        else:
            probs = logits.sigmoid()[..., :num_classes]
        scores, labels = probs.max(-1)
        cx, cy, w, h = pred_boxes.unbind(-1)
        corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).clamp(0, 1)
        result = []
        for s, lab, box in zip(scores, labels, corners, strict=True):
            keep = s.argsort(descending=True)[:top]
            result.append({"scores": s[keep], "labels": lab[keep], "boxes": box[keep]})
        return result

    def update(self, meter: DetectionMeter, outputs: tuple[torch.Tensor, ...], target: list[dict], dataset: Any) -> None:
        parts = getattr(dataset, "datasets", [dataset])
        categories = parts[0].categories
        for found, t in zip(self.boxes(outputs, len(categories)), target, strict=True):
            height, width = t["orig_size"]
            b = found["boxes"] * torch.tensor([width, height, width, height])
            xywh = torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], -1)
            ids = [categories[int(i)]["id"] for i in found["labels"]]
            meter.add(t["image_id"], xywh, found["scores"], ids)

    @staticmethod
    def scores(meter: DetectionMeter) -> dict[str, Any]:
        return meter.compute()


class Segmentation:
    task = "semantic-segmentation"
    monitor = ("val_mIoU", "max")
    kpis = ("mIoU", "pixel_accuracy")

    collate = None

    @staticmethod
    def class_names(cfg: Any, root: Path, masks_dir: Path) -> list[str]:
        """``classes.txt`` of the dataset folder (one name per line, id = line number), else
        ``dataset.num_classes`` ids, else the ids found in the training masks."""
        listed = root / "classes.txt"
        if listed.is_file():
            names = [line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            count = cfg.dataset.num_classes
            if not count:
                top = 0
                for mask in sorted(masks_dir.glob("*.png")):
                    with Image.open(mask) as raw:
                        ids = np.unique(np.asarray(raw))
                    top = max(top, int(ids[ids != 255].max(initial=0)))
                count = top + 1
            names = [f"class_{i}" for i in range(count)]
        if cfg.dataset.num_classes and cfg.dataset.num_classes != len(names):
            raise DatasetError(listed, f"{len(names)} classes but dataset.num_classes={cfg.dataset.num_classes}",
                               f"set dataset.num_classes={len(names)} (or 0)")  # fmt: skip
        if len(names) < 2:
            raise DatasetError(root, "fewer than 2 classes", "semantic segmentation needs background and a class")
        return names

    def _root(self, cfg: Any, ctx: Any) -> Path:
        return resolve_dataset(required(cfg.dataset.segment.root_dir, "dataset.segment.root_dir"), ctx.cache_dir)

    def datasets(self, cfg: Any, ctx: Any, split: str, classes: list[str] | None = None,
                 img_size: int | None = None) -> tuple[Any, list[str]]:  # fmt: skip
        folders = cfg.dataset.segment
        root = self._root(cfg, ctx)
        name = {"train": folders.train_split, "val": folders.validation_split, "test": folders.test_split}[split]
        names = classes or self.class_names(cfg, root, root / "masks" / folders.train_split)
        tf = transform(cfg, split == "train", img_size)
        return SegmentationMasks(root / "images" / name, root / "masks" / name, tf, len(names)), names

    @staticmethod
    def meter(dataset: Any) -> SegmentationMeter:
        return SegmentationMeter(dataset.num_classes)

    @staticmethod
    def predict(outputs: tuple[torch.Tensor, ...], size: tuple[int, int]) -> torch.Tensor:
        logits = F.interpolate(outputs[0].float(), size=size, mode="bilinear", align_corners=False)
        return logits.argmax(1)

    def update(self, meter: SegmentationMeter, outputs: tuple[torch.Tensor, ...], target: torch.Tensor,
               dataset: Any) -> None:  # fmt: skip
        meter.add(self.predict(outputs, (int(target.shape[-2]), int(target.shape[-1]))), target)

    @staticmethod
    def scores(meter: SegmentationMeter) -> dict[str, Any]:
        return meter.compute()


class Depth:
    task = "depth-estimation"
    monitor = ("val_abs_rel", "min")
    kpis = ("abs_rel", "rmse", "delta1")

    collate = None

    def datasets(self, cfg: Any, ctx: Any, split: str, classes: list[str] | None = None,
                 img_size: int | None = None) -> tuple[Any, list[str]]:  # fmt: skip
        folders = cfg.dataset.depth
        root = resolve_dataset(required(folders.root_dir, "dataset.depth.root_dir"), ctx.cache_dir)
        name = {"train": folders.train_split, "val": folders.validation_split, "test": folders.test_split}[split]
        tf = transform(cfg, split == "train", img_size)
        return DepthMaps(root / "images" / name, root / "depth" / name, tf, folders.depth_scale), []

    @staticmethod
    def meter(dataset: Any) -> DepthMeter:
        return DepthMeter()

    @staticmethod
    def predict(outputs: tuple[torch.Tensor, ...], size: tuple[int, int]) -> torch.Tensor:
        depth = outputs[0].float().unsqueeze(1)
        return F.interpolate(depth, size=size, mode="bilinear", align_corners=False).squeeze(1)

    def update(self, meter: DepthMeter, outputs: tuple[torch.Tensor, ...], target: torch.Tensor, dataset: Any) -> None:
        meter.add(self.predict(outputs, (int(target.shape[-2]), int(target.shape[-1]))), target)

    @staticmethod
    def scores(meter: DepthMeter) -> dict[str, Any]:
        return meter.compute()


class ImageTransform:
    """Class-folder images: the paired transform's image side, with its flip."""

    def __init__(self, paired: PairedTransform) -> None:
        self.paired = paired

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.paired.flip():
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self.paired.image(image)


class ZeroShot:
    task = "zero-shot-image-classification"
    monitor = ("val_top1", "max")
    kpis = ("top1",)

    collate = None

    def datasets(self, cfg: Any, ctx: Any, split: str, classes: list[str] | None = None,
                 img_size: int | None = None) -> tuple[Any, list[str]]:  # fmt: skip
        from foveal.data import LabeledImageFolderDataset

        key = {"train": "train_dataset", "val": "val_dataset", "test": "val_dataset"}[split]
        root = resolve_dataset(required(getattr(cfg.dataset, key).images_dir, f"dataset.{key}.images_dir"),
                               ctx.cache_dir)  # fmt: skip
        dataset = LabeledImageFolderDataset(root, transform=ImageTransform(transform(cfg, split == "train", img_size)),
                                            classes=classes)  # fmt: skip
        wanted = cfg.dataset.num_classes
        if wanted and wanted != len(dataset.classes):
            raise DatasetError(root, f"{len(dataset.classes)} classes but dataset.num_classes={wanted}",
                               f"set dataset.num_classes={len(dataset.classes)} (or 0)")  # fmt: skip
        return dataset, list(dataset.classes)

    @staticmethod
    def meter(dataset: Any) -> TopKMeter:
        return TopKMeter((1, 5) if len(dataset.classes) > 5 else (1,))

    @staticmethod
    def update(meter: TopKMeter, outputs: tuple[torch.Tensor, ...], target: torch.Tensor, dataset: Any) -> None:
        meter.add(outputs[0], target)

    @staticmethod
    def scores(meter: TopKMeter) -> dict[str, Any]:
        return meter.compute()


class GroundedDetection(Detection):
    """Open-vocabulary detection: COCO data and metrics as detection's; the categories are the text."""

    task = "zero-shot-object-detection"


class Instances(Detection):
    """Instance segmentation: COCO data with masks; COCO mask mAP."""

    task = "instance-segmentation"
    dataset_class = CocoInstances
    monitor = ("val_mAP", "max")

    def meter(self, dataset: Any) -> InstanceMeter:
        parts = getattr(dataset, "datasets", [dataset])
        return InstanceMeter(parts[0].coco)

    @staticmethod
    def instances(outputs: tuple[torch.Tensor, ...], num_classes: int, size: tuple[int, int],
                  top: int = 20) -> dict[str, Any]:  # fmt: skip
        """One image's instances (Mask2Former's rule): per query its best class (the last logit is
        "no object"), its mask (sigmoid > 0.5 at ``size``) and score = class probability x the
        mean mask probability inside the mask."""
        class_logits, mask_logits = outputs[0][0].float(), outputs[1][0].float()
        probs = class_logits.softmax(-1)[:, :num_classes]
        scores, labels = probs.max(-1)
        masks = F.interpolate(mask_logits[None], size=size, mode="bilinear", align_corners=False)[0].sigmoid()
        binary = masks > 0.5
        inside = (masks * binary).flatten(1).sum(1) / binary.flatten(1).sum(1).clamp(min=1)
        scores = scores * inside
        keep = scores.argsort(descending=True)[:top]
        return {"scores": scores[keep], "labels": labels[keep], "masks": binary[keep]}

    def update(self, meter: Any, outputs: tuple[torch.Tensor, ...], target: list[dict], dataset: Any) -> None:
        parts = getattr(dataset, "datasets", [dataset])
        categories = parts[0].categories
        for i, t in enumerate(target):
            found = self.instances(tuple(o[i : i + 1] for o in outputs), len(categories), tuple(t["orig_size"]))
            rles = [encode_mask(m.numpy()) for m in found["masks"]]
            meter.add_masks(t["image_id"], rles, found["scores"], [categories[int(c)]["id"] for c in found["labels"]])


class Classifier(ZeroShot):
    """A Hugging Face classifier trained whole: class folders and top-1, as zero-shot's."""

    task = "image-classification"


TASKS: dict[str, Any] = {
    t.task: t() for t in (Detection, Segmentation, Depth, ZeroShot, GroundedDetection, Instances, Classifier)
}
DETECTION_TASKS = ("object-detection", "zero-shot-object-detection")


# ------------------------------------------------------------------------------------ inference


def colour_depth(depth: np.ndarray) -> Image.Image:
    """A depth map as colours (near: warm, far: cool), normalised to its own range."""
    low, high = float(np.nanmin(depth)), float(np.nanmax(depth))
    t = (depth - low) / max(high - low, 1e-6)
    rgb = np.stack([1.0 - t, 1.0 - np.abs(2 * t - 1), t], -1)
    return Image.fromarray((rgb * 255).astype(np.uint8), mode="RGB")


class InferenceFiles:
    """Writes one task's inference outputs under ``results_dir`` (see :meth:`add`)."""

    def __init__(self, results_dir: Path, task: str, classes: list[str], conf_threshold: float,
                 depth_scale: float = 1000.0) -> None:  # fmt: skip
        self.root, self.task, self.classes = results_dir, task, classes
        self.threshold, self.depth_scale = conf_threshold, depth_scale
        self.records: list[dict[str, Any]] = []
        self.count = 0
        self.folders = {
            "object-detection": ("images_annotated",),
            "zero-shot-object-detection": ("images_annotated",),
            "semantic-segmentation": ("masks", "overlays"),
            "depth-estimation": ("depth", "colour"),
            "zero-shot-image-classification": (),
            "image-classification": (),
            "instance-segmentation": ("overlays",),
        }[task]
        for name in self.folders:
            (results_dir / name).mkdir(parents=True, exist_ok=True)

    def add(self, outputs: tuple[torch.Tensor, ...], paths: list[str]) -> None:
        if self.task in ("zero-shot-image-classification", "image-classification"):
            probs = outputs[0].float().softmax(-1)
            for path, row in zip(paths, probs, strict=True):
                score, index = row.max(0)
                self.records.append({"image": path, "label": self.classes[int(index)], "score": float(score)})
                self.count += 1
            return
        for i, path in enumerate(paths):
            with Image.open(path) as raw:
                image = raw.convert("RGB")
            one = tuple(o[i : i + 1] for o in outputs)
            stem = Path(path).stem
            if self.task in DETECTION_TASKS:
                self._boxes(image, one, path, stem)
            elif self.task == "instance-segmentation":
                self._instances(image, one, path, stem)
            elif self.task == "semantic-segmentation":
                mask = Segmentation.predict(one, (image.height, image.width))[0].numpy().astype(np.uint8)
                Image.fromarray(mask, mode="L").save(self.root / "masks" / f"{stem}.png")
                colours = Image.fromarray(_palette(len(self.classes))[mask])
                Image.blend(image, colours, 0.5).save(self.root / "overlays" / f"{stem}.png")
                self.records.append({"image": path, "mask": str(self.root / "masks" / f"{stem}.png")})
            else:
                from foveal.data.tasks import write_depth

                depth = Depth.predict(one, (image.height, image.width))[0].numpy()
                write_depth(self.root / "depth" / f"{stem}.png", depth, self.depth_scale)
                colour_depth(depth).save(self.root / "colour" / f"{stem}.png")
                self.records.append({"image": path, "depth": str(self.root / "depth" / f"{stem}.png"),
                                     "min_m": float(depth.min()), "max_m": float(depth.max())})  # fmt: skip
            self.count += 1

    def _boxes(self, image: Image.Image, outputs: tuple[torch.Tensor, ...], path: str, stem: str) -> None:
        found = Detection.boxes(outputs, len(self.classes))[0]
        scale = torch.tensor([image.width, image.height, image.width, image.height])
        draw = ImageDraw.Draw(image)
        kept = []
        for score, label, box in zip(found["scores"], found["labels"], found["boxes"] * scale, strict=True):
            if float(score) < self.threshold:
                continue
            x0, y0, x1, y1 = (float(v) for v in box)
            name = self.classes[int(label)]
            kept.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score), "label": name})
            draw.rectangle([x0, y0, x1, y1], outline=(255, 0, 0), width=2)
            draw.text((x0 + 2, y0 + 1), f"{name} {float(score):.2f}", fill=(255, 255, 0))
        image.save(self.root / "images_annotated" / f"{stem}.png")
        self.records.append({"image": path, "detections": kept})

    def _instances(self, image: Image.Image, outputs: tuple[torch.Tensor, ...], path: str, stem: str) -> None:
        found = Instances.instances(outputs, len(self.classes), (image.height, image.width))
        colours = _palette(len(found["scores"]) + 1)
        overlay = np.asarray(image).copy()
        kept = []
        for k, (score, label, mask) in enumerate(zip(found["scores"], found["labels"], found["masks"], strict=True)):
            if float(score) < self.threshold:
                continue
            region = mask.numpy()
            overlay[region] = (0.5 * overlay[region] + 0.5 * colours[k + 1]).astype(np.uint8)
            kept.append({"label": self.classes[int(label)], "score": float(score), "segmentation": encode_mask(region)})
        Image.fromarray(overlay).save(self.root / "overlays" / f"{stem}.png")
        self.records.append({"image": path, "instances": kept})

    def close(self) -> Path:
        path = self.root / "results.json"
        path.write_text(json.dumps(self.records, indent=1), encoding="utf-8")
        if self.task in ("zero-shot-image-classification", "image-classification"):  # TAO's result.csv too
            import csv

            with (self.root / "result.csv").open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["img_name", "pred_label", "pred_score"])
                for record in self.records:
                    writer.writerow([record["image"], record["label"], f"{record['score']:.6f}"])
        return path
