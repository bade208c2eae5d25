"""Lightning module of nvdinov2 training: optimizer groups, per-step schedules, EMA, backbone files.

The loop follows DINOv2's ``train.py`` (Oquab et al., arXiv:2304.07193), top to bottom:
schedules at the current optimizer step (lr, last-layer lr, weight decay, teacher temperature) ->
forward (:class:`NVDINOv2Method`) -> backward (Lightning) -> last layer's gradients dropped while
frozen, per-part gradient clipping -> AdamW step -> EMA update on the momentum schedule -> logs.
AdamW groups carry layer-wise LR decay (BEiT/DINOv2 ``lr_decay_rate ** (n_blocks + 1 - layer)``),
the patch-embedding LR multiplier and no weight decay on biases, norms, LayerScale and tokens.

Each checkpoint the engine saves is accompanied by backbone-only handoff files
``student_epoch_EEE_step_SSSSS.pth`` (and ``teacher_...`` when self-training), which the engine
writes from :meth:`NVDINOv2Module.handoff_weights` and records in the checkpoint index.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import nn

from foveal.engine.online_eval import LearningWatch, OnlineEvalHooks, OnlineEvaluation
from foveal.engine.optim import param_groups as engine_param_groups
from foveal.networks.nvdinov2.config import NVDINOv2TrainConfig
from foveal.networks.nvdinov2.method import NVDINOv2Method, backbone_of
from foveal.networks.nvdinov2.schedules import StepValues, schedule_value, values_at

logger = logging.getLogger(__name__)
NETWORK = "nvdinov2"
LATEST_LINK = "nvdinov2_model_latest.pth"


def param_groups(student: nn.ModuleDict, layerwise_decay: float, patch_embed_lr_mult: float) -> list[dict]:
    """The engine's AdamW groups of the student (:func:`foveal.engine.optim.param_groups`), with
    DINOv2's patch-embedding LR multiplier and the DINO head's last layer tagged ``"last_layer"``
    (its learning rate has its own schedule). The loop multiplies the scheduled values by each
    group's ``lr_scale`` / ``wd_scale`` at every step."""
    return engine_param_groups(
        student,
        weight_decay=0.0,
        layer_decay=layerwise_decay,
        backbone="backbone",
        lr_multipliers={"patch_embed": patch_embed_lr_mult},
        tag=lambda name: "last_layer" if ".last_layer." in name else None,
    )


class NVDINOv2Module(OnlineEvalHooks, L.LightningModule):
    """Trains an :class:`NVDINOv2Method` with DINOv2's per-step schedules.

    The method's parts (``student``, ``teacher``, ``student_ema``, centering) are registered here
    directly, so full checkpoints hold ``student.backbone.*``, ``teacher.backbone.*``, ... keys.

    Args:
        method: the student/teacher method.
        train_cfg: ``train`` section (schedulers, clip_grad_norm, layerwise_decay,
            patch_embed_lr_multiplier).
        archs: ``{"student": "vit_s", "teacher": "vit_s"}``.
        online: the online evaluation of the validation passes (``dataset.val_dataset``): the
            EMA network's class tokens (the teacher; the student's EMA when distilling), kNN
            top-1 when the set is labeled and the collapse monitors -> ``val_*`` metrics.
        watch: the known-failure rules checked at each epoch end.
    """

    method: NVDINOv2Method  # its parts are this module's children (see __init__)

    def __init__(
        self,
        method: NVDINOv2Method,
        train_cfg: NVDINOv2TrainConfig,
        *,
        archs: dict[str, str] | None = None,
        online: OnlineEvaluation | None = None,
        watch: LearningWatch | None = None,
    ) -> None:
        super().__init__()
        for name, child in method.named_children():
            self.add_module(name, child)
        self.__dict__["method"] = method  # same children; not registered a second time
        self.train_cfg = train_cfg
        self.schedulers = train_cfg.schedulers
        self.archs = archs or {}
        self._last_layer = [p for n, p in method.student.named_parameters() if ".last_layer." in n]
        self.online = online
        self.watch = watch

    # ----------------------------------------------------------------------------- loop

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = param_groups(
            self.method.student, self.train_cfg.layerwise_decay, self.train_cfg.patch_embed_lr_multiplier
        )
        # Not fused: Lightning does not unscale fp16 gradients of a fused optimizer before the
        # clipping in on_before_optimizer_step. lr/wd are set per step by apply_schedules.
        return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999))

    def apply_schedules(self, optimizer: Any, values: StepValues) -> None:
        """Scheduled lr / weight decay times each group's multipliers."""
        for group in optimizer.param_groups:
            lr = values.last_layer_lr if group["tag"] == "last_layer" else values.lr
            group["lr"] = lr * group["lr_scale"]
            group["weight_decay"] = values.weight_decay * group["wd_scale"]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``dataset.transform.gpu_augmentation``: the colour work of the crops, on the device."""
        from foveal.networks.nvdinov2.multicrop import device_colour

        return device_colour(batch) if isinstance(batch, dict) else batch

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        values = values_at(self.schedulers, self.trainer.global_step)
        self.apply_schedules(self.optimizers(), values)
        loss, parts = self.method(batch, values.teacher_temp)
        images = len(batch["global_crops"]) // self.method.settings.n_global_crops
        self.log(
            "train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images, sync_dist=True
        )
        self.log_dict(parts, on_step=False, on_epoch=True, batch_size=images, sync_dist=True)
        schedules = {"lr": values.lr, "wd": values.weight_decay, "teacher_temp": values.teacher_temp}
        self.log_dict(schedules, on_step=True, on_epoch=False, batch_size=images)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.trainer.global_step < self.schedulers.last_layer_learning_rate.freeze_steps:
            for param in self._last_layer:  # DINOv2 cancels them: no update, no weight decay
                param.grad = None
        clip = self.train_cfg.clip_grad_norm
        if clip > 0:  # per part, as DINOv2 (backbone, dino head, ibot head)
            for part in self.method.student.values():
                params = [p for p in part.parameters() if p.grad is not None]
                if params:
                    nn.utils.clip_grad_norm_(params, clip)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # global_step still names the step just taken (Lightning counts it after this hook)
        self.method.update_ema(schedule_value(self.schedulers.momentum, self.trainer.global_step))

    # ----------------------------------------------------------------------- online evaluation

    def online_features(self, images: torch.Tensor) -> torch.Tensor:
        """Class tokens of the network evaluated offline: the EMA one (teacher / student EMA)."""
        backbone = backbone_of(self.method.ema_target)
        was_training = backbone.training
        backbone.eval()
        try:
            return backbone.forward_features(images)["x_norm_clstoken"]
        finally:
            backbone.train(was_training)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.online_step(batch)

    # ----------------------------------------------------------------------------- files

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["arch"] = self.archs.get("student")

    def handoff_weights(self) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """The backbone-only files the engine writes beside each full checkpoint
        (``student_epoch_EEE_step_SSSSS.pth``, and ``teacher_...`` when self-training): the
        student (its EMA copy when distilling) and the teacher backbones, with their arch."""
        method = self.method
        student = method.ema_target if method.settings.distill else method.student
        files = {"student": (backbone_of(student).state_dict(), {"arch": self.archs.get("student")})}
        if not method.settings.distill:
            files["teacher"] = (backbone_of(method.teacher).state_dict(), {"arch": self.archs.get("teacher")})
        return files
