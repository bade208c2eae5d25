"""foveal.engine: what every network trains, saves and evaluates with.

A network provides a ``lightning.LightningModule`` (logging ``train_loss`` and its validation
metrics with ``self.log``) and dataloaders; the engine provides the rest::

    from foveal.engine import fit, resolve_resume_checkpoint, trainer_for

    trainer = trainer_for(cfg.train, results_dir=results_dir, network="classification",
                          config_dict=to_dict(cfg), status=ctx.status_writer, monitor="val_top1",
                          monitor_mode="max")
    ckpt = resolve_resume_checkpoint(results_dir, cfg.train.resume_training_checkpoint_path)
    fit(trainer, module, train_loader, val_loader, ckpt_path=ckpt)

Modules
-------
``trainer``
    ``trainer_for(train_cfg, ...)``: the one spec -> Trainer mapping (``trainer_settings``:
    TAO's ``num_gpus`` / ``gpu_ids``, ``distributed_strategy``, ``precision``,
    ``accum_grad_batches``, epochs and intervals); ``build_trainer`` (the same with explicit
    values), ``resolve_resume_checkpoint``, ``fit`` (a ``weights_only``-safe resume).
``checkpoint`` / ``checkpoint_index``
    File names (``model_epoch_EEE_step_SSSSS.pth``, weights-only
    ``<kind>_epoch_EEE_step_SSSSS.pth``, ``<network>_latest.pth``), atomic saves, safe loads;
    the index ``checkpoints.json`` (``CheckpointIndex``: every save's files and metrics, the best
    by the monitored metric), read by handoff through ``select_checkpoint(folder, "best" |
    "latest" | N, kind)`` and by train actions through ``checkpoint_artifacts(folder)``.
``callbacks`` / ``progress`` / ``status`` / ``checkpoint_io``
    ``FovealCheckpoint`` (writes checkpoints, the module's ``handoff_weights()`` files, the
    latest link and the index), ``NonFiniteLossGuard``, ``StatusCallback``, ``PlainProgress``,
    ``StatusWriter`` / ``read_status`` (``status.json``), ``SafeCheckpointIO``.
``optim`` / ``schedules``
    One parameter-group rule (no weight decay on 1-D tensors and declared ``no_weight_decay()``
    names; layer-wise decay from the backbone's layer ids) and one warm-up + cosine contract.
``features``
    Feature extraction, weighted kNN top-1 and a linear probe on frozen features.
``supervised`` / ``mixup`` / ``ema`` / ``metrics`` / ``pretrained``
    The supervised loop of every labeled network (classification, mae fine-tuning, ports),
    Mixup/CutMix, weight EMA, classification metrics, and reading pretrained weights of any kind.

Every checkpoint file holds ``network``, ``config``, ``foveal_version``, ``kind`` (``"full"`` or
the weights kind), ``epoch`` and ``global_step``. Resume: an epoch-end checkpoint of epoch E
resumes at epoch E+1 with optimizer, scheduler and loop state restored.

Attributes are imported on first use, so ``from foveal.engine import load_checkpoint`` (export,
evaluate, the CLI) does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "foveal.engine.callbacks": ("FovealCheckpoint", "NonFiniteLossGuard"),
    "foveal.errors": ("CheckpointError", "NonFiniteLossError"),
    "foveal.engine.checkpoint_index": (
        "FULL_KIND",
        "INDEX_FILENAME",
        "CheckpointIndex",
        "checkpoint_artifacts",
        "select_checkpoint",
    ),
    "foveal.engine.checkpoint": (
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
        "trainer_for",
        "trainer_settings",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "FULL_KIND",
    "INDEX_FILENAME",
    "CheckpointError",
    "CheckpointIndex",
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
    "select_checkpoint",
    "save_weights_only",
    "to_weights_only_safe",
    "trainer_for",
    "trainer_settings",
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
    from foveal.engine.checkpoint_index import (
        FULL_KIND,
        INDEX_FILENAME,
        CheckpointIndex,
        checkpoint_artifacts,
        select_checkpoint,
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
        trainer_for,
        trainer_settings,
    )
    from foveal.errors import CheckpointError, NonFiniteLossError
