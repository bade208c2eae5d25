"""nvdinov2 ``train`` action: self-supervised DINOv2 pretraining or distillation on an image folder.

Data: every image under ``dataset.train_dataset.images_dir`` (folder or archive, recursive, no
labels), multi-cropped per :mod:`multicrop`. Start: ``train.pretrained_model_path`` (student and
teacher; any kind :func:`load_backbone_weights` reads) unless a full checkpoint is resumed
(``train.resume_training_checkpoint_path``, else the newest ``model_epoch_*.pth`` in the results
folder). Distillation: the teacher is ``model.backbone.teacher_type`` loaded from
``model.distill.pretrained_non_distill_pl_model_path`` and frozen.

Outputs (results folder): ``model_epoch_EEE_step_SSSSS.pth`` (full, resume only),
``student_epoch_EEE_step_SSSSS.pth`` / ``teacher_epoch_...`` (backbone handoff files),
``nvdinov2_model_latest.pth``, ``checkpoints.json``, status.json KPI ``train_loss`` per epoch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from foveal.data import ImageFolderDataset, make_loader, resolve_dataset
from foveal.engine import checkpoint_artifacts, fit, load_checkpoint, resolve_resume_checkpoint
from foveal.engine.online_eval import KnnProtocol, LearningWatch, OnlineEvaluation
from foveal.engine.trainer import prepare_training, trainer_for
from foveal.errors import NonFiniteLossError
from foveal.networks.nvdinov2.backbones import backbone_type, build_backbone
from foveal.networks.nvdinov2.config import NVDINOv2Config
from foveal.networks.nvdinov2.method import NVDINOv2Method, backbone_of, settings_from_config
from foveal.networks.nvdinov2.module import LATEST_LINK, NETWORK, NVDINOv2Module
from foveal.networks.nvdinov2.multicrop import MultiCropAugmentation, MultiCropCollate
from foveal.networks.nvdinov2.schedules import steps_beyond_run
from foveal.networks.registry import ActionContext, ActionResult
from foveal.spec import required, to_dict

logger = logging.getLogger(__name__)
KPI_NAMES = (
    "train_loss",
    "dino_loss",
    "ibot_loss",
    "koleo_loss",
    "teacher_entropy",
    "feature_std",
    "effective_rank",
    "val_knn_top1",
    "val_feature_std",
    "val_effective_rank",
)
WATCH_HINTS = {
    "uniform_teacher": "Try more epochs or a shorter train.schedulers.teacher_temperature warm-up, a higher "
    "train.schedulers.learning_rate.val_base, fewer train.num_prototypes, or a larger dataset.batch_size.",
    "collapse": "Try a lower train.schedulers.learning_rate.val_base, a larger train.loss.koleo_loss_weight, "
    "train.loss.centering=sinkhorn_knopp, or a lower train.schedulers.teacher_temperature.val_final.",
    "knn_regressed": "Try a lower train.schedulers.learning_rate.val_base, a longer warm-up "
    "(train.schedulers.learning_rate.warm_up_steps), or milder crops (dataset.transform.global_crops_scale).",
}
NONFINITE_HINT = (
    "Try a lower train.schedulers.learning_rate.val_base, a larger dataset.batch_size, "
    "train.precision=fp32 (or bf16), a smaller train.clip_grad_norm, or train.loss.koleo_loss_weight=0 "
    "if the images contain duplicates (KoLeo diverges on identical images)."
)


def train(cfg: NVDINOv2Config, ctx: ActionContext) -> ActionResult:
    """Train student and teacher on ``cfg`` (a resolved ``NVDINOv2Config``); see the module docstring."""
    prepare_training(cfg.train)
    resume = resolve_resume_checkpoint(ctx.results_dir, cfg.train.resume_training_checkpoint_path)
    loader = build_loader(cfg, ctx.cache_dir)
    method = build_method(cfg, start=None if resume else cfg.train.pretrained_model_path)
    steps_per_epoch = max(1, len(loader) // cfg.train.accum_grad_batches)
    total = steps_per_epoch * cfg.train.num_epochs
    notes = steps_beyond_run(cfg.train.schedulers, total)
    if notes:
        logger.warning("schedules longer than the run (values kept as given): %s", "; ".join(notes))
    config_dict = to_dict(cfg)
    val_loader = build_val_loader(cfg, ctx.cache_dir)
    module = NVDINOv2Module(
        method,
        cfg.train,
        archs={"student": backbone_type(cfg, "student"), "teacher": backbone_type(cfg, "teacher")},
        online=None if val_loader is None else OnlineEvaluation(knn_protocol(cfg)),
        watch=learning_watch(cfg, method),
    )
    trainer = _trainer(cfg, ctx, config_dict, steps_per_epoch)
    try:
        fit(trainer, module, loader, val_loader, ckpt_path=resume, memory_hint=memory_hint(cfg))
    except NonFiniteLossError as exc:
        message = str(exc).split(" Try ")[0]
        raise NonFiniteLossError(
            f"{message} {NONFINITE_HINT}", epoch=exc.epoch, step=exc.step, last_checkpoint=exc.last_checkpoint
        ) from None
    kpis = {k: float(v) for k, v in trainer.callback_metrics.items() if k in KPI_NAMES}
    return ActionResult(kpis=kpis, artifacts=checkpoint_artifacts(ctx.results_dir))


def build_loader(cfg: NVDINOv2Config, cache_dir: Path) -> DataLoader:
    """Multi-crop loader over every image under ``dataset.train_dataset.images_dir``."""
    root = resolve_dataset(
        required(cfg.dataset.train_dataset.images_dir, "dataset.train_dataset.images_dir"), cache_dir
    )
    dataset = ImageFolderDataset(root, transform=MultiCropAugmentation(cfg.dataset.transform), recursive=True)
    logger.info("nvdinov2 train: %d images from %s", len(dataset), root)
    grid = cfg.dataset.transform.global_crops_size // cfg.model.backbone.patch_size
    return make_loader(
        dataset,
        cfg.dataset.batch_size,
        cfg.dataset.workers,
        train=True,
        collate_fn=MultiCropCollate((grid, grid), cfg.train.masking),
        pin_memory=cfg.dataset.pin_memory,
    )


def memory_hint(cfg: NVDINOv2Config) -> str:
    """What sizes the memory of a step, by spec key (for the out-of-memory line)."""
    t = cfg.dataset.transform
    return (
        f"dataset.transform.global_crops_size={t.global_crops_size} x {t.n_global_crops}, "
        f"local_crops_size={t.local_crops_size} x {t.n_local_crops}, "
        f"model.backbone.student_type={cfg.model.backbone.student_type}"
    )


def build_val_loader(cfg: NVDINOv2Config, cache_dir: Path) -> DataLoader | None:
    """The online-evaluation loader of ``dataset.val_dataset.images_dir`` (None when unset):
    the ``evaluate`` action's transform (resize + centre crop to the global crop size). Class
    subfolders give kNN top-1; a folder without them gives the collapse monitors only."""
    from foveal.data import (
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        DatasetError,
        LabeledImageFolderDataset,
        build_eval_transform,
    )

    uri = cfg.dataset.val_dataset.images_dir
    if not uri:
        return None
    root = resolve_dataset(uri, cache_dir)
    transform = build_eval_transform(
        cfg.dataset.transform.global_crops_size, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, crop_pct=1.0
    )
    dataset: Any
    try:
        dataset = LabeledImageFolderDataset(root, transform)
        what = f"{len(dataset)} labeled images, {len(dataset.classes)} classes: kNN top-1 and collapse monitors"
    except DatasetError:
        dataset = ImageFolderDataset(root, transform=transform, recursive=True, return_path=True)
        what = f"{len(dataset)} images without class subfolders: collapse monitors only, no kNN"
    logger.info(
        "online evaluation every %d epoch(s) on dataset.val_dataset.images_dir: %s",
        cfg.train.validation_interval,
        what,
    )
    # workers persist: the same loader is read at every validation interval
    return make_loader(dataset, cfg.dataset.batch_size, cfg.dataset.workers, train=False)


def knn_protocol(cfg: NVDINOv2Config) -> KnnProtocol:
    """The ``evaluate`` section's kNN settings and reference split: online = offline."""
    e = cfg.evaluate
    return KnnProtocol(k=e.knn_k, temperature=e.knn_temperature, reference_fraction=e.reference_fraction, seed=e.seed)


def learning_watch(cfg: NVDINOv2Config, method: NVDINOv2Method) -> LearningWatch:
    return LearningWatch(
        num_prototypes=cfg.train.num_prototypes,
        feature_dim=int(backbone_of(method.teacher).embed_dim),
        hints=dict(WATCH_HINTS),
    )


def build_method(cfg: NVDINOv2Config, start: str | None = None) -> NVDINOv2Method:
    """Student and teacher for ``cfg``; the student (and its EMA copy) from ``start`` if given,
    the distillation teacher from ``model.distill.pretrained_non_distill_pl_model_path``."""
    from foveal.networks.nvdinov2.pretrained import load_backbone_weights

    settings = settings_from_config(cfg)
    student, teacher = build_backbone(cfg, "student"), build_backbone(cfg, "teacher")
    if settings.distill:  # the path is required by the spec's resolve step
        path = cfg.model.distill.pretrained_non_distill_pl_model_path
        logger.info(
            "distillation teacher: %s",
            load_backbone_weights(
                teacher, required(path, "model.distill.pretrained_non_distill_pl_model_path"), which="teacher"
            ),
        )
    method = NVDINOv2Method(student, teacher, settings)
    if settings.distill:
        _load_teacher_heads(
            method,
            required(
                cfg.model.distill.pretrained_non_distill_pl_model_path,
                "model.distill.pretrained_non_distill_pl_model_path",
            ),
        )
    if start:
        logger.info("train.pretrained_model_path: %s", load_backbone_weights(student, start, which="student"))
        method.sync_ema_from_student()
    if cfg.train.torch_compile:
        compile_backbones(method)
    return method


def compile_backbones(method: NVDINOv2Method) -> None:
    """``train.torch_compile``: compile the student's and teacher's ``forward_features``.

    The method calls ``forward_features``, not the modules, so that is what gets compiled
    (``nn.Module.compile`` would change nothing). The modules are not wrapped: parameter names,
    checkpoint keys and the EMA update stay those of the eager modules. The first steps of each
    crop size pay the compilation; the heads stay eager (a few matmuls); the distillation EMA copy
    only averages weights and never runs. On CPU, compilation needs a C++ compiler on the PATH.
    """
    from foveal.engine.speed import check_compiler

    check_compiler("train.torch_compile")
    for part in (method.student, method.teacher):
        backbone = backbone_of(part)
        backbone.forward_features = torch.compile(backbone.forward_features)  # type: ignore[method-assign]
    logger.info("train.torch_compile: student and teacher forward_features compiled with torch.compile")


def _load_teacher_heads(method: NVDINOv2Method, path: str) -> None:
    """Heads of the distillation teacher from a full training checkpoint, where shapes match.

    A backbone-only file has no heads: the frozen teacher then projects through fixed random heads
    (a random projection of its features is still a consistent target), said in the log.
    """
    state = load_checkpoint(path, require_foveal=False).get("state_dict") or {}
    expected = method.teacher.state_dict()
    heads = {
        k.removeprefix("teacher."): v
        for k, v in state.items()
        if k.startswith("teacher.") and "_head." in k and isinstance(v, torch.Tensor)
    }
    fits = {k: v for k, v in heads.items() if k in expected and v.shape == expected[k].shape}
    wanted = [k for k in expected if "_head." in k]
    if fits and len(fits) == len(wanted):
        method.teacher.load_state_dict(fits, strict=False)
        logger.info("distillation teacher heads: %d tensors from %s", len(fits), path)
    else:
        logger.warning(
            "%s has no teacher heads matching model.head / train.num_prototypes; the frozen teacher uses "
            "random heads (pass the teacher's model_epoch_*.pth to distil its heads too)",
            path,
        )


def _trainer(cfg: NVDINOv2Config, ctx: ActionContext, config_dict: dict, steps_per_epoch: int) -> Any:
    # Gradients are clipped per part in the module (DINOv2), not by Lightning. No metric picks a
    # "best" checkpoint: the DINO loss moves with the temperature schedules and says little about
    # the features, so "best" is the latest save.
    return trainer_for(
        cfg.train,
        results_dir=ctx.results_dir,
        network=NETWORK,
        config_dict=config_dict,
        latest_link=LATEST_LINK,
        status=ctx.status_writer,
        progress=ctx.progress,
        tracking=ctx.tracking,
        steps_per_epoch=steps_per_epoch,
    )
