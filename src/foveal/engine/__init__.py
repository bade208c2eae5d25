"""foveal.engine: the Lightning glue every network trains through.

A network provides a ``lightning.LightningModule`` (logging ``train_loss`` and its validation
metrics with ``self.log``) and dataloaders; the engine provides the rest::

    from foveal.engine import StatusWriter, build_trainer, fit, resolve_resume_checkpoint

    status = StatusWriter(results_dir / "status.json")
    trainer = build_trainer(results_dir=results_dir, network="classification", config_dict=cfg,
                            max_epochs=cfg.train.num_epochs, precision=cfg.train.precision,
                            num_gpus=cfg.train.num_gpus, status=status, monitor="val_loss")
    ckpt = resolve_resume_checkpoint(results_dir, cfg.train.resume_training_checkpoint_path)
    fit(trainer, module, train_loader, val_loader, ckpt_path=ckpt)
    status.write("SUCCESS", "Training finished")          # the job runner's call

Public API
----------
Trainer (:mod:`foveal.engine.trainer`)
    ``build_trainer(*, results_dir, network, config_dict, max_epochs, checkpoint_interval=1,
    checkpoint_interval_unit="epoch", validation_interval=1, num_gpus=1, gpu_ids=None,
    num_nodes=1, precision="fp32", strategy="auto", accumulate_grad_batches=1,
    gradient_clip_val=None, status=None, monitor=None, monitor_mode="min",
    limit_train_batches=None, limit_val_batches=None, progress="auto", log_every_n_steps=50,
    callbacks=(), **trainer_kwargs) -> lightning.Trainer``;
    ``resolve_resume_checkpoint(results_dir, explicit_path=None) -> Path | None``;
    ``fit(trainer, module, train_loader=None, val_loader=None, ckpt_path=None, *, datamodule=None)``;
    ``resolve_precision(precision, accelerator) -> str``; ``resolve_devices(num_gpus, gpu_ids)``.
Checkpoints (:mod:`foveal.engine.checkpoint`)
    ``checkpoint_filename(epoch, step)`` (``model_epoch_002_step_00040.pth``, epoch 1-based),
    ``weights_filename(kind, epoch)`` (``student_epoch_003.pth``), ``latest_link_name(network)``,
    ``parse_checkpoint_filename(name)``, ``save_checkpoint_atomic(obj, path)``,
    ``save_weights_only(state_dict, path, *, network, config, kind, epoch=None, step=None)``,
    ``load_checkpoint(path, map_location="cpu", *, network=None, kind=None, require_foveal=True)``,
    ``find_latest_checkpoint(results_dir)``, ``list_checkpoints(results_dir)``,
    ``update_latest_link(target, link)``, ``to_weights_only_safe(obj)``, ``CheckpointError``.
    Every file holds ``network``, ``config``, ``foveal_version``, ``kind`` (``"full"`` or the
    weights kind), ``epoch``, ``global_step`` (+ Lightning's state for full checkpoints).
Status (:mod:`foveal.engine.status`)
    ``StatusWriter(path).write(status, message, verbosity="INFO", **fields)``,
    ``read_status(path) -> list[dict]``. Dates/times UTC; ``time_per_epoch``/``eta`` in seconds.
Callbacks (:mod:`foveal.engine.callbacks`, :mod:`foveal.engine.progress`)
    ``FovealCheckpoint(dirpath, network, config_dict, *, interval=1, unit="epoch", monitor=None,
    mode="min")`` (writes ``checkpoints.json`` with every checkpoint's metrics and the best),
    ``NonFiniteLossGuard(checkpoint_dir=None, metric="train_loss")`` raising
    ``NonFiniteLossError``, ``StatusCallback(writer)``, ``PlainProgress(every_n_steps=50)``.
    ``SafeCheckpointIO``: the Lightning CheckpointIO plugin behind atomic saves and
    ``weights_only`` loads.

Resume: an epoch-end checkpoint of epoch E resumes at epoch E+1 with optimizer, scheduler and
loop state restored. A step checkpoint (``checkpoint_interval_unit="step"``) resumes mid-epoch
with Lightning's semantics: counters continue, a non-stateful dataloader restarts its iteration.

Attributes are imported on first use, so ``from foveal.engine import load_checkpoint`` (export,
evaluate, the CLI) does not pay for importing Lightning.

Files in a results dir: ``model_epoch_*_step_*.pth``, ``<network>_latest.pth``,
``checkpoints.json``, ``status.json`` (when a writer is given), ``tensorboard/``.
Plain progress lines go to the ``foveal.engine.progress`` logger at INFO: the CLI / job runner
configures logging.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "foveal.engine.callbacks": ("FovealCheckpoint", "NonFiniteLossGuard"),
    "foveal.errors": ("CheckpointError", "NonFiniteLossError"),
    "foveal.engine.checkpoint": (
        "FULL_KIND",
        "INDEX_FILENAME",
        "checkpoint_artifacts",
        "checkpoint_filename",
        "find_latest_checkpoint",
        "latest_link_name",
        "list_checkpoints",
        "load_checkpoint",
        "parse_checkpoint_filename",
        "save_checkpoint_atomic",
        "save_weights_only",
        "to_weights_only_safe",
        "update_latest_link",
        "weights_filename",
    ),
    "foveal.engine.checkpoint_io": ("SafeCheckpointIO",),
    "foveal.engine.progress": ("PlainProgress", "StatusCallback"),
    "foveal.engine.status": ("StatusWriter", "read_status"),
    "foveal.engine.trainer": (
        "build_trainer",
        "fit",
        "resolve_devices",
        "resolve_precision",
        "resolve_resume_checkpoint",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "FULL_KIND",
    "INDEX_FILENAME",
    "CheckpointError",
    "FovealCheckpoint",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "PlainProgress",
    "SafeCheckpointIO",
    "StatusCallback",
    "StatusWriter",
    "build_trainer",
    "checkpoint_artifacts",
    "checkpoint_filename",
    "find_latest_checkpoint",
    "fit",
    "latest_link_name",
    "list_checkpoints",
    "load_checkpoint",
    "parse_checkpoint_filename",
    "read_status",
    "resolve_devices",
    "resolve_precision",
    "resolve_resume_checkpoint",
    "save_checkpoint_atomic",
    "save_weights_only",
    "to_weights_only_safe",
    "update_latest_link",
    "weights_filename",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'foveal.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from foveal.engine.callbacks import FovealCheckpoint, NonFiniteLossGuard
    from foveal.engine.checkpoint import (
        FULL_KIND,
        INDEX_FILENAME,
        checkpoint_artifacts,
        checkpoint_filename,
        find_latest_checkpoint,
        latest_link_name,
        list_checkpoints,
        load_checkpoint,
        parse_checkpoint_filename,
        save_checkpoint_atomic,
        save_weights_only,
        to_weights_only_safe,
        update_latest_link,
        weights_filename,
    )
    from foveal.engine.checkpoint_io import SafeCheckpointIO
    from foveal.engine.progress import PlainProgress, StatusCallback
    from foveal.engine.status import StatusWriter, read_status
    from foveal.engine.trainer import (
        build_trainer,
        fit,
        resolve_devices,
        resolve_precision,
        resolve_resume_checkpoint,
    )
    from foveal.errors import CheckpointError, NonFiniteLossError
