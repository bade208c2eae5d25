"""The supervised training loop every labeled network fine-tunes with (classification, mae
fine-tuning, ported models): loss, metrics, optimiser and schedule.

The loop around a :class:`~foveal.nn.classifier.Classifier`: Mixup/CutMix on the batch
(:mod:`.mixup`), soft-target or label-smoothed cross entropy, and the weight EMA (:mod:`.ema`)
updated after each optimizer step. Validation uses the EMA weights when there is one;
checkpoints keep both (``state_dict``: live, ``ema_state_dict``: average). Parameter groups and
schedules are the engine's (:mod:`.optim`, :mod:`.schedules`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from foveal.engine.ema import WeightEma
from foveal.engine.mixup import Mixup, MixupSettings, soft_target_cross_entropy
from foveal.engine.optim import param_groups
from foveal.engine.schedules import lr_multiplier
from foveal.engine.speed import SpeedOptionsMixin
from foveal.nn.classifier import Classifier


@dataclass(frozen=True)
class OptimSettings:
    """What a training loop needs to know about the optimiser, whatever network's spec it came
    from (classification's ``train.optim`` or mae's ``train.optim``)."""

    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-4
    weight_decay: float = 0.05
    layer_decay: float = 1.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: str = "cosine"  # cosine | linear | step | multistep (foveal.engine.schedules)
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    milestones: tuple[int, ...] = field(default_factory=tuple)
    gamma: float = 0.1
    step_size: int = 30
    skip_names: tuple[str, ...] = ()  # parameters whose name contains one of these: no weight decay
    lr_multipliers: tuple[tuple[str, float], ...] = ()  # (name part, LR factor), e.g. a backbone multiplier
    nesterov: bool = True



def build_optimizer(
    optim: OptimSettings,
    groups: list[dict[str, Any]],
    total_steps: float | int,
    steps_per_epoch: int,
    *,
    betas: tuple[float, float] | None = None,
    fused: bool = False,
) -> dict[str, Any]:
    """Lightning's optimizer + per-step LR schedule for :func:`foveal.engine.optim.param_groups`.

    Each group's multiplier is its ``lr_scale`` times the schedule of :mod:`foveal.engine.schedules`
    (``optim.scheduler``: cosine, linear, step or multistep, each after the warm-up).

    Args:
        betas: Adam/AdamW betas; None: ``optim.betas``.
    """
    betas = betas if betas is not None else optim.betas
    if optim.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov and optim.momentum > 0
        )
    elif optim.optimizer == "adam":
        # TAO's "adam": Adam with L2 weight decay (coupled), as torch.optim.Adam does it.
        opt = torch.optim.Adam(groups, lr=optim.lr, betas=betas, fused=fused or None)
    else:
        # fused: one kernel over all tensors (CPU and CUDA, torch >= 2.4); not where the loop clips
        # fp16 gradients itself (Lightning does not unscale a fused optimizer's gradients first).
        opt = torch.optim.AdamW(groups, lr=optim.lr, betas=betas, fused=fused or None)
    warmup = int(optim.warmup_epochs * steps_per_epoch)
    multipliers = [
        lr_multiplier(
            optim.scheduler,
            total_steps=max(1, int(total_steps)),
            warmup_steps=warmup,
            min_ratio=optim.min_lr_ratio,
            steps_per_epoch=steps_per_epoch,
            milestones=optim.milestones,
            gamma=optim.gamma,
            step_size=optim.step_size,
            scale=group["lr_scale"],
        )
        for group in groups
    ]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, multipliers)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ClassificationModule(SpeedOptionsMixin, L.LightningModule):
    """Cross-entropy fine-tuning with label smoothing, Mixup/CutMix, weight EMA, top-1/top-5 and
    a warm-up schedule.

    Args:
        model: the classifier to train.
        optim: optimiser and schedule.
        label_smoothing: for plain cross entropy (with ``mixup``, its own ``label_smoothing`` applies).
        class_weights: (C,) loss weight per class, or None.
        classes: class names, saved in checkpoints.
        steps_per_epoch: optimizer steps per epoch (for warm-up and step schedules).
        mixup: Mixup/CutMix settings, or None for none.
        ema_decay: keep an EMA of the weights with this decay, or None for none.
        topk: the top-k accuracies validation reports as ``val_top<k>`` (top-1 always; a k not
            below the number of classes is 1 by construction and skipped).
    """

    class_weights: torch.Tensor

    def __init__(
        self,
        model: Classifier,
        optim: OptimSettings,
        *,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
        classes: list[str] | None = None,
        steps_per_epoch: int = 1,
        mixup: MixupSettings | None = None,
        ema_decay: float | None = None,
        topk: tuple[int, ...] = (1, 5),
    ) -> None:
        super().__init__()
        self.topk = tuple(sorted({1, *(int(k) for k in topk)}))
        self.model = model
        self.optim = optim
        self.label_smoothing = label_smoothing
        self.classes = list(classes or [])
        self.steps_per_epoch = steps_per_epoch
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.ones(0))
        self.mixup_settings = mixup if mixup is not None and mixup.enabled else None
        self._mixup: Mixup | None = None  # built at fit start, seeded per rank
        self.ema = WeightEma(model, ema_decay) if ema_decay is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _weight(self) -> torch.Tensor | None:
        return self.class_weights if self.class_weights.numel() else None

    def _loss(self, logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, weight=self._weight(), label_smoothing=smoothing)

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.to(self.device)

    def _mixer(self, settings: MixupSettings) -> Mixup:
        if self._mixup is None:
            # Seeded from the run's seed (train.seed), different on each rank.
            seed = (torch.initial_seed() + 7919 * self.global_rank) % 2**32
            self._mixup = Mixup(settings, seed=seed)
        return self._mixup

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, target = batch
        if self.mixup_settings is not None:
            images, soft = self._mixer(self.mixup_settings)(images, target)
            logits = self.train_step_forward(images)
            loss = soft_target_cross_entropy(logits, soft, self._weight())
            # Top-1 against the dominant class of the mixed target.
            target = soft.argmax(dim=1)
        else:
            logits = self.train_step_forward(images)
            loss = self._loss(logits, target, self.label_smoothing)
        top1 = (logits.argmax(dim=1) == target).float().mean()
        self.log(
            "train_loss",
            loss,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=len(target),
            sync_dist=True,
        )
        self.log("train_top1", top1, on_step=False, on_epoch=True, batch_size=len(target), sync_dist=True)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.model)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, target = batch
        logits = self.ema.forward(self.model, images) if self.ema is not None else self(images)
        num_classes = logits.shape[1]
        ks = [k for k in self.topk if k == 1 or k < num_classes]  # top-C is 1 by construction
        ranked = logits.topk(max(ks), dim=1).indices
        self.log(
            "val_loss", self._loss(logits, target, 0.0), prog_bar=True, batch_size=len(target), sync_dist=True
        )
        for k in ks:
            self.log(
                f"val_top{k}",
                (ranked[:, :k] == target[:, None]).any(dim=1).float().mean(),
                prog_bar=k == 1,
                batch_size=len(target),
                sync_dist=True,
            )

    def configure_optimizers(self) -> Any:
        optim = self.optim
        groups = param_groups(
            self.model,
            weight_decay=optim.weight_decay,
            layer_decay=optim.layer_decay,
            lr_multipliers=dict(optim.lr_multipliers),
            skip_names=optim.skip_names,
        )
        return build_optimizer(optim, groups, self.trainer.estimated_stepping_batches, self.steps_per_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Inference and export read the class list from the checkpoint, never from the spec.
        checkpoint["classes"] = list(self.classes)
        if self.ema is not None:
            checkpoint["ema_state_dict"] = self.ema.state_dict()
            checkpoint["ema_updates"] = self.ema.num_updates

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is None:
            return
        saved = checkpoint.get("ema_state_dict")
        if saved is None:
            # EMA switched on for a run that had none: start the average at the resumed weights.
            prefix = "model."
            saved = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        self.ema.load_state_dict(saved, int(checkpoint.get("ema_updates", 0)))
