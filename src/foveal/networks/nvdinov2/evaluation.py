"""Frozen-feature evaluation of an NVDINOv2 backbone: weighted kNN and a linear probe.

kNN on the L2-normalised CLS features and a linear probe on the concatenation of the CLS token
and the mean patch token (DINOv2's linear evaluation), both from :mod:`foveal.engine.features`,
the implementation every network evaluates frozen features with.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from foveal.engine.features import Features, extract_features, knn_top1, linear_probe_top1, stratified_split
from foveal.networks.nvdinov2.config import NVDINOv2Config
from foveal.networks.registry import ActionContext, ActionResult
from foveal.spec import SpecError, SpecIssue, required
from foveal.spec.common import run_batch_size

logger = logging.getLogger(__name__)
__all__ = ["evaluate", "knn_top1", "linear_probe_top1", "stratified_split"]


def _cls(features: Features) -> torch.Tensor:
    if features.cls is None:  # nvdinov2 backbones are ViTs: never
        raise ValueError("an nvdinov2 backbone without a class token")
    return features.cls


# ------------------------------------------------------------------------------ action


def _reference_set(
    cfg: NVDINOv2Config, ctx: ActionContext, transform: Any, classes: list[str]
) -> tuple[Any, str]:
    """Labeled training images for kNN/probe, or (None, why not) when they are not usable."""
    from foveal.data import DatasetError, LabeledImageFolderDataset, resolve_dataset

    uri = cfg.dataset.train_dataset.images_dir
    if not uri:
        return None, "dataset.train_dataset.images_dir is empty"
    try:
        return LabeledImageFolderDataset(resolve_dataset(uri, ctx.cache_dir), transform, classes=classes), ""
    except DatasetError as exc:
        return None, f"dataset.train_dataset.images_dir is not labeled like the val set ({exc})"


def _features(
    cfg: NVDINOv2Config, ctx: ActionContext, loaded: Any
) -> tuple[Features, Features, str, list[str]]:
    """(reference, evaluated, how the reference was chosen, class names)."""
    from foveal.data import LabeledImageFolderDataset, make_loader, resolve_dataset
    from foveal.networks.nvdinov2.inference import eval_transform

    e = cfg.evaluate
    transform = eval_transform(loaded)
    val_set = LabeledImageFolderDataset(
        resolve_dataset(
            required(cfg.dataset.val_dataset.images_dir, "dataset.val_dataset.images_dir"), ctx.cache_dir
        ),
        transform,
    )
    batch, workers = run_batch_size(e, cfg.dataset.batch_size), cfg.dataset.workers

    def features(dataset: Any) -> Features:  # one ordered pass over the frozen backbone
        loader = make_loader(dataset, batch, workers, train=False, persistent=False)
        return extract_features(loaded.backbone, loader)

    val = features(val_set)
    ref_set, why = _reference_set(cfg, ctx, transform, val_set.classes)
    if ref_set is not None:
        ref = features(ref_set)
        return ref, val, "dataset.train_dataset.images_dir", val_set.classes
    ref_rows, val_rows = stratified_split(val.labels().tolist(), e.reference_fraction, e.seed)
    if not ref_rows or not val_rows:
        raise SpecError(
            SpecIssue(
                "dataset.val_dataset.images_dir",
                f"{len(val_set)} images are too few to split into reference and evaluated images",
                "add images or set dataset.train_dataset.images_dir to labeled training images",
            )
        )
    logger.info("evaluate: kNN reference is a split of the val set: %s", why)
    how = f"{e.reference_fraction:g} of dataset.val_dataset.images_dir per class (seed {e.seed})"
    return val.take(ref_rows), val.take(val_rows), how, val_set.classes


def evaluate(cfg: NVDINOv2Config, ctx: ActionContext) -> ActionResult:
    """kNN top-1 and linear-probe top-1 of the frozen backbone on labeled images -> results.json.

    The reference (training) side is ``dataset.train_dataset.images_dir`` when it has the
    val set's class folders, else a stratified ``evaluate.reference_fraction`` of the val set
    (seeded by ``evaluate.seed``); the log and results.json say which.
    """
    from foveal.networks.nvdinov2.inference import EngineLoaded, input_size, load_for
    from foveal.networks.trt import agreement_kpis

    e = cfg.evaluate
    loaded = load_for(cfg, "evaluate")
    ref, val, reference, classes = _features(cfg, ctx, loaded)
    ref_cls, val_cls = _cls(ref), _cls(val)
    knn = knn_top1(ref_cls, ref.labels(), val_cls, val.labels(), k=e.knn_k, temperature=e.knn_temperature)
    probe = None
    if e.linear_probe_steps > 0:
        probe = linear_probe_top1(
            torch.cat([ref_cls, ref.avg], dim=1),
            ref.labels(),
            torch.cat([val_cls, val.avg], dim=1),
            val.labels(),
            steps=e.linear_probe_steps,
            weight_decay=e.linear_probe_weight_decay,
            seed=e.seed,
        )
    report: dict[str, Any] = {
        "knn_top1": knn,
        "linear_probe_top1": probe,
        "k": e.knn_k,
        "temperature": e.knn_temperature,
        "linear_probe": f"L-BFGS, {e.linear_probe_steps} steps on [CLS, mean patch] features"
        if probe is not None
        else "off",
        "num_reference": len(ref.extras),
        "num_evaluated": len(val.extras),
        "num_classes": len(classes),
        "classes": classes,
        "reference": reference,
        "input_size": input_size(loaded),
        "checkpoint": str(loaded.path),
        "backbone": f"{loaded.kind} {loaded.arch}",
    }
    trt = loaded.backbone.agreement() if isinstance(loaded, EngineLoaded) else None
    if isinstance(loaded, EngineLoaded):
        report["trt_engine"] = str(loaded.path)
    if trt is not None:
        report["tensorrt_vs_pytorch"] = trt
    out = ctx.results_dir / "results.json"
    out.write_text(json.dumps(report, indent=2))
    kpis = {"knn_top1": knn} | ({"linear_probe_top1": probe} if probe is not None else {}) | agreement_kpis(trt)
    probe_text = f", linear-probe top-1 {probe:.4f}" if probe is not None else ""
    return ActionResult(
        kpis=kpis,
        artifacts={"results": str(out)},
        message=f"kNN top-1 {knn:.4f} (k={e.knn_k}, T={e.knn_temperature:g}){probe_text} on "
        f"{len(val.extras)} images, {len(ref.extras)} reference images",
    )
