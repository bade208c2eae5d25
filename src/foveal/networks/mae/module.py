"""Lightning modules of the mae network: masked-image pretraining and classification fine-tuning.

Pretraining follows MAE (He et al., arXiv:2111.06377): AdamW with betas (0.9, 0.95), no weight
decay on biases, norms, tokens and position tables, a per-step schedule (linear warm-up then
cosine, or MultiStep). Fine-tuning is the classification network's loop
(:class:`ClassificationModule`: layer-wise LR decay, label smoothing, Mixup/CutMix) fed from
mae's spec by the adapters below.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from foveal.networks.classification.module import (
    ClassificationModule,
    OptimSettings,
    step_decay,
    warmup_cosine,
)

STAGE_KEY = "stage"  # checkpoint field naming the training stage (pretrain | finetune)


def optim_settings_from_mae(optim: Any) -> OptimSettings:
    """mae's ``train.optim`` section as the fine-tuning loop's :class:`OptimSettings`."""
    return OptimSettings(
        optimizer="sgd" if optim.type == "SGD" else "adamw",
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        layer_decay=optim.layer_decay,
        momentum=optim.momentum,
        scheduler="step" if optim.lr_scheduler == "MultiStep" else "cosine",
        warmup_epochs=float(optim.warmup_epochs),
        min_lr_ratio=0.0,
        milestones=tuple(optim.milestones),
        gamma=optim.gamma,
    )


def mixup_settings_from_mae(aug: Any, num_classes: int) -> Any:
    """mae's ``dataset.augmentation`` Mixup/CutMix fields as classification's ``MixupSettings``
    (None when both are off)."""
    from foveal.networks.classification.mixup import MixupSettings

    return MixupSettings.from_augmentation(aug, num_classes, aug.smoothing)


def pretrain_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed weights, and biases / norms / tokens / position tables."""
    no_decay_names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim <= 1 or name in no_decay_names or name.endswith(("mask_token", "pos_embed"))
        (no_decay if skip else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class MAEPretrainModule(L.LightningModule):
    """Masked reconstruction: ``train_loss`` per step, ``val_loss`` on fixed masks.

    Args:
        model: a pretraining model whose forward returns ``(loss, outputs)``.
        optim: optimiser and schedule (``layer_decay`` is a fine-tuning setting and unused here).
        steps_per_epoch: optimizer steps per epoch (for warm-up and MultiStep).
        arch: ``model.arch``, saved in checkpoints.
    """

    def __init__(self, model: nn.Module, optim: OptimSettings, *, steps_per_epoch: int, arch: str) -> None:
        super().__init__()
        self.model = model
        self.optim = optim
        self.steps_per_epoch = steps_per_epoch
        self.arch = arch

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model(imgs)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss, _ = self.model(batch)
        self.log(
            "train_loss",
            loss,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=len(batch),
            sync_dist=True,
        )
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        # The same masks every validation pass, so val_loss is comparable across epochs.
        with torch.random.fork_rng(devices=[batch.device] if batch.is_cuda else []):
            torch.manual_seed(batch_idx)
            loss, _ = self.model(batch)
        self.log("val_loss", loss, prog_bar=True, batch_size=len(batch), sync_dist=True)

    def configure_optimizers(self) -> Any:
        optim = self.optim
        groups = pretrain_param_groups(self.model, optim.weight_decay)
        if optim.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
        else:
            # The fused kernel (CPU and CUDA, torch >= 2.4) is one pass over all tensors.
            opt = torch.optim.AdamW(groups, lr=optim.lr, betas=(0.9, 0.95), fused=True)
        total = max(1, self.trainer.estimated_stepping_batches)
        warmup = int(optim.warmup_epochs * self.steps_per_epoch)
        if optim.scheduler == "step":
            milestones = list(optim.milestones)

            def multiplier(step: int) -> float:
                return step_decay(step, self.steps_per_epoch, milestones, optim.gamma, warmup)
        else:

            def multiplier(step: int) -> float:
                return warmup_cosine(step, total, warmup, optim.min_lr_ratio)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, multiplier)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[STAGE_KEY] = "pretrain"
        checkpoint["arch"] = self.arch


class MAEFinetuneModule(ClassificationModule):
    """:class:`ClassificationModule` whose checkpoints say they are mae fine-tuning ones."""

    def __init__(self, *args: Any, arch: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arch = arch

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[STAGE_KEY] = "finetune"
        checkpoint["arch"] = self.arch
