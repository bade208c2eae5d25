"""mae actions: train (pretrain | finetune), evaluate, inference, export, gen_trt_engine.

Every action but train rebuilds the model from the checkpoint alone: the network name, resolved
spec, stage and (finetune) class list travel inside it, so evaluate / inference / export work on
either stage's checkpoint and only need ``*.checkpoint`` (``--parent`` fills it).

Handoff: ``train --parent <pretrain job> train.stage=finetune`` starts from the parent's selected
checkpoint (``--parent-checkpoint``, best by default) as ``train.pretrained_model_path``; a job
resumes only itself.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from foveal.data import (
    ImageFolderDataset,
    LabeledImageFolderDataset,
    build_eval_transform,
    make_loader,
    resolve_dataset,
)
from foveal.engine import checkpoint_artifacts, fit, load_checkpoint, resolve_resume_checkpoint
from foveal.engine.online_eval import LearningWatch, OnlineEvaluation
from foveal.engine.speed import apply_speed_options
from foveal.engine.trainer import prepare_training, trainer_for
from foveal.errors import CheckpointError, DatasetError
from foveal.networks.mae import checkpoints
from foveal.networks.mae.config import DEFAULT_BACKBONE_MULTIPLIER, MAEConfig, input_size_issue
from foveal.networks.mae.models import (
    EncoderFeatures,
    build_finetune_model,
    build_pretrain_model,
    encoder_of,
    is_hiera,
)
from foveal.networks.mae.module import (
    MAEFinetuneModule,
    MAEPretrainModule,
    mixup_settings_from_mae,
    optim_settings_from_mae,
)
from foveal.networks.mae.transforms import finetune_transform, pretrain_transform
from foveal.networks.registry import ActionContext, ActionResult
from foveal.networks.trt import trt_engine_action
from foveal.spec import SpecError, SpecIssue, required, to_dict
from foveal.spec.common import run_batch_size

logger = logging.getLogger(__name__)
WATCH_HINTS = {
    "collapse": "Try a lower train.optim.lr, a longer train.optim.warmup_epochs, or train.norm_pix_loss=true.",
    "knn_regressed": "Try a lower train.optim.lr or a higher train.mask_ratio (MAE: 0.75).",
}
NETWORK = "mae"
_TRAIN_KPIS = (
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "val_knn_top1",
    "val_feature_std",
    "val_effective_rank",
)
GRID_IMAGES = 8  # images in the inference reconstruction grid


# ------------------------------------------------------------------------------------ train


def train(cfg: MAEConfig, ctx: ActionContext) -> ActionResult:
    """Pretrain (masked reconstruction on unlabeled images) or fine-tune (classification)."""
    prepare_training(cfg.train)
    resume, start = _resume_and_start(cfg, ctx)
    if cfg.train.stage == "pretrain":
        module, train_loader, val_loader, monitor = _pretrain_setup(
            cfg, ctx, start if resume is None else None
        )
    else:
        module, train_loader, val_loader, monitor = _finetune_setup(
            cfg, ctx, start if resume is None else None
        )
    trainer = _trainer(cfg, ctx, len(train_loader), *monitor)
    fit(
        trainer, module, train_loader, val_loader, ckpt_path=resume,
        memory_hint=f"dataset.augmentation.input_size={cfg.dataset.augmentation.input_size}, model.arch={cfg.model.arch}",
    )  # fmt: skip
    kpis = {k: float(v) for k, v in trainer.callback_metrics.items() if k in _TRAIN_KPIS}
    return ActionResult(kpis=kpis, artifacts=checkpoint_artifacts(ctx.results_dir))


def _resume_and_start(cfg: MAEConfig, ctx: ActionContext) -> tuple[Path | None, str | None]:
    """(full checkpoint to resume this job from, weights to start from) for this run.

    Resume is only for the same job (its own results folder, or
    ``train.resume_training_checkpoint_path``) and the same stage; a job of another stage is a
    start (``train.pretrained_model_path``, which ``--parent <pretrain job>`` fills).
    """
    explicit = cfg.train.resume_training_checkpoint_path
    resume = resolve_resume_checkpoint(ctx.results_dir, explicit)
    if resume is None:
        return None, cfg.train.pretrained_model_path
    stage = checkpoints.stage_of(load_checkpoint(resume, network=NETWORK), resume)
    if stage != cfg.train.stage:
        key = "train.resume_training_checkpoint_path" if explicit else "results_dir"
        raise CheckpointError(
            f"{key}: {resume} is a mae {stage} checkpoint; resuming train.stage={cfg.train.stage} needs a "
            f"{cfg.train.stage} checkpoint (to start from its weights, set train.pretrained_model_path "
            "or pass its job as --parent)"
        )
    return resume, cfg.train.pretrained_model_path


def _trainer(cfg: MAEConfig, ctx: ActionContext, steps_per_epoch: int, monitor: str, mode: str) -> Any:
    return trainer_for(
        cfg.train,
        results_dir=ctx.results_dir,
        network=NETWORK,
        config_dict=to_dict(cfg),
        status=ctx.status_writer,
        progress=ctx.progress,
        tracking=ctx.tracking,
        monitor=monitor,
        monitor_mode=mode,
        latest_link=f"{cfg.model.arch}_latest.pth",  # <arch>_latest.pth, e.g. vit_base_patch16_latest.pth
        steps_per_epoch=steps_per_epoch,
    )


def _steps_per_epoch(loader: DataLoader, cfg: MAEConfig) -> int:
    return max(1, len(loader) // cfg.train.accum_grad_batches)


def _pretrain_setup(cfg: MAEConfig, ctx: ActionContext, start: str | None) -> tuple:
    aug = cfg.dataset.augmentation
    root = resolve_dataset(
        required(cfg.dataset.train_data_sources, "dataset.train_data_sources"), ctx.cache_dir
    )
    train_set = ImageFolderDataset(root, transform=pretrain_transform(aug), recursive=True)
    logger.info("pretrain: %d images from %s", len(train_set), root)
    val_set: Any = None
    if cfg.dataset.val_data_sources:
        val_root = resolve_dataset(cfg.dataset.val_data_sources, ctx.cache_dir)
        val_tf = build_eval_transform(aug.input_size, aug.mean, aug.std)
        try:  # class subfolders: online kNN top-1 of the encoder too
            val_set = LabeledImageFolderDataset(val_root, transform=val_tf)
            what = f"{len(val_set)} labeled images: val_loss, kNN top-1 and collapse monitors"
        except DatasetError:
            val_set = ImageFolderDataset(val_root, transform=val_tf, recursive=True)
            what = f"{len(val_set)} images: val_loss and collapse monitors"
        logger.info("pretrain validation every %d epoch(s): %s", cfg.train.validation_interval, what)
    _warn_pretrain_ignores(cfg)
    model = build_pretrain_model(
        cfg.model,
        img_size=aug.input_size,
        mask_ratio=cfg.train.mask_ratio,
        norm_pix_loss=cfg.train.norm_pix_loss,
    )
    if start:
        logger.info(checkpoints.load_pretrain_start(model, start, cfg.model.arch))
    checkpoints.freeze(model, list(cfg.train.freeze))
    batch, workers = cfg.dataset.batch_size, cfg.dataset.num_workers_per_gpu
    train_loader = make_loader(train_set, batch, workers, train=True)
    val_loader = make_loader(val_set, batch, workers, train=False) if val_set else None
    module = MAEPretrainModule(
        model,
        optim_settings_from_mae(cfg.train.optim, stage="pretrain"),
        steps_per_epoch=_steps_per_epoch(train_loader, cfg),
        arch=cfg.model.arch,
        online=OnlineEvaluation() if val_loader is not None else None,  # DINO's kNN: k=20, T=0.07
        watch=LearningWatch(feature_dim=int(getattr(encoder_of(model), "num_features", 0)) or None, hints=WATCH_HINTS),
    )
    apply_speed_options(module, cfg.train)
    monitor = cfg.train.optim.monitor_name
    if monitor == "val_loss" and val_loader is None:
        logger.warning("train.optim.monitor_name=val_loss without dataset.val_data_sources; using train_loss")
        monitor = "train_loss"
    return module, train_loader, val_loader, (monitor, "min")


def _warn_pretrain_ignores(cfg: MAEConfig) -> None:
    """One warning line per fine-tuning-only or Hiera-ignored setting the user changed."""
    multiplier = cfg.train.optim.backbone_multiplier
    if multiplier != DEFAULT_BACKBONE_MULTIPLIER:
        logger.warning(
            "train.optim.backbone_multiplier=%s is not used when pretraining (it scales the backbone's "
            "learning rate in train.stage=finetune only)",
            multiplier,
        )
    if is_hiera(cfg.model.arch) and not cfg.train.norm_pix_loss:
        logger.warning(
            "train.norm_pix_loss=false is not used by %s: Hiera-MAE always regresses per-patch-normalised "
            "pixels (as in TAO)",
            cfg.model.arch,
        )


def _finetune_setup(cfg: MAEConfig, ctx: ActionContext, start: str | None) -> tuple:
    aug = cfg.dataset.augmentation
    root = resolve_dataset(
        required(cfg.dataset.train_data_sources, "dataset.train_data_sources"), ctx.cache_dir
    )
    train_set = LabeledImageFolderDataset(root, transform=finetune_transform(aug))
    classes = train_set.classes
    _check_num_classes(
        cfg.model.num_classes, len(classes), f"dataset.train_data_sources ({cfg.dataset.train_data_sources})"
    )
    logger.info("finetune: %d images in %d classes from %s", len(train_set), len(classes), root)
    val_set = None
    if cfg.dataset.val_data_sources:
        val_root = resolve_dataset(cfg.dataset.val_data_sources, ctx.cache_dir)
        val_tf = build_eval_transform(aug.input_size, aug.mean, aug.std)
        val_set = LabeledImageFolderDataset(val_root, transform=val_tf, classes=classes)
    model = build_finetune_model(cfg.model, len(classes), aug.input_size)
    if start:
        logger.info(checkpoints.load_finetune_start(model, start, cfg.model.arch))
    checkpoints.freeze(model, list(cfg.train.freeze))
    batch, workers = cfg.dataset.batch_size, cfg.dataset.num_workers_per_gpu
    train_loader = make_loader(train_set, batch, workers, train=True)
    val_loader = make_loader(val_set, batch, workers, train=False) if val_set else None
    module = MAEFinetuneModule(
        model,
        optim_settings_from_mae(cfg.train.optim),
        label_smoothing=aug.smoothing,
        classes=classes,
        steps_per_epoch=_steps_per_epoch(train_loader, cfg),
        mixup=mixup_settings_from_mae(aug, len(classes)),
        arch=cfg.model.arch,
    )
    apply_speed_options(module, cfg.train)
    monitor = ("val_top1", "max") if val_loader is not None else ("train_loss", "min")
    return module, train_loader, val_loader, monitor


def _check_num_classes(num_classes: int | None, found: int, where: str) -> None:
    if num_classes is not None and num_classes != found:
        raise SpecError(
            SpecIssue(
                "model.num_classes",
                f"{num_classes}, but {where} has {found} classes",
                f"set model.num_classes={found} or leave it empty",
            )
        )


# ------------------------------------------------------------------------------------ evaluate


@dataclass
class _Run:
    """What evaluate / inference run: the checkpoint's model, a TensorRT engine
    (``<action>.trt_engine``), or both, the checkpoint then giving the engine's agreement."""

    stage: str
    classes: list[str]  # empty: the class folders' (an engine without its metadata)
    input_size: int
    mean: list[float]
    std: list[float]
    arch: str
    loaded: checkpoints.Trained | None
    engine: Any = None  # finetune: EngineLogits; pretrain: EngineBackbone
    source: str = ""  # the engine or checkpoint file, for messages

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.engine is not None:
            return self.engine(images)
        assert self.loaded is not None
        return self.loaded.model(images).float()

    def encoder(self) -> Any:
        if self.engine is not None:
            return self.engine
        assert self.loaded is not None
        return encoder_of(self.loaded.model)

    def agreement(self) -> dict[str, Any] | None:
        return self.engine.agreement() if self.engine is not None else None


def _run(cfg: MAEConfig, action: str) -> _Run:
    """`_Run` of ``evaluate`` / ``inference``: preprocessing from the checkpoint, or from the
    engine's ``<engine>.json`` (else the spec's ``dataset.augmentation``) when only an engine is given."""
    from foveal.export.trt_runtime import EngineBackbone, meta_value
    from foveal.networks.trt import EngineLogits, open_engine

    section = getattr(cfg, action)
    engine = open_engine(section, action, NETWORK)
    loaded = None
    if section.checkpoint or engine is None:
        loaded = checkpoints.load_trained(required(section.checkpoint, f"{action}.checkpoint"))
    if engine is None:
        assert loaded is not None
        aug = loaded.cfg.dataset.augmentation
        return _Run(loaded.stage, loaded.classes, aug.input_size, list(aug.mean), list(aug.std), loaded.cfg.model.arch,
                    loaded, source=str(loaded.path))  # fmt: skip
    meta, aug = engine.metadata, cfg.dataset.augmentation
    stage = meta_value(meta, "stage") or ("finetune" if engine.output_names == ["logits"] else "pretrain")
    if loaded is not None and loaded.stage != stage:
        raise SpecError(
            SpecIssue(
                f"{action}.trt_engine",
                f"is a mae {stage} engine but {action}.checkpoint is a {loaded.stage} checkpoint",
                f"give the {stage} checkpoint it was exported from, or leave {action}.checkpoint empty",
            )
        )
    height, width = meta_value(meta, "input_height"), meta_value(meta, "input_width")
    if height and width and int(height) != int(width):
        raise SpecError(
            SpecIssue(f"{action}.trt_engine", f"takes {width}x{height} images; mae evaluates square ones",
                      "build the engine from an export with export.input_height == export.input_width")  # fmt: skip
        )
    size = int(height or meta_value(meta, "input_size") or aug.input_size)
    classes = list(meta_value(meta, "classes") or (loaded.classes if loaded else []))
    arch = str(meta_value(meta, "arch") or cfg.model.arch)
    run = _Run(stage, classes, size, list(meta_value(meta, "mean", aug.mean)), list(meta_value(meta, "std", aug.std)),
               arch, loaded, source=str(engine.engine_file))  # fmt: skip
    if stage == "finetune":
        run.engine = EngineLogits(engine, loaded.model if loaded else None)
        return run
    vit = "cls_token" in engine.output_names
    names = {"cls_token": "x_norm_clstoken", "patch_tokens": "x_norm_patchtokens"} if vit else {"embedding": "x_norm_clstoken"}
    run.engine = EngineBackbone(
        engine, names, has_class_token=vit, reference=encoder_of(loaded.model) if loaded is not None else None,
        compare=("x_norm_clstoken", "class token" if vit else "embedding"),
    )  # fmt: skip
    return run


def evaluate(cfg: MAEConfig, ctx: ActionContext) -> ActionResult:
    """Finetune: top-1/top-5, per-class metrics, confusion matrix. Pretrain: reconstruction loss
    and, when the validation images are in class folders, kNN top-1. Both -> results.json. On
    ``evaluate.trt_engine`` the engine's (a pretrain engine holds the encoder: kNN only); with a
    checkpoint too, the TensorRT-vs-PyTorch agreement."""
    from foveal.networks.trt import agreement_kpis

    run = _run(cfg, "evaluate")
    root = resolve_dataset(required(cfg.dataset.val_data_sources, "dataset.val_data_sources"), ctx.cache_dir)
    if run.stage == "finetune":
        report = _evaluate_finetune(cfg, run, root)
        kpis: dict[str, float] = {k: report[k] for k in ("top1", "top5", "loss") if k in report}
        message = f"top-1 {report['top1']:.4f} on {report['num_images']} images"
    else:
        report = _evaluate_pretrain(cfg, ctx, run, root)
        kpis = {
            k: v for k, v in report.items() if k.startswith(("reconstruction_loss", "knn_top1")) and v is not None
        }
        knn = report.get("knn_top1_avg")
        loss = report["reconstruction_loss"]
        message = (f"reconstruction loss {loss:.4f}" if loss is not None else "reconstruction loss: not in the engine") + (
            f", kNN top-1 {knn:.4f}" if knn is not None else f" ({report['knn']})"
        )
    trt = run.agreement()
    if trt is not None:
        report["tensorrt_vs_pytorch"] = trt
    kpis.update(agreement_kpis(trt))
    if run.engine is not None:
        message += " (TensorRT engine)"
    out = ctx.results_dir / "results.json"
    out.write_text(json.dumps({"stage": run.stage, **report}, indent=2))
    return ActionResult(kpis=kpis, artifacts={"results": str(out)}, message=message)


def _evaluate_finetune(cfg: MAEConfig, run: _Run, root: Path) -> dict[str, Any]:
    from foveal.engine.metrics import classification_report

    if run.classes:
        _check_num_classes(cfg.model.num_classes, len(run.classes), run.source)
    tf = build_eval_transform(run.input_size, run.mean, run.std)
    dataset = LabeledImageFolderDataset(root, transform=tf, classes=run.classes or None)
    logits, targets = [], []
    with torch.inference_mode():
        for images, target in make_loader(
            dataset, run_batch_size(cfg.evaluate, cfg.dataset.batch_size), cfg.dataset.num_workers_per_gpu, train=False
        ):
            logits.append(run.logits(images))
            targets.append(target)
    return classification_report(torch.cat(logits), torch.cat(targets), dataset.classes)


def _evaluate_pretrain(cfg: MAEConfig, ctx: ActionContext, run: _Run, root: Path) -> dict[str, Any]:
    from foveal.engine.features import extract_features, knn_top1
    from foveal.networks.mae.evaluation import reconstruction_loss

    tf = build_eval_transform(run.input_size, run.mean, run.std)
    batch, workers = run_batch_size(cfg.evaluate, cfg.dataset.batch_size), cfg.dataset.num_workers_per_gpu
    images = ImageFolderDataset(root, transform=tf, recursive=True)
    report: dict[str, Any] = {"num_images": len(images)}
    if run.engine is None:
        assert run.loaded is not None
        report["mask_ratio"] = run.loaded.cfg.train.mask_ratio
        report["reconstruction_loss"] = reconstruction_loss(run.loaded.model, make_loader(images, batch, workers, train=False))
    else:
        report["reconstruction_loss"] = None
        report["reconstruction"] = "skipped: the engine holds the exported encoder, not the decoder"
    if not cfg.dataset.train_data_sources:
        report["knn"] = "skipped: kNN needs labeled training images in dataset.train_data_sources"
        return report
    try:
        train_set = LabeledImageFolderDataset(
            resolve_dataset(cfg.dataset.train_data_sources, ctx.cache_dir), transform=tf
        )
        val_set = LabeledImageFolderDataset(root, transform=tf, classes=train_set.classes)
    except DatasetError as exc:
        report["knn"] = f"skipped: {str(exc).splitlines()[0]}"
        return report
    encoder = run.encoder()
    train_feats = extract_features(encoder, make_loader(train_set, batch, workers, train=False))
    val_feats = extract_features(encoder, make_loader(val_set, batch, workers, train=False))
    pairs = {"avg": (train_feats.avg, val_feats.avg)}
    if train_feats.cls is not None and val_feats.cls is not None:
        pairs["cls"] = (train_feats.cls, val_feats.cls)
    for name, (train_x, val_x) in pairs.items():
        report[f"knn_top1_{name}"] = knn_top1(train_x, train_feats.labels(), val_x, val_feats.labels())
    report["knn"] = f"k=20, T=0.07, {len(train_set)} training images, {len(val_set)} validation images"
    return report


# ------------------------------------------------------------------------------------ inference


def inference(cfg: MAEConfig, ctx: ActionContext) -> ActionResult:
    """Finetune: results.csv (path, class index, class name, score). Pretrain: every image's
    embedding (embeddings.safetensors + embeddings.csv) and reconstruction.png (checkpoints only:
    an engine holds the encoder). On ``inference.trt_engine`` the engine's; with a checkpoint too,
    ``tensorrt_vs_pytorch.json``."""
    from foveal.networks.trt import agreement_artifacts, agreement_kpis

    run = _run(cfg, "inference")
    root = resolve_dataset(
        required(cfg.dataset.test_data_sources, "dataset.test_data_sources"), ctx.cache_dir
    )
    tf = build_eval_transform(run.input_size, run.mean, run.std)
    dataset = ImageFolderDataset(root, transform=tf, recursive=True, return_path=True)
    loader = make_loader(dataset, run_batch_size(cfg.inference, cfg.dataset.batch_size), cfg.dataset.num_workers_per_gpu, train=False)
    if run.stage == "finetune":
        if run.classes:
            _check_num_classes(cfg.model.num_classes, len(run.classes), run.source)
        artifacts = {"results": str(_write_predictions(run, loader, ctx.results_dir / "results.csv"))}
    else:
        artifacts = _write_embeddings(run, loader, ctx.results_dir)
        if run.engine is None:
            assert run.loaded is not None
            grid_images = torch.stack([dataset[i][0] for i in range(min(GRID_IMAGES, len(dataset)))])
            from foveal.networks.mae.visualize import save_reconstruction_grid

            png = save_reconstruction_grid(
                run.loaded.model, grid_images, ctx.results_dir / "reconstruction.png", run.mean, run.std
            )
            artifacts["reconstruction"] = str(png)
    trt = run.agreement()
    artifacts.update(agreement_artifacts(trt, ctx.results_dir))
    return ActionResult(
        kpis={"num_images": float(len(dataset)), **agreement_kpis(trt)},
        artifacts=artifacts,
        message=f"{len(dataset)} images -> {', '.join(Path(p).name for p in artifacts.values())}",
    )


def _write_predictions(run: _Run, loader: DataLoader, out: Path) -> Path:
    with out.open("w", newline="") as f, torch.inference_mode():
        writer = csv.writer(f)
        writer.writerow(["path", "class_index", "class_name", "score"])
        for images, paths in loader:
            scores, idx = run.logits(images).float().softmax(dim=1).max(dim=1)
            for path, score, i in zip(paths, scores.tolist(), idx.tolist(), strict=True):
                writer.writerow([path, i, run.classes[i] if i < len(run.classes) else str(i), f"{score:.6f}"])
    return out


def _write_embeddings(run: _Run, loader: DataLoader, results_dir: Path) -> dict[str, str]:
    from safetensors.torch import save_file

    from foveal.engine.features import extract_features

    with torch.inference_mode():
        feats = extract_features(run.encoder(), loader)
    paths = feats.extras
    tensors = {"embedding": feats.avg.contiguous()}
    if feats.cls is not None:
        tensors["cls_token"] = feats.cls.contiguous()
    out = results_dir / "embeddings.safetensors"
    save_file(tensors, str(out), metadata={"arch": run.arch, "rows": "embeddings.csv"})
    index = results_dir / "embeddings.csv"
    with index.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "path"])
        writer.writerows(enumerate(paths))
    return {"embeddings": str(out), "embeddings_index": str(index)}


# ------------------------------------------------------------------------------------ export


def export(cfg: MAEConfig, ctx: ActionContext) -> ActionResult:
    """Finetune: the classifier (output ``logits``). Pretrain: the encoder (outputs ``embedding``,
    ViT ``cls_token`` + ``patch_tokens``, ConvNeXt / Hiera ``feature_map``). Input
    ``export.input_height`` x ``input_width`` (default: the trained size); ONNX only
    (``export.format``). Checked with ONNX Runtime."""
    from foveal.export import check_input_channels, export_batch_settings, export_onnx, note_export_device

    loaded = checkpoints.load_trained(required(cfg.export.checkpoint, "export.checkpoint"))
    aug = loaded.cfg.dataset.augmentation
    onnx_file = Path(cfg.export.onnx_file or ctx.results_dir / f"{NETWORK}.onnx")
    if onnx_file.exists() and not cfg.export.overwrite:
        raise SpecError(
            SpecIssue(
                "export.onnx_file", f"{onnx_file} already exists", "set export.overwrite=true to replace it"
            )
        )
    height, width = _export_size(cfg, loaded)
    batch, dynamic = export_batch_settings(cfg.export.batch_size)
    example = torch.randn(batch, cfg.export.input_channel, height, width)
    metadata = {
        "network": NETWORK,
        "stage": loaded.stage,
        "arch": loaded.cfg.model.arch,
        "input_size": str(aug.input_size),
        "input_height": str(height),
        "input_width": str(width),
        "mean": json.dumps(list(aug.mean)),
        "std": json.dumps(list(aug.std)),
    }
    if loaded.stage == "finetune":
        _check_num_classes(cfg.model.num_classes, len(loaded.classes), f"checkpoint {loaded.path}")
        model: nn.Module = loaded.model
        outputs: tuple[str, ...] = ("logits",)
        metadata["classes"] = json.dumps(loaded.classes)
    else:
        from foveal.networks.mae.models import encoder_of

        model = EncoderFeatures(encoder_of(loaded.model))
        outputs = model.output_names
    note_export_device(cfg.export.on_cpu, cfg.export.gpu_id)
    check_input_channels(cfg.export.input_channel)
    report = export_onnx(
        model,
        example,
        onnx_file,
        opset_version=cfg.export.opset_version,
        verbose=cfg.export.verbose,
        dynamic_batch=dynamic,
        input_names=("input",),
        output_names=outputs,
        metadata=metadata,
    )
    diff = max(report.max_abs_diff.values()) if report.max_abs_diff else float("nan")
    return ActionResult(
        kpis={"onnx_max_abs_diff": diff},
        artifacts={"onnx": str(onnx_file)},
        message=f"exported the {loaded.stage} {'classifier' if loaded.stage == 'finetune' else 'encoder'} "
        f"to {onnx_file} (outputs {', '.join(outputs)}; ONNX Runtime vs PyTorch max |diff| {diff:.2e})",
    )


def _export_size(cfg: MAEConfig, loaded: checkpoints.Trained) -> tuple[int, int]:
    """(height, width) of the exported graph: ``export.input_height`` / ``input_width``, each
    defaulting to the checkpoint's training ``input_size``, checked against the checkpoint's arch."""
    trained = loaded.cfg.dataset.augmentation.input_size
    height = cfg.export.input_height or trained
    width = cfg.export.input_width or trained
    arch = loaded.cfg.model.arch
    issues = [
        issue
        for issue in (
            input_size_issue("export.input_height", height, arch),
            input_size_issue("export.input_width", width, arch),
        )
        if issue is not None
    ]
    if issues:
        raise SpecError(issues)
    if (height, width) != (trained, trained):
        logger.info("exporting at %dx%d (trained at %d)", width, height, trained)
    return height, width


gen_trt_engine = trt_engine_action(NETWORK)
