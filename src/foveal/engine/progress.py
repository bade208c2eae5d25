"""Progress reporting: status.json lines and plain log lines for non-TTY output.

:class:`StatusCallback` writes STARTED when training starts and one RUNNING line per epoch
(KPIs, epoch/step counters, time per epoch, ETA). SUCCESS/FAILURE are the job lifecycle's to
write, since only it knows whether the whole action (not just ``fit``) succeeded.

KPIs are read from ``trainer.callback_metrics`` at the end of each training epoch: training
metrics logged with ``on_epoch=True`` and validation metrics. A metric logged in the module's
own ``on_train_epoch_end`` arrives after the callbacks run, so it shows in the *next* line.

:class:`PlainProgress` logs a line every N steps and at every epoch end through the
``foveal.engine.progress`` logger, for job logs, pipes and CI where a live bar would print
control characters.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L

from foveal.engine.callbacks import epoch_number, extract_loss, scalar_metrics
from foveal.engine.status import StatusWriter

logger = logging.getLogger(__name__)


def _max_steps(trainer: L.Trainer) -> int | None:
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # no length (an iterable dataset): the total is simply unknown
        return None
    return int(total) if math.isfinite(total) else None


def format_seconds(seconds: float) -> str:
    """``H:MM:SS`` for log lines."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


class _EpochTimer(L.Callback):
    """Mean wall time per training epoch (validation included) within this run."""

    def __init__(self) -> None:
        self._epoch_start: float | None = None
        self._durations: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.monotonic()

    def _end_epoch(self) -> float | None:
        if self._epoch_start is None:
            return None
        self._durations.append(time.monotonic() - self._epoch_start)
        self._epoch_start = None
        return sum(self._durations) / len(self._durations)


class StatusCallback(_EpochTimer):
    """Write STARTED at train start and a RUNNING line with KPIs at each epoch end (rank 0 only).

    Args:
        writer: the :class:`~foveal.engine.status.StatusWriter` of the results dir.
    """

    def __init__(self, writer: StatusWriter) -> None:
        super().__init__()
        self.writer = writer

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        done = trainer.current_epoch
        message = (
            f"Training resumed after epoch {done}" if done or trainer.global_step else "Training started"
        )
        self.writer.write(
            "STARTED",
            message,
            epoch=done,
            max_epoch=trainer.max_epochs,
            step=trainer.global_step,
            max_step=_max_steps(trainer),
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        time_per_epoch = self._end_epoch()
        if not trainer.is_global_zero:
            return
        epoch, max_epoch = epoch_number(trainer), trainer.max_epochs
        eta = None
        if time_per_epoch is not None and max_epoch and max_epoch > 0:
            eta = round(time_per_epoch * max(0, max_epoch - epoch), 3)
        self.writer.write(
            "RUNNING",
            f"Epoch {epoch}/{max_epoch} done",
            kpi=scalar_metrics(trainer),
            epoch=epoch,
            max_epoch=max_epoch,
            step=trainer.global_step,
            max_step=_max_steps(trainer),
            time_per_epoch=None if time_per_epoch is None else round(time_per_epoch, 3),
            eta=eta,
        )


class PlainProgress(_EpochTimer):
    """Log ``epoch e/E step s/S loss=… it/s eta`` every ``every_n_steps`` batches and at epoch end.

    Args:
        every_n_steps: batches between lines (0: epoch-end lines only).
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        super().__init__()
        self.every_n_steps = max(0, int(every_n_steps))
        self._window_start = time.monotonic()
        self._window_batches = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._window_start, self._window_batches = time.monotonic(), 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._window_batches += 1
        if not self.every_n_steps or (batch_idx + 1) % self.every_n_steps or not trainer.is_global_zero:
            return
        elapsed = max(time.monotonic() - self._window_start, 1e-9)
        rate = self._window_batches / elapsed
        total = trainer.num_training_batches
        parts = [
            f"epoch {epoch_number(trainer)}/{trainer.max_epochs}",
            f"batch {batch_idx + 1}/{total if math.isfinite(total) else '?'}",
            f"step {trainer.global_step}",
        ]
        loss = extract_loss(outputs)
        if loss is not None:
            parts.append(f"loss={float(loss.detach().float().mean()):.4g}")
        parts.append(f"{rate:.2f} it/s")
        if math.isfinite(total):
            parts.append(f"epoch eta {format_seconds((total - batch_idx - 1) / rate)}")
        logger.info("%s", " ".join(parts))
        self._window_start, self._window_batches = time.monotonic(), 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        mean = self._end_epoch()
        if not trainer.is_global_zero:
            return
        epoch = epoch_number(trainer)
        took = f" in {self._durations[-1]:.1f}s" if mean is not None else ""
        eta = ""
        if mean is not None and trainer.max_epochs and trainer.max_epochs > 0:
            eta = f", eta {format_seconds(mean * max(0, trainer.max_epochs - epoch))}"
        metrics = _format_metrics(scalar_metrics(trainer))
        logger.info(
            "epoch %d/%s done%s%s%s", epoch, trainer.max_epochs, took, eta, f": {metrics}" if metrics else ""
        )
