"""classification actions: train, evaluate, inference, export, gen_trt_engine (TAO classification_pyt).

Every action but train rebuilds the model from the checkpoint alone (network name, resolved
config and class list travel inside it), so a spec only has to name the checkpoint; evaluate and
inference run a TensorRT engine instead when ``trt_engine`` is set (TAO-Deploy's specs).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from foveal.data import LabeledImageFolderDataset, make_loader, resolve_dataset
from foveal.data.tao_augment import TaoAugmentation, build_tao_eval_transform, build_tao_train_transform
from foveal.engine import checkpoint_artifacts, fit, load_checkpoint, resolve_resume_checkpoint
from foveal.engine.metrics import classification_report
from foveal.engine.mixup import MixupSettings
from foveal.engine.speed import apply_speed_options
from foveal.engine.supervised import ClassificationModule, OptimSettings
from foveal.engine.trainer import prepare_training, trainer_for
from foveal.errors import DatasetError
from foveal.networks.classification.classes import read_classes
from foveal.networks.classification.config import (
    AugmentationConfig,
    ClassificationConfig,
    ClassificationExportConfig,
    OptimConfig,
)
from foveal.networks.classification.legacy import migrate_config
from foveal.networks.classification.model import Classifier, build_classifier, freeze_backbone
from foveal.networks.classification.resolve import monitor_metric
from foveal.networks.registry import ActionContext, ActionResult
from foveal.networks.trt import trt_engine_action
from foveal.spec import SpecError, SpecIssue, build_config, required, to_dict
from foveal.spec.common import run_batch_size

logger = logging.getLogger(__name__)
NETWORK = "classification"
LATEST_LINK = "classifier_model_latest.pth"  # TAO's name: <results_dir>/train/classifier_model_latest.pth


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


def tao_augmentation(aug: AugmentationConfig, img_size: int) -> TaoAugmentation:
    """The spec's ``dataset.augmentation`` as the data layer's TAO pipeline switches."""
    flip, rotate, color = aug.random_flip, aug.random_rotate, aug.random_color
    return TaoAugmentation(
        img_size=img_size,
        mean=tuple(aug.mean),
        std=tuple(aug.std),
        hflip=flip.hflip_probability if flip.enable else 0.0,
        vflip=flip.vflip_probability if flip.enable else 0.0,
        randaugment=aug.random_aug.policy if aug.random_aug.enable else None,
        rotate=rotate.rotate_probability if rotate.enable else 0.0,
        angles=tuple(rotate.angle_list),
        random_crop=aug.with_random_crop,
        scale_range=(
            (aug.with_scale_random_crop.scale_range[0], aug.with_scale_random_crop.scale_range[1])
            if aug.with_scale_random_crop.enable
            else None
        ),
        blur=aug.with_random_blur,
        color=(color.brightness, color.contrast, color.saturation, color.hue) if color.enable else None,
        color_probability=color.color_probability,
        erase=aug.random_erase.erase_probability if aug.random_erase.enable else 0.0,
    )


def optim_settings(optim: OptimConfig) -> OptimSettings:
    """classification's ``train.optim`` as the engine loop's :class:`OptimSettings`."""
    params = optim.policy_params
    return OptimSettings(
        optimizer=optim.optim,
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        layer_decay=optim.layer_decay,
        momentum=optim.momentum,
        betas=(optim.betas[0], optim.betas[1]),
        scheduler=optim.policy,
        warmup_epochs=optim.warmup_epochs,
        min_lr_ratio=optim.min_lr_ratio,
        milestones=tuple(params.milestones),
        gamma=params.gamma,
        step_size=params.step_size,
        skip_names=tuple(optim.skip_names),
        nesterov=False,  # TAO's SGD: plain momentum
    )


def mixup_settings(aug: AugmentationConfig, num_classes: int, smoothing: float) -> MixupSettings | None:
    """TAO's ``mixup_cutmix`` (a coin flip between mixup and CutMix, Beta(mixup_alpha) each) with
    Foveal's extra knobs; None when off."""
    if not aug.mixup_cutmix:
        return None
    settings = MixupSettings(
        mixup_alpha=aug.mixup_alpha,
        cutmix_alpha=aug.cutmix_alpha if aug.cutmix_alpha is not None else aug.mixup_alpha,
        cutmix_minmax=(aug.cutmix_minmax[0], aug.cutmix_minmax[1]) if aug.cutmix_minmax else None,
        prob=aug.mixup_prob,
        switch_prob=aug.mixup_switch_prob,
        mode=aug.mixup_mode,
        label_smoothing=smoothing,
        num_classes=num_classes,
    )
    if not settings.enabled:
        return None
    logger.info(
        "mixup/cutmix on (alpha %g / %g, prob %g, cutmix share %g, per %s): soft-target cross entropy",
        settings.mixup_alpha,
        settings.cutmix_alpha,
        settings.prob,
        settings.switch_prob,
        settings.mode,
    )
    return settings


def _note_unused_keys(cfg: ClassificationConfig, feature_width: int) -> None:
    """One warning line per TAO key this run cannot honour (never a silent no-op)."""
    head = cfg.model.head
    if head.binary:
        logger.warning(
            "model.head.binary=true: the head has one output per class (%d), as in TAO 6.25, not one logit",
            cfg.dataset.num_classes,
        )
    if head.in_channels not in (448, feature_width):
        logger.warning(
            "model.head.in_channels=%d is not used: the head takes %s's feature width, %d",
            head.in_channels,
            cfg.model.backbone.type,
            feature_width,
        )
    if head.custom_args:
        logger.warning("model.head.custom_args is not used (TAO's linear head takes none either)")
    if cfg.dataset.train_nolabel.folder_path:
        logger.warning(
            "dataset.train_nolabel.folder_path is only read by TAO's distill action, which Foveal does not "
            "implement; training uses the labeled images"
        )


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


def _labeled(root: Path, transform: Any, classes: list[str] | None, key: str) -> LabeledImageFolderDataset:
    return LabeledImageFolderDataset(root, transform=transform, classes=classes)


def _check_num_classes(cfg: ClassificationConfig, classes: list[str], source: str) -> None:
    wanted = cfg.dataset.num_classes
    if wanted and wanted != len(classes):
        raise DatasetError(
            source,
            f"{len(classes)} classes found but dataset.num_classes={wanted}",
            f"set dataset.num_classes={len(classes)} (or 0 to take the number found)",
        )


def train(cfg: ClassificationConfig, ctx: ActionContext) -> ActionResult:
    """Fine-tune a backbone + head on a class-subfolder dataset."""
    prepare_training(cfg.train)
    data = cfg.dataset
    train_root = resolve_dataset(
        required(data.train_dataset.images_dir, "dataset.train_dataset.images_dir"), ctx.cache_dir
    )
    classes, source = read_classes(data.classes_file, data.root_dir, train_root)
    train_tf = build_tao_train_transform(tao_augmentation(data.augmentation, data.img_size))
    logger.info("train augmentation: %s", " -> ".join(type(t).__name__ for t in train_tf.transforms))
    train_set = _labeled(
        train_root,
        train_tf,
        classes,
        "dataset.train_dataset.images_dir",
    )
    _check_num_classes(cfg, train_set.classes, source or str(train_root))
    val_set = None
    if data.val_dataset.images_dir:
        val_root = resolve_dataset(data.val_dataset.images_dir, ctx.cache_dir)
        eval_tf = build_tao_eval_transform(data.img_size, data.augmentation.mean, data.augmentation.std)
        val_set = _labeled(val_root, eval_tf, train_set.classes, "dataset.val_dataset.images_dir")
    logger.info("train: %d images in %d classes from %s", len(train_set), len(train_set.classes), train_root)

    ckpt = resolve_resume_checkpoint(ctx.results_dir, cfg.train.resume_training_checkpoint_path)
    model = build_classifier(cfg.model, len(train_set.classes), data.img_size)
    _note_unused_keys(cfg, int(model.backbone.embed_dim))
    _load_pretrained(cfg, model, train_set.classes, resuming=ckpt is not None)
    freeze_backbone(model, cfg.model.backbone.freeze_backbone, list(cfg.model.backbone.freeze_blocks))
    if cfg.train.enable_ema:
        logger.info(
            "weight EMA on (decay %g): validation, evaluate, inference and export use the averaged "
            "weights; checkpoints keep both (state_dict: live, ema_state_dict: EMA)",
            cfg.train.ema_decay,
        )

    batch = data.batch_size
    train_loader = make_loader(train_set, batch, data.workers, train=True, shuffle=data.shuffle)
    val_loader = make_loader(val_set, batch, data.workers, train=False) if val_set else None
    smoothing = cfg.model.head.loss.label_smooth_val
    module = ClassificationModule(
        model,
        optim_settings(cfg.train.optim),
        label_smoothing=smoothing,
        class_weights=_class_weights(train_set, cfg.train.class_weights),
        classes=train_set.classes,
        steps_per_epoch=max(1, len(train_loader) // cfg.train.accum_grad_batches),
        mixup=mixup_settings(data.augmentation, len(train_set.classes), smoothing),
        ema_decay=cfg.train.ema_decay if cfg.train.enable_ema else None,
        topk=tuple(cfg.model.head.topk),
    )
    apply_speed_options(module, cfg.train)
    monitor, mode = monitor_metric(cfg.train.optim.monitor_name)
    if val_loader is None and monitor.startswith("val_"):
        logger.info("no validation set: the best checkpoint is picked by train_loss, not %s", monitor)
        monitor, mode = "train_loss", "min"
    trainer = trainer_for(
        cfg.train,
        results_dir=ctx.results_dir,
        network=NETWORK,
        config_dict=to_dict(cfg),
        status=ctx.status_writer,
        progress=ctx.progress,
        tracking=ctx.tracking,
        monitor=monitor,
        monitor_mode=mode,
        gradient_clip_val=cfg.train.clip_grad_norm or None,
        latest_link=LATEST_LINK,
        steps_per_epoch=len(train_loader),
    )
    fit(trainer, module, train_loader, val_loader, ckpt_path=ckpt,
        memory_hint=f"dataset.img_size={cfg.dataset.img_size}, model.backbone.type={cfg.model.backbone.type}")  # fmt: skip
    kpis = {k: float(v) for k, v in trainer.callback_metrics.items() if _is_train_kpi(k)}
    return ActionResult(kpis=kpis, artifacts=checkpoint_artifacts(ctx.results_dir))


def _is_train_kpi(name: str) -> bool:
    return name in ("train_loss", "train_top1", "val_loss") or name.startswith("val_top")


def load_classifier(path: str | Path, weights: str = "auto") -> tuple[Classifier, Any, list[str]]:
    """Rebuild a trained classifier from its checkpoint: (model in eval mode, config, classes).

    Args:
        path: a classification checkpoint.
        weights: ``auto`` (the EMA weights when the checkpoint has them, else the live ones),
            ``ema`` or ``live``.
    """
    from foveal.errors import CheckpointError

    ckpt = load_checkpoint(path, network=NETWORK)
    cfg = build_config(ClassificationConfig, migrate_config(ckpt["config"]))
    classes = list(ckpt.get("classes") or [])
    model = build_classifier(cfg.model, len(classes), cfg.dataset.img_size)
    ema = ckpt.get("ema_state_dict")
    if weights == "ema" and ema is None:
        raise CheckpointError(f"{path} has no EMA weights (trained without train.enable_ema)")
    use_ema = ema is not None and weights != "live"
    if use_ema and ema is not None:
        logger.info("using the EMA weights of %s (trained with train.enable_ema)", path)
        state = dict(ema)
    else:
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.weights_kind = "ema" if use_ema else "live"  # reported by evaluate and export
    return model.eval(), cfg, classes


@dataclass
class _Scorer:
    """What evaluate / inference run: the checkpoint's classifier, a TensorRT engine
    (``<action>.trt_engine``), or both, the checkpoint then giving the engine's agreement."""

    classes: list[str] | None  # None: the class folders' (an engine without its metadata)
    img_size: int | tuple[int, int]
    mean: list[float]
    std: list[float]
    weights: str  # "ema" | "live" | "tensorrt fp16" ...
    model: Classifier | None = None
    engine: Any = None  # an EngineLogits

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C) logits (an engine ending in a softmax: log-probabilities, the same ranking and loss)."""
        if self.engine is not None:
            return self.engine(images)
        assert self.model is not None
        return self.model(images).float()

    def agreement(self) -> dict[str, Any] | None:
        return self.engine.agreement() if self.engine is not None else None


def _scorer(cfg: ClassificationConfig, action: str) -> _Scorer:
    """`_Scorer` of ``evaluate`` / ``inference``: preprocessing and classes from the checkpoint, or
    from the engine's ``<engine>.json`` (else the spec's ``dataset``) when only an engine is given."""
    from foveal.export.trt_runtime import meta_value
    from foveal.networks.trt import EngineLogits, open_engine

    section = getattr(cfg, action)
    engine = open_engine(section, action, NETWORK)
    model = trained_cfg = classes = None
    if section.checkpoint or engine is None:
        model, trained_cfg, classes = load_classifier(required(section.checkpoint, f"{action}.checkpoint"))
    if engine is None:
        assert model is not None and trained_cfg is not None
        aug = trained_cfg.dataset.augmentation
        return _Scorer(classes, trained_cfg.dataset.img_size, list(aug.mean), list(aug.std), model.weights_kind, model)
    meta, aug = engine.metadata, cfg.dataset.augmentation
    shape = meta_value(meta, "input_shape")
    size = (int(shape[1]), int(shape[2])) if shape else cfg.dataset.img_size
    engine_classes = meta_value(meta, "classes")
    if classes is not None and engine_classes is not None and list(engine_classes) != classes:
        raise SpecError(
            SpecIssue(
                f"{action}.trt_engine",
                f"the engine's classes {engine_classes[:5]} differ from {action}.checkpoint's {classes[:5]}",
                "build the engine from this checkpoint's export, or leave the checkpoint empty",
            )
        )
    if engine_classes is None and classes is None:
        engine_classes = read_classes(cfg.dataset.classes_file, cfg.dataset.root_dir, Path("."))[0]
    return _Scorer(
        engine_classes if engine_classes is not None else classes,
        size,
        list(meta_value(meta, "mean", aug.mean)),
        list(meta_value(meta, "std", aug.std)),
        f"tensorrt {engine.data_type or ''}".strip(),
        model,
        EngineLogits(engine, model),
    )


def _evaluation_images(cfg: ClassificationConfig) -> str:
    """``dataset.val_dataset.images_dir``, or TAO-Deploy's ``dataset.test_dataset.images_dir``."""
    data = cfg.dataset
    return required(data.val_dataset.images_dir or data.test_dataset.images_dir, "dataset.val_dataset.images_dir")


def _predict(scorer: _Scorer, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    logits, targets = [], []
    with torch.inference_mode():
        for images, target in loader:
            logits.append(scorer(images))
            targets.append(target)
    return torch.cat(logits), torch.cat(targets)


def evaluate(cfg: ClassificationConfig, ctx: ActionContext) -> ActionResult:
    """Top-k accuracy, per-class precision/recall/F1, confusion matrix (JSON + PNG), loss, and
    TAO's ``result.csv`` (per-image class probabilities, prediction and truth). On
    ``evaluate.trt_engine`` the engine's; with a checkpoint too, the TensorRT-vs-PyTorch agreement."""
    from foveal.networks.classification.outputs import write_evaluation_csv
    from foveal.networks.classification.plots import draw_confusion_matrix
    from foveal.networks.trt import agreement_kpis

    scorer = _scorer(cfg, "evaluate")
    root = resolve_dataset(_evaluation_images(cfg), ctx.cache_dir)
    dataset = _labeled(
        root,
        build_tao_eval_transform(scorer.img_size, scorer.mean, scorer.std),
        scorer.classes,
        "dataset.val_dataset.images_dir",
    )
    classes = dataset.classes
    batch = run_batch_size(cfg.evaluate, cfg.dataset.batch_size)
    loader = make_loader(dataset, batch, cfg.dataset.workers, train=False)
    logits, targets = _predict(scorer, loader)
    report = classification_report(logits, targets, classes, topk=tuple(cfg.model.head.topk))
    report["weights"] = scorer.weights
    trt = scorer.agreement()
    if trt is not None:
        report["tensorrt_vs_pytorch"] = trt
    results = ctx.results_dir / "results.json"
    results.write_text(json.dumps(report, indent=2))
    table = write_evaluation_csv(ctx.results_dir / "result.csv", dataset.files, logits, targets, classes)
    png = draw_confusion_matrix(
        report["confusion_matrix"],
        classes,
        ctx.results_dir / "confusion_matrix.png",
        title=f"top-1 {report['top1']:.4f} on {report['num_images']} images ({scorer.weights} weights)",
    )
    kpis: dict[str, float] = {
        k: v for k, v in report.items() if (k.startswith("top") or k in ("loss", "macro_f1")) and isinstance(v, float)
    }
    kpis.update(agreement_kpis(trt))
    return ActionResult(
        kpis=kpis,
        artifacts={"results": str(results), "result_csv": str(table), "confusion_matrix": str(png)},
        message=f"top-1 {report['top1']:.4f} on {len(dataset)} images"
        + (f" ({scorer.weights} engine)" if scorer.engine is not None else ""),
    )


def inference(cfg: ClassificationConfig, ctx: ActionContext) -> ActionResult:
    """TAO's ``result.csv`` (image, predicted class, score; then Foveal's top-k columns) for an
    image file, a folder or an archive, and annotated images of every
    ``inference.vis_after_n_batches``-th batch in ``visualize/``; on ``inference.trt_engine``
    the engine's (with a checkpoint too: ``tensorrt_vs_pytorch.json``)."""
    from foveal.data.files import resolve_image_inputs
    from foveal.networks.classification.outputs import InferenceWriter
    from foveal.networks.trt import agreement_artifacts, agreement_kpis

    scorer = _scorer(cfg, "inference")
    transform = build_tao_eval_transform(scorer.img_size, scorer.mean, scorer.std)
    dataset = resolve_image_inputs(
        required(cfg.dataset.test_dataset.images_dir, "dataset.test_dataset.images_dir"),
        ctx.cache_dir,
        transform,
    )
    classes = scorer.classes  # _scorer already fell back to dataset.classes_file for an engine
    if classes is None:
        raise SpecError(
            SpecIssue(
                "dataset.classes_file",
                f"{cfg.inference.trt_engine} has no .json beside it naming its classes",
                "set dataset.classes_file (one class per line, in training order)",
            )
        )
    batch = run_batch_size(cfg.inference, cfg.dataset.batch_size)
    writer = InferenceWriter(ctx.results_dir, classes, cfg.inference.vis_after_n_batches)
    with writer, torch.inference_mode():
        for images, paths in make_loader(dataset, batch, cfg.dataset.workers, train=False):
            writer.add(paths, scorer(images).softmax(dim=1))
    artifacts = {"results": str(writer.csv_path), "visualize": str(writer.vis_dir)}
    trt = scorer.agreement()
    artifacts.update(agreement_artifacts(trt, ctx.results_dir))
    return ActionResult(
        kpis={"num_images": float(writer.count), **agreement_kpis(trt)},
        artifacts=artifacts,
        message=f"{writer.count} images -> {writer.csv_path}",
    )


def _export_size(section: ClassificationExportConfig, trained_size: int) -> tuple[int, int]:
    height = section.input_height or trained_size
    width = section.input_width or trained_size
    if (height, width) != (trained_size, trained_size):
        logger.info("exporting at %dx%d (trained at %d)", width, height, trained_size)
    return height, width


def export(cfg: ClassificationConfig, ctx: ActionContext) -> ActionResult:
    """ONNX (optionally ending in a softmax) with class names in its metadata, checked against
    PyTorch with ONNX Runtime; with ``serialize_nvdsinfer``, DeepStream's labels and config too."""
    from foveal.export import check_input_channels, export_batch_settings, export_onnx, note_export_device
    from foveal.networks.classification.outputs import write_nvdsinfer

    section = cfg.export
    note_export_device(section.on_cpu, section.gpu_id)
    check_input_channels(section.input_channel)
    model, trained_cfg, classes = load_classifier(required(section.checkpoint, "export.checkpoint"))
    weights = model.weights_kind
    aug = trained_cfg.dataset.augmentation
    softmax = bool(section.softmax)
    output = "probabilities" if softmax else "logits"
    graph = torch.nn.Sequential(model, torch.nn.Softmax(dim=-1)).eval() if softmax else model
    onnx_file = Path(section.onnx_file or ctx.results_dir / f"{NETWORK}.onnx")
    batch, dynamic = export_batch_settings(section.batch_size)
    height, width = _export_size(section, trained_cfg.dataset.img_size)
    example = torch.randn(batch, section.input_channel, height, width)
    metadata = {
        "network": NETWORK,
        "classes": json.dumps(classes),
        "input_size": str(trained_cfg.dataset.img_size),
        "input_shape": json.dumps([section.input_channel, height, width]),
        "mean": json.dumps(list(aug.mean)),
        "std": json.dumps(list(aug.std)),
        "output": output,
        "weights": weights,
    }
    report = export_onnx(
        graph,
        example,
        onnx_file,
        opset_version=section.opset_version,
        dynamic_batch=dynamic,
        input_names=("input",),
        output_names=(output,),
        metadata=metadata,
        verbose=section.verbose,
    )
    artifacts = {"onnx": str(onnx_file)}
    if section.serialize_nvdsinfer:
        artifacts.update(write_nvdsinfer(onnx_file, classes, aug.mean, aug.std, (height, width), output))
    diff = max(report.max_abs_diff.values()) if report.max_abs_diff else float("nan")
    return ActionResult(
        kpis={"onnx_max_abs_diff": diff},
        artifacts=artifacts,
        message=f"exported {onnx_file} ({output}, {weights} weights; ONNX Runtime vs PyTorch max |diff| {diff:.2e})",
    )


def calibration_preprocess(cfg: ClassificationConfig, size: tuple[int, int]) -> Any:
    """INT8 calibration input: evaluation's squash resize to the engine's input, then the
    spec's normalisation (TAO-Deploy calibrates on the same preprocessing)."""
    from PIL import Image

    from foveal.data.tao_augment import SquashResize
    from foveal.data.transforms import Compose, Normalize, ToTensor

    aug = cfg.dataset.augmentation
    transform = Compose([SquashResize(size), ToTensor(), Normalize(aug.mean, aug.std)])

    def load(path: Path) -> torch.Tensor:
        with Image.open(path) as image:
            return transform(image.convert("RGB"))

    return load


gen_trt_engine = trt_engine_action(NETWORK, preprocess=calibration_preprocess)
