"""Lightning modules of the mae network: masked-image pretraining and classification fine-tuning.

Pretraining follows MAE (He et al., arXiv:2111.06377): AdamW with betas (0.9, 0.95), the engine's
parameter groups (no weight decay on biases, norms, tokens and position tables) and per-step
schedule (linear warm-up then cosine, or MultiStep). Fine-tuning is the engine's supervised loop
(:class:`ClassificationModule`: layer-wise LR decay, label smoothing, Mixup/CutMix) fed from
mae's spec by the adapters below.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from foveal.engine.features import has_class_token, pooled
from foveal.engine.mixup import MixupSettings
from foveal.engine.online_eval import LearningWatch, OnlineEvalHooks, OnlineEvaluation
from foveal.engine.optim import param_groups
from foveal.engine.speed import SpeedOptionsMixin
from foveal.engine.supervised import ClassificationModule, OptimSettings, build_optimizer
from foveal.networks.mae.config import AugmentationConfig, OptimConfig
from foveal.networks.mae.models import encoder_of

STAGE_KEY = "stage"  # checkpoint field naming the training stage (pretrain | finetune)


def optim_settings_from_mae(optim: OptimConfig, *, stage: str = "finetune") -> OptimSettings:
    """mae's ``train.optim`` section as the training loop's :class:`OptimSettings`.

    Fine-tuning: the classifier's ``backbone.*`` parameters get ``lr_multipliers`` of
    ``backbone_multiplier`` (the head keeps ``lr``). Pretraining has no head: no multiplier.
    """
    multipliers = (("backbone.", optim.backbone_multiplier),) if stage == "finetune" else ()
    return OptimSettings(
        optimizer="sgd" if optim.type == "SGD" else "adamw",
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        layer_decay=optim.layer_decay,
        momentum=optim.momentum,
        scheduler="multistep" if optim.lr_scheduler == "MultiStep" else "cosine",
        warmup_epochs=float(optim.warmup_epochs),
        min_lr_ratio=0.0,
        milestones=tuple(optim.milestones),
        gamma=optim.gamma,
        lr_multipliers=multipliers,
    )


def mixup_settings_from_mae(aug: AugmentationConfig, num_classes: int) -> MixupSettings | None:
    """mae's ``dataset.augmentation`` Mixup/CutMix fields as the engine's ``MixupSettings``
    (None when both are off)."""
    return MixupSettings.from_augmentation(aug, num_classes, aug.smoothing)


class MAEPretrainModule(SpeedOptionsMixin, OnlineEvalHooks, L.LightningModule):
    """Masked reconstruction: ``train_loss`` per step, ``val_loss`` on fixed masks; with ``online``,
    the encoder's pooled features of the validation images too (kNN top-1 when they are labeled,
    collapse monitors always: :mod:`foveal.engine.online_eval`).

    Args:
        model: a pretraining model whose forward returns ``(loss, outputs)``.
        optim: optimiser and schedule (``layer_decay`` is a fine-tuning setting and unused here).
        steps_per_epoch: optimizer steps per epoch (for warm-up and MultiStep).
        arch: ``model.arch``, saved in checkpoints.
        online, watch: the online evaluation and its known-failure rules (None: off).
    """

    def __init__(
        self,
        model: nn.Module,
        optim: OptimSettings,
        *,
        steps_per_epoch: int,
        arch: str,
        online: OnlineEvaluation | None = None,
        watch: LearningWatch | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optim = optim
        self.steps_per_epoch = steps_per_epoch
        self.arch = arch
        self.online = online
        self.watch = watch

    def online_features(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's mean patch token (its normalised global average for ConvNeXt V2), the
        feature the evaluate action's ``knn_top1_avg`` scores."""
        encoder: Any = encoder_of(self.model)
        _, avg = pooled(encoder.forward_features(images), has_class_token(encoder))
        return avg

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model(imgs)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss, _ = self.train_step_forward(batch)
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

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        batch = self.online_step(batch)  # the images (a labeled set's batches carry labels too)
        # The same masks every validation pass, so val_loss is comparable across epochs.
        with torch.random.fork_rng(devices=[batch.device] if batch.is_cuda else []):
            torch.manual_seed(batch_idx)
            loss, _ = self.model(batch)
        self.log("val_loss", loss, prog_bar=True, batch_size=len(batch), sync_dist=True)

    def configure_optimizers(self) -> Any:
        # MAE's AdamW betas (0.9, 0.95); no layer-wise decay when pretraining.
        groups = param_groups(self.model, weight_decay=self.optim.weight_decay, backbone=None)
        return build_optimizer(
            self.optim,
            groups,
            self.trainer.estimated_stepping_batches,
            self.steps_per_epoch,
            betas=(0.9, 0.95),
            fused=True,
        )

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
