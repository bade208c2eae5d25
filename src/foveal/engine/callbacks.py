"""Lightning callbacks for checkpoints and the non-finite loss stop.

:class:`FovealCheckpoint` replaces Lightning's ``ModelCheckpoint``: it names files by the
Foveal contract, embeds network + config, writes the module's weights-only handoff files beside
each full checkpoint (a module with ``handoff_weights()``, e.g. nvdinov2's student and teacher),
updates ``<network>_latest.pth`` and keeps the index (``checkpoints.json``,
:mod:`foveal.engine.checkpoint_index`) with the files and metrics of every save and the best
one by a monitored metric. :class:`NonFiniteLossGuard` stops a run whose loss became NaN/inf *before* the bad
update is applied (MAE's ``isfinite`` check), so the last checkpoint stays the last good one.

Status and progress callbacks live in :mod:`foveal.engine.progress`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint

from foveal._version import __version__
from foveal.engine.checkpoint import (
    checkpoint_filename,
    find_latest_checkpoint,
    latest_link_name,
    save_weights_only,
    to_plain_config,
    update_latest_link,
    weights_filename,
)
from foveal.engine.checkpoint_index import FULL_KIND, CheckpointIndex, IndexEntry
from foveal.engine.checkpoint_io import SafeCheckpointIO
from foveal.errors import NonFiniteLossError

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers


def extract_loss(outputs: Any) -> torch.Tensor | None:
    """The loss from a ``training_step`` output (a tensor or a dict with ``"loss"``)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and isinstance(outputs.get("loss"), torch.Tensor):
        return outputs["loss"]
    return None


def is_finite(value: Any) -> bool:
    """True if a tensor / number is finite (all elements)."""
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    """``trainer.callback_metrics`` as floats; ``x_epoch`` is reported as ``x``, ``x_step`` dropped."""
    raw = dict(trainer.callback_metrics)
    metrics: dict[str, float] = {}
    for key, raw_value in raw.items():
        value: Any = raw_value
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if not isinstance(value, (int, float)):
            continue
        base = key.rsplit("_", 1)[0]
        if key.endswith("_step") and (base in raw or f"{base}_epoch" in raw):
            continue  # per-step twin of a metric logged with on_step=True and on_epoch=True
        metrics[base if key.endswith("_epoch") else key] = float(value)
    return metrics


def epoch_number(trainer: L.Trainer) -> int:
    """1-based number of the running epoch (or the one just finished, at epoch end or after fit).

    Lightning's ``current_epoch`` counts *completed* epochs, which is E-1 inside the hooks of
    epoch E but E after it; the loop's ``ready`` counter is E in both places.
    """
    return int(trainer.fit_loop.epoch_progress.current.ready)


def find_checkpoint_callback(trainer: L.Trainer) -> FovealCheckpoint | None:
    """The trainer's :class:`FovealCheckpoint`, if any."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]  # Lightning sets it at init
        if isinstance(callback, FovealCheckpoint):
            return callback
    return None


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


# --------------------------------------------------------------------------- checkpoint


class FovealCheckpoint(Checkpoint):
    """Save full training state every ``interval`` epochs or steps (and at the end of training).

    Args:
        dirpath: folder for checkpoints, the latest link and ``checkpoints.json``.
        network: network name embedded in every file, e.g. ``"classification"``.
        config_dict: the resolved spec (dict or dataclass), embedded as a plain dict.
        interval: save every ``interval`` units (TAO ``train.checkpoint_interval``).
        unit: ``"epoch"`` or ``"step"`` (global optimizer steps).
        monitor: metric name (as logged with ``self.log``) used to pick the best checkpoint.
        mode: ``"min"`` or ``"max"`` for ``monitor``.
        latest_link: file name of the link to the newest checkpoint (default
            ``<network>_latest.pth``; TAO names it per network, e.g. ``nvdinov2_model_latest.pth``).
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str],
        network: str,
        config_dict: Any = None,
        *,
        interval: int = 1,
        unit: str = "epoch",
        monitor: str | None = None,
        mode: str = "min",
        latest_link: str | None = None,
    ) -> None:
        if unit not in ("epoch", "step"):
            raise ValueError(f"checkpoint interval unit must be 'epoch' or 'step', got {unit!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"monitor mode must be 'min' or 'max', got {mode!r}")
        if int(interval) < 1:
            raise ValueError(f"checkpoint interval must be >= 1, got {interval}")
        self.dirpath = Path(dirpath)
        self.network = network
        self.config = to_plain_config(config_dict)
        self.interval = int(interval)
        self.unit = unit
        self.monitor = monitor
        self.mode = mode
        self.latest_link = latest_link
        self.best_model_path = ""  # names Lightning's `ckpt_path="best"` reads
        self.best_model_score: torch.Tensor | None = None
        self.last_model_path = ""
        self.index = CheckpointIndex(self.dirpath, network, monitor, mode)
        self._last_saved_step = -1
        self._nonfinite_seen: torch.Tensor | None = None

    # -- Lightning hooks

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        previous = CheckpointIndex.read(self.dirpath, self.network)  # a resumed run keeps its saves
        self.index = CheckpointIndex(self.dirpath, self.network, self.monitor, self.mode, previous.entries)
        self._nonfinite_seen = None
        self._refresh_best()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = extract_loss(outputs)
        if loss is not None:  # accumulate on the loss's device: no host sync per step
            bad = ~torch.isfinite(loss.detach()).all()
            self._nonfinite_seen = bad if self._nonfinite_seen is None else self._nonfinite_seen | bad
        if self.unit == "step" and trainer.global_step > 0 and trainer.global_step % self.interval == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = epoch_number(trainer)
        max_epochs, max_steps = trainer.max_epochs or -1, trainer.max_steps or -1
        last = (
            (max_epochs > 0 and epoch >= max_epochs)
            or (max_steps > 0 and trainer.global_step >= max_steps)
            or trainer.should_stop
        )  # always keep the final state, whatever the interval
        if last or (self.unit == "epoch" and epoch % self.interval == 0):
            self._save(trainer)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["network"] = self.network
        checkpoint["config"] = self.config
        checkpoint["foveal_version"] = __version__
        checkpoint["kind"] = FULL_KIND
        # Lightning's own "epoch" is the 0-based epoch index and unused on restore; ours matches
        # the file name.
        checkpoint["epoch"] = epoch_number(trainer)
        checkpoint["global_step"] = trainer.global_step

    # -- saving

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.global_step == self._last_saved_step or trainer.sanity_checking:
            return
        # every rank must take the same decision: saving is collective under DDP/FSDP
        nonfinite = bool(self._nonfinite_seen) if self._nonfinite_seen is not None else False
        if trainer.strategy.reduce_boolean_decision(nonfinite or self._metric_nonfinite(trainer), all=False):
            logger.warning("not saving a checkpoint: the training loss was not finite")
            return
        epoch, step = epoch_number(trainer), trainer.global_step
        path = self.dirpath / checkpoint_filename(epoch, step)
        if isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO):
            trainer.save_checkpoint(path, weights_only=False)
        else:  # someone else's CheckpointIO: still never expose a partial file
            tmp = path.with_name(f".tmp-{path.name}")
            trainer.save_checkpoint(tmp, weights_only=False)
            if trainer.is_global_zero:
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
        self._last_saved_step = step
        self.last_model_path = str(path)
        if trainer.is_global_zero:
            files = {FULL_KIND: path.name, **self._save_handoff_weights(trainer.lightning_module, epoch, step)}
            update_latest_link(path, self.dirpath / (self.latest_link or latest_link_name(self.network)))
            self._record(files, epoch, step, trainer)
            logger.info("saved checkpoint %s", path)  # rank 0 writes it: the others say nothing

    def _save_handoff_weights(self, module: L.LightningModule, epoch: int, step: int) -> dict[str, str]:
        """The module's weights-only files of this step (``handoff_weights()``: kind -> (state
        dict, extra fields)), written by the engine beside the full checkpoint."""
        handoff = getattr(module, "handoff_weights", None)
        if not callable(handoff):
            return {}
        files = {}
        for kind, (state_dict, extra) in handoff().items():
            path = self.dirpath / weights_filename(kind, epoch, step)
            save_weights_only(
                state_dict, path, network=self.network, config=self.config, kind=kind,
                epoch=epoch, step=step, extra=extra,
            )
            files[kind] = path.name
        return files

    def _metric_nonfinite(self, trainer: L.Trainer) -> bool:
        value = trainer.callback_metrics.get("train_loss")
        return value is not None and not is_finite(value)

    def _record(self, files: dict[str, str], epoch: int, step: int, trainer: L.Trainer) -> None:
        metrics = {k: _json_number(v) for k, v in scalar_metrics(trainer).items()}
        if self.monitor is not None and self.monitor not in metrics:
            logger.warning("monitored metric %r was not logged; available: %s", self.monitor, sorted(metrics))
        now = _dt.datetime.now(_dt.timezone.utc)
        self.index.record(
            IndexEntry(epoch, step, files, metrics, now.strftime("%Y-%m-%d"), now.strftime("%H:%M:%S"))
        )
        self._refresh_best()
        self.index.write()

    def _refresh_best(self) -> None:
        best = self.index.best()
        self.best_model_path = str(self.dirpath / best.files[FULL_KIND]) if best else ""
        value = best.metrics.get(self.monitor) if best and self.monitor else None
        self.best_model_score = torch.tensor(float(value)) if isinstance(value, (int, float)) else None


# --------------------------------------------------------------------------- non-finite loss


class NonFiniteLossGuard(L.Callback):
    """Raise :class:`NonFiniteLossError` as soon as the training loss is NaN/inf.

    The loss is checked before backward (so the bad update never reaches the weights); in a
    batch without backward, the ``training_step`` output or the logged ``train_loss`` is checked
    at batch end. Every rank takes the same decision, so DDP runs stop together instead of
    hanging. Costs one host sync per step (as MAE's ``loss.item()`` check does).

    Args:
        checkpoint_dir: where to look for the last good checkpoint to name in the message;
            defaults to the trainer's :class:`FovealCheckpoint` folder.
        metric: name of the logged training loss.
    """

    def __init__(
        self, checkpoint_dir: str | os.PathLike[str] | None = None, metric: str = "train_loss"
    ) -> None:
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.metric = metric
        self._checked_backward = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._checked_backward = False

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        self._checked_backward = True
        self._check(trainer, [loss])

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._checked_backward:
            return  # the same on every rank, so skipping keeps the collectives in step
        # no backward this batch (manual optimization without manual_backward): check what we have
        loss = extract_loss(outputs)
        if loss is None:
            metrics = trainer.callback_metrics
            loss = metrics.get(self.metric, metrics.get(f"{self.metric}_step"))
        self._check(trainer, [] if loss is None else [loss])

    def _check(self, trainer: L.Trainer, values: list[Any]) -> None:
        bad = [v for v in values if not is_finite(v)]
        if not trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            return
        if not bad:
            shown = "not finite (on another rank)"
        else:
            first = torch.as_tensor(bad[0]).detach()
            shown = "nan" if bool(torch.isnan(first).any()) else "inf"
        raise self._error(trainer, shown)

    def _error(self, trainer: L.Trainer, shown: str) -> NonFiniteLossError:
        epoch, step = epoch_number(trainer), trainer.global_step
        folder = self.checkpoint_dir
        if folder is None:
            callback = find_checkpoint_callback(trainer)
            folder = callback.dirpath if callback is not None else None
        last = find_latest_checkpoint(folder) if folder is not None else None
        kept = f"last good checkpoint kept: {last}" if last else "no checkpoint was saved before it"
        message = (
            f"training loss is {shown} at epoch {epoch}, step {step}; stopped before applying the update, "
            f"{kept}. Try a lower learning rate, fp32 precision, or gradient clipping (gradient_clip_val)."
        )
        return NonFiniteLossError(message, epoch=epoch, step=step, last_checkpoint=last)


class Diagnostics(L.Callback):
    """The slower diagnostics, every ``every`` epochs (TAO's
    ``train.tensorboard.infrequent_logging_frequency``): each optimizer group's learning rate
    (``lr/group<i>``), the global L2 norm of the trainable weights (``weight_norm``) and of the
    epoch's last gradients (``grad_norm``, still held by the parameters at the epoch's end), to
    every logger the run has. Nothing runs per step."""

    def __init__(self, every: int):
        self.every = max(1, int(every))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every or not trainer.loggers:
            return
        metrics: dict[str, float] = {}
        for opt in trainer.optimizers:
            for i, group in enumerate(opt.param_groups):
                metrics[f"lr/group{i}"] = float(group["lr"])
        trainable = [p for p in pl_module.parameters() if p.requires_grad]
        if trainable:
            metrics["weight_norm"] = float(torch.stack([p.detach().float().norm() for p in trainable]).norm())
        grads = [p.grad.detach().float().norm() for p in trainable if p.grad is not None]
        if grads:
            metrics["grad_norm"] = float(torch.stack(grads).norm())
        for log in trainer.loggers:
            log.log_metrics(metrics, step=trainer.global_step)
