"""classification actions: train, evaluate, inference, export, gen_trt_engine.

Every action but train rebuilds the model from the checkpoint alone (network name, resolved
config and class list travel inside it), so a spec only has to name the checkpoint.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from foveal.data import (
    Compose,
    LabeledImageFolderDataset,
    build_eval_transform,
    build_train_transform,
    make_loader,
    resolve_dataset,
)
from foveal.engine import checkpoint_artifacts, fit, load_checkpoint, resolve_resume_checkpoint
from foveal.engine.metrics import classification_report
from foveal.engine.mixup import MixupSettings
from foveal.engine.supervised import ClassificationModule, OptimSettings
from foveal.engine.trainer import trainer_for
from foveal.networks.classification.config import AugmentationConfig, ClassificationConfig, OptimConfig
from foveal.networks.classification.model import Classifier, build_classifier, freeze_backbone
from foveal.networks.registry import ActionContext, ActionResult
from foveal.networks.trt import trt_engine_action
from foveal.spec import build_config, required, to_dict

logger = logging.getLogger(__name__)
NETWORK = "classification"


def _class_weights(dataset: LabeledImageFolderDataset, mode: str) -> torch.Tensor | None:
    per_class = dataset.class_counts()
    counts = torch.tensor([per_class[c] for c in dataset.classes], dtype=torch.float)
    if counts.min() > 0 and counts.max() / counts.min() >= 3:
        logger.warning(
            "imbalanced training set: %s", dict(zip(dataset.classes, counts.int().tolist(), strict=True))
        )
    if mode != "auto":
        return None
    weights = counts.sum() / (len(counts) * counts.clamp(min=1))
    return weights / weights.mean()


def _train_transform(aug: AugmentationConfig) -> Compose:
    """Random resized crop, flip, colour jitter or RandAugment (timm's recipe: not both), normalise."""
    from foveal.data import RandAugment, ToTensor

    jitter = aug.color_jitter
    if aug.randaugment and jitter > 0:
        logger.info("RandAugment %s replaces the colour jitter (%.2f)", aug.randaugment, jitter)
        jitter = 0.0
    transform = build_train_transform(
        aug.input_size,
        aug.mean,
        aug.std,
        scale=(aug.scale[0], aug.scale[1]),
        ratio=(aug.ratio[0], aug.ratio[1]),
        hflip=aug.hflip,
        color_jitter=jitter,
    )
    if aug.randaugment:
        at = next(i for i, t in enumerate(transform.transforms) if isinstance(t, ToTensor))
        transform.transforms.insert(at, RandAugment(aug.randaugment))
    return transform


def _optim_settings(optim: OptimConfig) -> OptimSettings:
    """classification's ``train.optim`` as the engine loop's :class:`OptimSettings`."""
    return OptimSettings(
        optimizer=optim.optimizer,
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        layer_decay=optim.layer_decay,
        momentum=optim.momentum,
        scheduler=optim.scheduler,
        warmup_epochs=optim.warmup_epochs,
        min_lr_ratio=optim.min_lr_ratio,
        milestones=tuple(optim.milestones),
        gamma=optim.gamma,
    )


def _mixup_settings(aug: AugmentationConfig, num_classes: int) -> MixupSettings | None:
    settings = MixupSettings.from_augmentation(aug, num_classes, aug.label_smoothing)
    if settings is None:
        return None
    minmax = settings.cutmix_minmax
    logger.info(
        "mixup alpha %g, cutmix alpha %g%s (prob %g, switch %g, per %s): soft-target cross entropy; "
        "train_top1 counts the dominant class of each mixed target",
        aug.mixup,
        aug.cutmix,
        f", cutmix box {list(minmax)}" if minmax else "",
        aug.mixup_prob,
        aug.mixup_switch_prob,
        aug.mixup_mode,
    )
    return settings


def _load_pretrained(
    cfg: ClassificationConfig, model: Classifier, classes: list[str], resuming: bool
) -> None:
    """Start from model.backbone.pretrained_backbone_path (backbone) or train.pretrained_model_path
    (backbone, and the head of a classification checkpoint with the same classes)."""
    from foveal.engine.pretrained import load_pretrained

    backbone_path = cfg.model.backbone.pretrained_backbone_path
    model_path = cfg.train.pretrained_model_path
    if not (backbone_path or model_path):
        return
    if resuming:
        logger.info("resuming: the pretrained weights are not re-read (the checkpoint holds the weights)")
        return
    key = "model.backbone.pretrained_backbone_path" if backbone_path else "train.pretrained_model_path"
    load_pretrained(
        model,
        required(backbone_path or model_path, key),
        cfg.model.backbone.type,
        key=key,
        with_head=bool(model_path),
        classes=classes,
    )


def train(cfg: ClassificationConfig, ctx: ActionContext) -> ActionResult:
    """Fine-tune a backbone + head on a class-subfolder dataset."""
    import lightning as L

    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    aug = cfg.dataset.augmentation
    train_root = resolve_dataset(
        required(cfg.dataset.train_dataset.images_dir, "dataset.train_dataset.images_dir"), ctx.cache_dir
    )
    train_set = LabeledImageFolderDataset(train_root, transform=_train_transform(aug))
    val_set = None
    if cfg.dataset.val_dataset.images_dir:
        val_root = resolve_dataset(cfg.dataset.val_dataset.images_dir, ctx.cache_dir)
        val_tf = build_eval_transform(aug.input_size, aug.mean, aug.std)
        val_set = LabeledImageFolderDataset(val_root, transform=val_tf, classes=train_set.classes)
    logger.info("train: %d images in %d classes from %s", len(train_set), len(train_set.classes), train_root)

    ckpt = resolve_resume_checkpoint(ctx.results_dir, cfg.train.resume_training_checkpoint_path)
    model = build_classifier(cfg.model, len(train_set.classes), aug.input_size)
    _load_pretrained(cfg, model, train_set.classes, resuming=ckpt is not None)
    freeze_backbone(model, cfg.model.backbone.freeze, list(cfg.model.backbone.freeze_blocks))
    ema = cfg.train.ema
    if ema.enable:
        logger.info(
            "weight EMA on (decay %g): validation, evaluate, inference and export use the averaged "
            "weights; checkpoints keep both (state_dict: live, ema_state_dict: EMA)",
            ema.decay,
        )

    batch = cfg.dataset.batch_size
    train_loader = make_loader(train_set, batch, cfg.dataset.workers, train=True)
    val_loader = make_loader(val_set, batch, cfg.dataset.workers, train=False) if val_set else None
    module = ClassificationModule(
        model,
        _optim_settings(cfg.train.optim),
        label_smoothing=aug.label_smoothing,
        class_weights=_class_weights(train_set, cfg.train.class_weights),
        classes=train_set.classes,
        steps_per_epoch=max(1, len(train_loader) // cfg.train.accum_grad_batches),
        mixup=_mixup_settings(aug, len(train_set.classes)),
        ema_decay=ema.decay if ema.enable else None,
    )
    trainer = trainer_for(
        cfg.train,
        results_dir=ctx.results_dir,
        network=NETWORK,
        config_dict=to_dict(cfg),
        status=ctx.status_writer,
        progress=ctx.progress,
        monitor="val_top1" if val_loader is not None else "train_loss",
        monitor_mode="max" if val_loader is not None else "min",
        gradient_clip_val=cfg.train.clip_grad_norm or None,
        steps_per_epoch=len(train_loader),
    )
    fit(trainer, module, train_loader, val_loader, ckpt_path=ckpt)
    kpis = {k: float(v) for k, v in trainer.callback_metrics.items() if k in _TRAIN_KPIS}
    return ActionResult(kpis=kpis, artifacts=checkpoint_artifacts(ctx.results_dir))


_TRAIN_KPIS = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5")


def load_classifier(path: str | Path, weights: str = "auto") -> tuple[Classifier, Any, list[str]]:
    """Rebuild a trained classifier from its checkpoint: (model in eval mode, config, classes).

    Args:
        path: a classification checkpoint.
        weights: ``auto`` (the EMA weights when the checkpoint has them, else the live ones),
            ``ema`` or ``live``.
    """
    from foveal.errors import CheckpointError
    from foveal.networks.classification.config import ClassificationConfig

    ckpt = load_checkpoint(path, network=NETWORK)
    cfg = build_config(ClassificationConfig, ckpt["config"])
    classes = list(ckpt.get("classes") or [])
    model = build_classifier(cfg.model, len(classes), cfg.dataset.augmentation.input_size)
    ema = ckpt.get("ema_state_dict")
    if weights == "ema" and ema is None:
        raise CheckpointError(f"{path} has no EMA weights (trained without train.ema.enable)")
    use_ema = ema is not None and weights != "live"
    if use_ema and ema is not None:
        logger.info("using the EMA weights of %s (trained with train.ema.enable)", path)
        state = dict(ema)
    else:
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.weights_kind = "ema" if use_ema else "live"  # reported by evaluate and export
    return model.eval(), cfg, classes


def _predict(model: Classifier, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    logits, targets = [], []
    with torch.inference_mode():
        for images, target in loader:
            logits.append(model(images).float())
            targets.append(target)
    return torch.cat(logits), torch.cat(targets)


def evaluate(cfg: ClassificationConfig, ctx: ActionContext) -> ActionResult:
    """Top-1/top-5, per-class precision/recall/F1, confusion matrix (JSON + PNG) and loss."""
    from foveal.networks.classification.plots import draw_confusion_matrix

    model, trained_cfg, classes = load_classifier(required(cfg.evaluate.checkpoint, "evaluate.checkpoint"))
    aug = trained_cfg.dataset.augmentation
    root = resolve_dataset(
        required(cfg.dataset.val_dataset.images_dir, "dataset.val_dataset.images_dir"), ctx.cache_dir
    )
    dataset = LabeledImageFolderDataset(
        root, transform=build_eval_transform(aug.input_size, aug.mean, aug.std), classes=classes
    )
    batch = cfg.evaluate.batch_size if cfg.evaluate.batch_size > 0 else cfg.dataset.batch_size
    logits, targets = _predict(model, make_loader(dataset, batch, cfg.dataset.workers, train=False))
    report = classification_report(logits, targets, classes)
    report["weights"] = model.weights_kind
    results = ctx.results_dir / "results.json"
    results.write_text(json.dumps(report, indent=2))
    png = draw_confusion_matrix(
        report["confusion_matrix"],
        classes,
        ctx.results_dir / "confusion_matrix.png",
        title=f"top-1 {report['top1']:.4f} on {report['num_images']} images ({model.weights_kind} weights)",
    )
    kpis: dict[str, float] = {k: report[k] for k in ("top1", "top5", "loss", "macro_f1") if k in report}
    return ActionResult(
        kpis=kpis,
        artifacts={"results": str(results), "confusion_matrix": str(png)},
        message=f"top-1 {report['top1']:.4f} on {len(dataset)} images",
    )


def inference(cfg: ClassificationConfig, ctx: ActionContext) -> ActionResult:
    """Top-k classes and scores per image -> results.csv, for an image file, a folder or an archive."""
    from foveal.data.files import resolve_image_inputs

    model, trained_cfg, classes = load_classifier(required(cfg.inference.checkpoint, "inference.checkpoint"))
    aug = trained_cfg.dataset.augmentation
    transform = build_eval_transform(aug.input_size, aug.mean, aug.std)
    dataset = resolve_image_inputs(
        required(cfg.dataset.test_dataset.images_dir, "dataset.test_dataset.images_dir"),
        ctx.cache_dir,
        transform,
    )
    batch = cfg.inference.batch_size if cfg.inference.batch_size > 0 else cfg.dataset.batch_size
    k = min(5, len(classes))
    out = ctx.results_dir / "results.csv"
    with out.open("w", newline="") as f, torch.inference_mode():
        writer = csv.writer(f)
        writer.writerow(["path"] + [c for i in range(k) for c in (f"class_{i + 1}", f"score_{i + 1}")])
        for images, paths in make_loader(dataset, batch, cfg.dataset.workers, train=False):
            scores, idx = model(images).float().softmax(dim=1).topk(k, dim=1)
            for p, s, i in zip(paths, scores.tolist(), idx.tolist(), strict=True):
                writer.writerow([p] + [v for j in range(k) for v in (classes[i[j]], f"{s[j]:.6f}")])
    return ActionResult(
        kpis={"num_images": float(len(dataset))},  # type: ignore[arg-type]  # a map-style dataset
        artifacts={"results": str(out)},
        message=f"{len(dataset)} images -> {out}",  # type: ignore[arg-type]
    )


def export(cfg: ClassificationConfig, ctx: ActionContext) -> ActionResult:
    """ONNX (optionally ending in a softmax) with class names in its metadata, checked against
    PyTorch with ONNX Runtime."""
    from foveal.export import export_batch_settings, export_onnx

    model, trained_cfg, classes = load_classifier(required(cfg.export.checkpoint, "export.checkpoint"))
    weights = model.weights_kind
    aug = trained_cfg.dataset.augmentation
    softmax = bool(cfg.export.softmax)
    output = "probabilities" if softmax else "logits"
    graph = torch.nn.Sequential(model, torch.nn.Softmax(dim=-1)).eval() if softmax else model
    onnx_file = Path(cfg.export.onnx_file or ctx.results_dir / f"{NETWORK}.onnx")
    batch, dynamic = export_batch_settings(cfg.export.batch_size)
    example = torch.randn(batch, cfg.export.input_channel, aug.input_size, aug.input_size)
    metadata = {
        "network": NETWORK,
        "classes": json.dumps(classes),
        "input_size": str(aug.input_size),
        "mean": json.dumps(list(aug.mean)),
        "std": json.dumps(list(aug.std)),
        "output": output,
        "weights": weights,
    }
    report = export_onnx(
        graph,
        example,
        onnx_file,
        opset_version=cfg.export.opset_version,
        dynamic_batch=dynamic,
        input_names=("input",),
        output_names=(output,),
        metadata=metadata,
    )
    diff = max(report.max_abs_diff.values()) if report.max_abs_diff else float("nan")
    return ActionResult(
        kpis={"onnx_max_abs_diff": diff},
        artifacts={"onnx": str(onnx_file)},
        message=f"exported {onnx_file} ({output}, {weights} weights; ONNX Runtime vs PyTorch max |diff| {diff:.2e})",
    )


gen_trt_engine = trt_engine_action(NETWORK)
