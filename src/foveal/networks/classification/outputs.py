"""Files evaluate, inference and export write in TAO's formats.

* evaluate ``result.csv``: ``img_name``, one probability column per class, ``pred_label``,
  ``pred_score``, ``gt_label`` (TAO classification_pyt's columns).
* inference ``result.csv``: ``img_name``, ``pred_label``, ``pred_score`` (TAO's), then Foveal's
  ``class_2, score_2, ...`` up to the top 5; annotated images in ``visualize/``.
* export ``labels.txt`` and ``nvdsinfer_config.yaml`` for DeepStream's nvinfer
  (``export.serialize_nvdsinfer``).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)


def write_evaluation_csv(
    path: Path, files: Sequence[Path], logits: torch.Tensor, targets: torch.Tensor, classes: list[str]
) -> Path:
    """TAO's evaluate ``result.csv``: per image its class probabilities, prediction and truth."""
    probs = logits.softmax(dim=1)
    scores, preds = probs.max(dim=1)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["img_name", *classes, "pred_label", "pred_score", "gt_label"])
        for i, file in enumerate(files):
            row = [f"{p:.6f}" for p in probs[i].tolist()]
            writer.writerow(
                [str(file), *row, classes[int(preds[i])], f"{float(scores[i]):.6f}", classes[int(targets[i])]]
            )
    return path


class InferenceWriter:
    """Writes inference's ``result.csv`` row by row and draws every ``vis_every``-th batch."""

    def __init__(self, results_dir: Path, classes: list[str], vis_every: int, topk: int = 5):
        self.classes = classes
        self.k = min(topk, len(classes))
        self.vis_every = max(1, int(vis_every))
        self.csv_path = results_dir / "result.csv"
        self.vis_dir = results_dir / "visualize"
        self.count = 0
        self._batches = 0
        self._file: Any = None
        self._writer: Any = None

    def __enter__(self) -> InferenceWriter:
        self._file = self.csv_path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        extra = [c for i in range(2, self.k + 1) for c in (f"class_{i}", f"score_{i}")]
        self._writer.writerow(["img_name", "pred_label", "pred_score", *extra])
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._file is not None:
            self._file.close()

    def add(self, paths: Sequence[str], probs: torch.Tensor) -> None:
        """One batch: image paths and their (B, C) class probabilities."""
        scores, idx = probs.topk(self.k, dim=1)
        draw = self._batches % self.vis_every == 0
        self._batches += 1
        for path, s, i in zip(paths, scores.tolist(), idx.tolist(), strict=True):
            extra = [v for j in range(1, self.k) for v in (self.classes[i[j]], f"{s[j]:.6f}")]
            self._writer.writerow([path, self.classes[i[0]], f"{s[0]:.6f}", *extra])
            if draw:
                self._draw(Path(path), self.classes[i[0]], s[0], i[0])
        self.count += len(paths)

    def _draw(self, path: Path, label: str, score: float, index: int) -> None:
        self.vis_dir.mkdir(parents=True, exist_ok=True)
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except OSError:
            logger.debug("cannot draw %s", path)
            return
        text = f"Prediction: {index}, {score:.3f}, {label}"
        canvas = ImageDraw.Draw(image)
        box = canvas.textbbox((2, 2), text)
        canvas.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        canvas.text((2, 2), text, fill=(255, 255, 255))
        # Images from different folders may share a name: keep the parent folder in the file name.
        name = f"{path.parent.name}_{path.name}" if path.parent.name else path.name
        image.save(self.vis_dir / name)


def write_nvdsinfer(
    onnx_file: Path,
    classes: list[str],
    mean: Sequence[float],
    std: Sequence[float],
    size: tuple[int, int],
    output: str,
) -> dict[str, str]:
    """DeepStream's ``labels.txt`` (``;``-separated, one line) and an nvinfer config next to the ONNX file.

    nvinfer computes ``net_scale_factor * (pixel - offset)`` per channel on 0-255 pixels; with a
    per-channel std that is only exact when the stds are equal, so the mean std is used (TAO does
    the same: 0.01735 = 1 / (255 * 0.226)).
    """
    labels = onnx_file.with_name("labels.txt")
    labels.write_text(";".join(classes) + "\n", encoding="utf-8")
    scale = 1.0 / (255.0 * (sum(std) / len(std)))
    offsets = ";".join(f"{255.0 * m:.3f}" for m in mean)
    config = onnx_file.with_name("nvdsinfer_config.yaml")
    config.write_text(
        "property:\n"
        f"  onnx-file: {onnx_file.name}\n"
        f"  labelfile-path: {labels.name}\n"
        f"  infer-dims: 3;{size[0]};{size[1]}\n"
        f"  net-scale-factor: {scale:.6f}\n"
        f"  offsets: {offsets}\n"
        "  model-color-format: 0\n"
        "  network-type: 1\n"
        "  cluster-mode: 4\n"
        f"  output-blob-names: {output}\n"
        f"  num-detected-classes: {len(classes)}\n",
        encoding="utf-8",
    )
    return {"labels": str(labels), "nvdsinfer_config": str(config)}
