"""Shared fixtures for foveal.engine tests: a tiny linear LightningModule on fixed random data."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from foveal.engine import build_trainer, fit, resolve_resume_checkpoint


class TinyModule(L.LightningModule):
    """``y = Wx + b`` trained with Adam + StepLR; records which epochs it trained.

    Args:
        nan_at_step: from this global step on, the loss is NaN.
        step_sleep: seconds to sleep per training step (to make a run slow enough to kill).
    """

    def __init__(self, nan_at_step: int | None = None, step_sleep: float = 0.0) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.nan_at_step = nan_at_step
        self.step_sleep = step_sleep
        self.epochs_trained: list[int] = []

    def on_train_epoch_start(self) -> None:
        self.epochs_trained.append(self.current_epoch + 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.step_sleep:
            time.sleep(self.step_sleep)
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.lin(x), y)
        if self.nan_at_step is not None and self.global_step >= self.nan_at_step:
            loss = loss * math.nan
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.lin(x), y))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=0.05)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.7)}


def make_loader(n: int = 40, batch_size: int = 10) -> DataLoader:
    """Fixed data, no shuffling: 4 batches per epoch by default."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def train(
    results_dir: Path,
    max_epochs: int,
    *,
    resume: bool = False,
    module: TinyModule | None = None,
    network: str = "classification",
    **kwargs: Any,
) -> tuple[TinyModule, L.Trainer]:
    """Seeded fresh module (unless given), trainer from build_trainer, auto-resume if asked."""
    torch.manual_seed(0)
    module = module or TinyModule()
    kwargs.setdefault("progress", "off")
    kwargs.setdefault("log_every_n_steps", 1)
    trainer = build_trainer(
        results_dir=results_dir,
        network=network,
        config_dict={"train": {"num_epochs": max_epochs}},
        max_epochs=max_epochs,
        num_gpus=0,
        **kwargs,
    )
    loader = make_loader()
    fit(
        trainer,
        module,
        loader,
        make_loader(),
        ckpt_path=resolve_resume_checkpoint(results_dir) if resume else None,
    )
    return module, trainer


@pytest.fixture
def tiny():
    """Namespace with TinyModule, make_loader and train()."""

    class Namespace:
        pass

    ns = Namespace()
    ns.TinyModule, ns.make_loader, ns.train = TinyModule, make_loader, train
    return ns
