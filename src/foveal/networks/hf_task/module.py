"""The training loop of a task network: the model's loss, the task's validation metrics, the
engine's optimiser, parameter groups and schedule (backbone at ``train.optim.lr_backbone``)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from foveal.engine.optim import param_groups
from foveal.engine.supervised import OptimSettings, build_optimizer
from foveal.networks.hf_task.model import backbone_part, config_dict, task_loss, task_outputs


class TaskModule(L.LightningModule):
    """Args:
    model: the whole HF model.
    task: one of :data:`~foveal.networks.hf_task.model.TASKS`.
    adapter: the task's data/metric class (:mod:`.tasks`).
    optim: optimiser and schedule; ``lr_backbone``: the backbone's learning rate.
    val_set: the validation dataset the metrics are computed against (None: no validation).
    classes: the class names, saved in checkpoints.
    """

    def __init__(self, model: nn.Module, task: str, adapter: Any, optim: OptimSettings, *, lr_backbone: float,
                 steps_per_epoch: int, val_set: Any = None, classes: list[str] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        self.task, self.adapter, self.optim = task, adapter, optim
        self.lr_backbone, self.steps_per_epoch = lr_backbone, steps_per_epoch
        self.val_set, self.classes = val_set, list(classes or [])
        self._meter: Any = None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, target = batch
        loss = task_loss(self.model, self.task, images, target)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(images),
                 sync_dist=True)  # fmt: skip
        return loss

    def on_validation_epoch_start(self) -> None:
        self._meter = self.adapter.meter(self.val_set)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, target = batch
        outputs = tuple(o.detach().cpu() for o in task_outputs(self.model, self.task, images))
        cpu_target = target.cpu() if isinstance(target, torch.Tensor) else target
        self.adapter.update(self._meter, outputs, cpu_target, self.val_set)

    def on_validation_epoch_end(self) -> None:
        scores = self.adapter.scores(self._meter)
        for name in self.adapter.kpis:
            self.log(f"val_{name}", float(scores[name]), prog_bar=name == self.adapter.kpis[0], sync_dist=False)

    def configure_optimizers(self) -> Any:
        part = backbone_part(self.model)
        ratio = self.lr_backbone / self.optim.lr if self.optim.lr > 0 else 1.0
        groups = param_groups(self.model, weight_decay=self.optim.weight_decay, backbone=None,
                              lr_multipliers={part: ratio} if part else None)  # fmt: skip
        return build_optimizer(self.optim, groups, self.trainer.estimated_stepping_batches, self.steps_per_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Evaluate, inference and export rebuild the model from these, without the HF folder.
        checkpoint["classes"] = list(self.classes)
        checkpoint["task"] = self.task
        checkpoint["hf_config"] = config_dict(self.model)
