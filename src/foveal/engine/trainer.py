"""Trainer factory, resume resolution and the ``fit`` wrapper every network uses.

:func:`build_trainer` maps TAO-style train options (``num_gpus``, ``precision: fp32``,
``checkpoint_interval``...) onto a configured ``lightning.Trainer`` with Foveal's checkpoint,
status, non-finite-loss and progress callbacks. :func:`resolve_resume_checkpoint` picks the
file to resume from, and :func:`fit` resumes with ``weights_only`` loading.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import Strategy

from foveal.engine.callbacks import (
    Diagnostics,
    FovealCheckpoint,
    NonFiniteLossGuard,
    find_checkpoint_callback,
)
from foveal.engine.checkpoint import FULL_KIND, find_latest_checkpoint, load_checkpoint
from foveal.engine.checkpoint_io import SafeCheckpointIO
from foveal.engine.progress import PlainProgress, StatusCallback
from foveal.engine.status import StatusWriter
from foveal.engine.tracking import Tracking
from foveal.errors import CheckpointError, GpuOutOfMemoryError, SpecError, SpecIssue
from foveal.spec.common import PRECISION_ALIASES, TrainConfig, device_ids

logger = logging.getLogger(__name__)

LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
PROGRESS_MODES = ("auto", "bar", "plain", "off")


def resolve_devices(
    num_gpus: int = 1, gpu_ids: Sequence[int] | None = None, key: str = "train"
) -> tuple[str, int | list[int]]:
    """``(accelerator, devices)`` with TAO's meaning (:func:`foveal.spec.common.device_ids`):
    ``num_gpus`` GPUs, the ones ``gpu_ids`` lists or else the first ``num_gpus`` visible; one CPU
    process when no CUDA device is present.

    Raises:
        SpecError: ``gpu_ids`` does not fit ``num_gpus``, or names a GPU that is not visible.
    """
    if int(num_gpus) <= 0:
        return "cpu", 1
    ids = device_ids(int(num_gpus), list(gpu_ids or []), key)
    if not torch.cuda.is_available():
        logger.info("no CUDA device found; training on CPU")
        return "cpu", 1
    visible = torch.cuda.device_count()
    if max(ids) >= visible:
        raise SpecError(
            SpecIssue(
                f"{key}.num_gpus",
                f"asks for GPU{'s' if len(ids) > 1 else ''} {ids} but {visible} CUDA device(s) are visible",
                f"set {key}.num_gpus (and {key}.gpu_ids) to at most {visible}, or check CUDA_VISIBLE_DEVICES",
            )
        )
    return "gpu", ids


@dataclass(frozen=True)
class TrainerSettings:
    """What one spec's ``train`` section asks of the Lightning Trainer (every network alike)."""

    accelerator: str
    devices: int | list[int]
    num_nodes: int
    strategy: str
    precision: str  # Lightning's flag, e.g. "32-true"
    accumulate_grad_batches: int
    max_epochs: int
    checkpoint_interval: int
    checkpoint_interval_unit: str
    validation_interval: int

    @property
    def processes(self) -> int:
        per_node = len(self.devices) if isinstance(self.devices, list) else int(self.devices)
        return per_node * self.num_nodes


def slurm_layout() -> tuple[int, int] | None:
    """``(nodes, tasks per node)`` of an ``srun`` with several tasks (Lightning's SLURM
    environment then ranks the processes srun started); None outside such a step."""
    try:
        tasks = int(os.environ.get("SLURM_NTASKS", "0"))
        nodes = int(os.environ.get("SLURM_NNODES", os.environ.get("SLURM_JOB_NUM_NODES", "1")))
    except ValueError:
        return None
    if tasks <= 1 or "SLURM_STEP_ID" not in os.environ or os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    return max(1, nodes), max(1, tasks // max(1, nodes))


def orchestrator_layout(train: TrainConfig) -> tuple[int, int, list[int]]:
    """``(num_nodes, num_gpus, gpu_ids)``: the spec's, or, when an orchestrator launched this
    process as one node of several, TAO's multi-node variables: ``WORLD_SIZE`` nodes,
    ``NUM_GPU_PER_NODE`` GPUs each (default: the spec's ``num_gpus``); Lightning reads
    ``NODE_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` itself. Under torchrun (``LOCAL_RANK``
    set, ``WORLD_SIZE`` counting processes) or SLURM (Lightning's SLURM environment) the spec
    stands."""
    slurm = slurm_layout()
    if slurm is not None:
        return slurm[0], train.num_gpus, list(train.gpu_ids)
    world = os.environ.get("WORLD_SIZE")
    if not world or "LOCAL_RANK" in os.environ or "SLURM_NTASKS" in os.environ:
        return train.num_nodes, train.num_gpus, list(train.gpu_ids)
    try:
        nodes = int(world)
        gpus = int(os.environ.get("NUM_GPU_PER_NODE") or train.num_gpus)
    except ValueError:
        raise SpecError(
            SpecIssue(
                "WORLD_SIZE",
                f"WORLD_SIZE={world!r} / NUM_GPU_PER_NODE={os.environ.get('NUM_GPU_PER_NODE')!r}: expected whole numbers",
                "unset them, or set the number of nodes and the GPUs per node",
            )
        ) from None
    logger.warning(
        "multi-node: WORLD_SIZE=%d nodes x NUM_GPU_PER_NODE=%d replace train.num_nodes/num_gpus/gpu_ids "
        "(NODE_RANK=%s, MASTER_ADDR=%s, MASTER_PORT=%s)",
        nodes,
        gpus,
        os.environ.get("NODE_RANK", "0"),
        os.environ.get("MASTER_ADDR", "localhost"),
        os.environ.get("MASTER_PORT", "(Lightning's default)"),
    )
    return nodes, gpus, list(range(gpus))


def trainer_settings(train: TrainConfig) -> TrainerSettings:
    """The spec -> Trainer mapping: devices (TAO's num_gpus / gpu_ids, or an orchestrator's
    multi-node variables: :func:`orchestrator_layout`), strategy (DDP / FSDP only when more than
    one process trains), precision, accumulation, epochs and intervals."""
    num_nodes, num_gpus, gpu_ids = orchestrator_layout(train)
    accelerator, devices = resolve_devices(num_gpus, gpu_ids)
    slurm = slurm_layout()
    if slurm is not None and accelerator == "cpu":  # srun's tasks are the CPU processes of each node
        devices = slurm[1]
    processes = (len(devices) if isinstance(devices, list) else devices) * num_nodes
    return TrainerSettings(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=train.distributed_strategy if processes > 1 else "auto",
        precision=resolve_precision(train.precision, accelerator),
        accumulate_grad_batches=train.accum_grad_batches,
        max_epochs=train.num_epochs,
        checkpoint_interval=train.checkpoint_interval,
        checkpoint_interval_unit=train.checkpoint_interval_unit,
        validation_interval=train.validation_interval,
    )


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU multiplies bf16 natively (AVX512-BF16 or AMX); None when unknown.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (read when not given; Linux only).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    flags = next(
        (line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), None
    )
    if flags is None:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, accelerator: str) -> str:
    """Lightning precision flag for a TAO precision name (``fp32``, ``bf16``, ``fp16``).

    fp16 on CPU falls back to fp32 (CPU AMP is bf16-only); bf16 on a GPU without bf16 support
    falls back to fp16 mixed precision. Both fallbacks log a warning.
    """
    name = PRECISION_ALIASES.get(str(precision).strip().lower())
    if name is None:
        raise SpecError(SpecIssue("train.precision", f"{precision!r} is not one of fp32, bf16, fp16"))
    if accelerator == "cpu" and name == "fp16":
        logger.warning("train.precision=fp16 is not supported on CPU; using fp32")
        name = "fp32"
    if accelerator == "cpu" and name == "bf16" and cpu_has_native_bf16() is False:
        logger.warning(
            "train.precision=bf16: this CPU has no native bf16 matmul (no AVX512-BF16 or AMX), so "
            "bf16 runs emulated and far slower than fp32 (about 30x on an AVX2 CPU); "
            "consider train.precision=fp32"
        )
    if accelerator == "gpu" and name == "bf16" and not torch.cuda.is_bf16_supported():
        logger.warning("this GPU does not support bf16; using fp16 mixed precision")
        name = "fp16"
    return LIGHTNING_PRECISION[name]


def _progress_callbacks(progress: str, every_n_steps: int) -> tuple[list[L.Callback], bool]:
    """Callbacks for a progress mode and whether Lightning's own bar stays enabled."""
    if progress not in PROGRESS_MODES:
        raise ValueError(f"progress must be one of {', '.join(PROGRESS_MODES)}, got {progress!r}")
    if progress == "auto":
        progress = "bar" if sys.stdout.isatty() else "plain"
    if progress == "bar":
        try:
            from lightning.pytorch.callbacks import RichProgressBar

            return [RichProgressBar()], True
        except (ImportError, ModuleNotFoundError):
            from lightning.pytorch.callbacks import TQDMProgressBar

            return [TQDMProgressBar()], True
    if progress == "plain":
        return [PlainProgress(every_n_steps)], False
    return [], False


def _make_logger(results_dir: Path) -> Any:
    """TensorBoard logger in ``results_dir/tensorboard`` (CSV in ``csv_logs`` without tensorboard).

    ``version=""`` keeps one folder per results dir, so a resumed run appends to the same logs.
    """
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(
            save_dir=str(results_dir), name="tensorboard", version="", default_hp_metric=False
        )
    except (ImportError, ModuleNotFoundError):
        from lightning.pytorch.loggers import CSVLogger

        logger.info("tensorboard is not installed; logging metrics to CSV")
        return CSVLogger(save_dir=str(results_dir), name="csv_logs", version="")


def prepare_training(train: TrainConfig) -> None:
    """Before a network builds its model: seed every generator (``train.seed``; -1: no seeding,
    as TAO) and set cuDNN's switches (``train.cudnn``)."""
    if train.seed >= 0:
        L.seed_everything(train.seed, workers=True, verbose=False)
    else:
        logger.info("train.seed=-1: not seeded, so runs differ")
    torch.backends.cudnn.benchmark = train.cudnn.benchmark
    torch.backends.cudnn.deterministic = train.cudnn.deterministic
    if not torch.cuda.is_available() and (train.cudnn.benchmark or not train.cudnn.deterministic):
        logger.info("train.cudnn: set, but no CUDA device is visible here, so cuDNN is not used")


def trainer_for(
    train: TrainConfig,
    *,
    results_dir: str | os.PathLike[str],
    network: str,
    config_dict: Any,
    status: StatusWriter | None = None,
    monitor: str | None = None,
    monitor_mode: str = "min",
    gradient_clip_val: float | None = None,
    latest_link: str | None = None,
    steps_per_epoch: int | None = None,
    progress: str = "auto",
    callbacks: Iterable[L.Callback] = (),
    tracking: Tracking | None = None,
) -> L.Trainer:
    """The Trainer every network trains with, from its spec's ``train`` section
    (:func:`trainer_settings`) and Foveal's checkpoint, status and progress callbacks.

    ``steps_per_epoch`` caps the logging interval, so a short epoch still logs (and reports) its
    steps. Metrics go to TensorBoard (``train.tensorboard.enabled``) and to the job's experiment
    trackers (``tracking``: W&B, MLflow)."""
    s = trainer_settings(train)
    log_every_n_steps = max(1, min(50, steps_per_epoch)) if steps_per_epoch else 50
    return build_trainer(
        results_dir=results_dir,
        network=network,
        config_dict=config_dict,
        max_epochs=s.max_epochs,
        checkpoint_interval=s.checkpoint_interval,
        checkpoint_interval_unit=s.checkpoint_interval_unit,
        validation_interval=s.validation_interval,
        settings=s,
        gradient_clip_val=gradient_clip_val,
        status=status,
        monitor=monitor,
        monitor_mode=monitor_mode,
        latest_link=latest_link,
        log_every_n_steps=log_every_n_steps,
        progress=progress,
        callbacks=[*callbacks, Diagnostics(train.tensorboard.infrequent_logging_frequency)],
        tensorboard=train.tensorboard.enabled,
        extra_loggers=tracking.loggers() if tracking is not None else (),
    )


def build_trainer(
    *,
    results_dir: str | os.PathLike[str],
    network: str,
    config_dict: Any,
    max_epochs: int,
    checkpoint_interval: int = 1,
    checkpoint_interval_unit: str = "epoch",
    validation_interval: int = 1,
    num_gpus: int = 1,
    gpu_ids: Sequence[int] | None = None,
    num_nodes: int = 1,
    precision: str = "fp32",
    strategy: str | Strategy = "auto",
    accumulate_grad_batches: int = 1,
    settings: TrainerSettings | None = None,
    gradient_clip_val: float | None = None,
    status: StatusWriter | None = None,
    monitor: str | None = None,
    monitor_mode: str = "min",
    limit_train_batches: int | float | None = None,
    limit_val_batches: int | float | None = None,
    progress: str = "auto",
    log_every_n_steps: int = 50,
    callbacks: Iterable[L.Callback] = (),
    latest_link: str | None = None,
    tensorboard: bool = True,
    extra_loggers: Sequence[Any] = (),
    **trainer_kwargs: Any,
) -> L.Trainer:
    """A ``lightning.Trainer`` wired to Foveal's checkpoint, status and progress contracts.

    Args:
        results_dir: the job's results folder: checkpoints, ``checkpoints.json``, ``tensorboard/``.
        network: network name embedded in checkpoints (``classification``...).
        config_dict: the resolved spec, embedded in checkpoints as a plain dict.
        max_epochs: TAO ``train.num_epochs``.
        checkpoint_interval, checkpoint_interval_unit: save every N ``"epoch"`` or ``"step"``.
        validation_interval: validate every N epochs.
        num_gpus, gpu_ids, num_nodes: devices; CPU when no CUDA device is present.
        precision: ``fp32`` | ``bf16`` | ``fp16`` (see :func:`resolve_precision`).
        strategy: ``auto`` | ``ddp`` | ``fsdp`` or a Lightning ``Strategy``.
        accumulate_grad_batches, gradient_clip_val: as in Lightning.
        settings: devices, strategy, precision and accumulation already resolved from a spec
            (:func:`trainer_settings`); they replace ``num_gpus`` ... ``accumulate_grad_batches``.
        status: writer for status.json (STARTED/RUNNING lines); ``None``: no status lines.
        monitor, monitor_mode: metric that picks the best checkpoint in ``checkpoints.json``.
        limit_train_batches, limit_val_batches: as in Lightning (for smoke runs).
        progress: ``auto`` (rich bar on a TTY, plain log lines otherwise) | ``bar`` | ``plain`` | ``off``.
        log_every_n_steps: logger and plain-progress interval.
        callbacks: extra callbacks.
        latest_link: name of the link to the newest checkpoint (default ``<network>_latest.pth``).
        tensorboard: write TensorBoard event files to ``results_dir/tensorboard``.
        extra_loggers: more Lightning loggers (the job's W&B / MLflow runs).
        **trainer_kwargs: any other ``lightning.Trainer`` argument; wins over the above.
    """
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    if settings is None:
        accelerator, devices = resolve_devices(num_gpus, gpu_ids)
        lightning_precision = resolve_precision(precision, accelerator)
    else:
        accelerator, devices, num_nodes = settings.accelerator, settings.devices, settings.num_nodes
        strategy, lightning_precision = settings.strategy, settings.precision
        accumulate_grad_batches = settings.accumulate_grad_batches
    progress_callbacks, progress_bar = _progress_callbacks(progress, log_every_n_steps)
    all_callbacks: list[L.Callback] = [
        FovealCheckpoint(
            results_dir,
            network,
            config_dict,
            interval=checkpoint_interval,
            unit=checkpoint_interval_unit,
            monitor=monitor,
            mode=monitor_mode,
            latest_link=latest_link,
        ),
        NonFiniteLossGuard(),
        *progress_callbacks,
    ]
    if status is not None:
        all_callbacks.append(StatusCallback(status))
    all_callbacks.extend(callbacks)
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    _quiet_lightning(verbose)
    kwargs: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": strategy,
        "precision": lightning_precision,
        "max_epochs": max_epochs,
        "default_root_dir": str(results_dir),
        "logger": ([_make_logger(results_dir)] if tensorboard else []) + list(extra_loggers) or False,
        "callbacks": all_callbacks,
        "plugins": [SafeCheckpointIO()],
        "enable_checkpointing": True,  # satisfied by FovealCheckpoint: no default ModelCheckpoint
        "enable_progress_bar": progress_bar,
        "enable_model_summary": verbose,  # Lightning's module table, with --debug
        "check_val_every_n_epoch": validation_interval,
        "accumulate_grad_batches": accumulate_grad_batches,
        "gradient_clip_val": gradient_clip_val,
        "log_every_n_steps": log_every_n_steps,
    }
    if limit_train_batches is not None:
        kwargs["limit_train_batches"] = limit_train_batches
    if limit_val_batches is not None:
        kwargs["limit_val_batches"] = limit_val_batches
    kwargs.update(trainer_kwargs)
    with _third_party_warnings_quiet():  # some are raised while the Trainer looks at its environment
        return L.Trainer(**kwargs)


def _quiet_lightning(verbose: bool) -> None:
    """Lightning logs device banners and loop messages at INFO through its own handler (set up
    at import time, so earlier CLI settings do not reach it); ours say what matters instead."""
    level = logging.DEBUG if verbose else logging.WARNING
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(level)


def resolve_resume_checkpoint(
    results_dir: str | os.PathLike[str], explicit_path: str | os.PathLike[str] | None = None
) -> Path | None:
    """The checkpoint to resume from: ``explicit_path`` if given, else the newest in ``results_dir``.

    ``explicit_path`` is TAO's ``train.resume_training_checkpoint_path``; a folder means its
    newest checkpoint. Returns ``None`` when nothing is there to resume (a fresh start).

    Raises:
        CheckpointError: ``explicit_path`` does not exist or is a folder without checkpoints.
    """
    if explicit_path is not None and str(explicit_path) != "":
        path = Path(explicit_path)
        if path.is_dir():
            latest = find_latest_checkpoint(path)
            if latest is None:
                raise CheckpointError(
                    f"train.resume_training_checkpoint_path: no model_epoch_*.pth in {path}"
                )
            return latest
        if not path.is_file():
            raise CheckpointError(f"train.resume_training_checkpoint_path: checkpoint not found: {path}")
        return path
    return find_latest_checkpoint(results_dir)


# Lightning's warnings that say nothing a Foveal user can act on (``--debug`` shows them):
# pretraining without a validation set, a pytree deprecation inside Lightning itself.
_LIGHTNING_NOISE = (
    r".*defined a `validation_step` but have no `val_dataloader`.*",
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*is smaller than the logging interval.*",
    # a frozen backbone (freeze_backbone, freeze_norm) stays in eval mode on purpose
    r".*module\(s\) in eval mode at the start of training.*",
    # a machine with SLURM's clients installed, running a job outside an srun step
    r".*The `srun` command is available on your system but is not used.*",
)


@contextlib.contextmanager
def _third_party_warnings_quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            for message in _LIGHTNING_NOISE:
                warnings.filterwarnings("ignore", message=message)
        yield


def _loads_through_checkpoint_io(strategy: Strategy) -> bool:
    """Whether the strategy reads checkpoints via ``checkpoint_io`` (single device, DDP; not FSDP)."""
    return type(strategy).load_checkpoint is Strategy.load_checkpoint


def fit(
    trainer: L.Trainer,
    module: L.LightningModule,
    train_loader: Any = None,
    val_loader: Any = None,
    ckpt_path: str | os.PathLike[str] | None = None,
    *,
    datamodule: L.LightningDataModule | None = None,
    memory_hint: str | None = None,
) -> None:
    """``trainer.fit`` with a validated, ``weights_only``-safe resume.

    CUDA running out of memory is one line (:class:`GpuOutOfMemoryError`, exit 2) naming the
    per-GPU batch size, ``memory_hint`` (the network's image size and backbone, by spec key) and
    what to change.

    The checkpoint is read once with ``torch.load(weights_only=True)`` and checked (a Foveal
    full checkpoint of this trainer's network); that dict is handed to Lightning through
    :class:`SafeCheckpointIO`. Strategies that read the file themselves (FSDP) re-read a file
    already proven to contain plain data only. Training continues at the epoch after the
    checkpoint's, with optimizer, scheduler and loop state restored.

    Raises:
        CheckpointError: the checkpoint is missing, unsafe, corrupt or of another network/kind.
    """
    io = trainer.strategy.checkpoint_io
    if ckpt_path is not None:
        callback = find_checkpoint_callback(trainer)
        checkpoint = load_checkpoint(
            ckpt_path, network=callback.network if callback else None, kind=FULL_KIND
        )
        logger.info(
            "resuming from %s (epoch %s, step %s)",
            ckpt_path,
            checkpoint.get("epoch"),
            checkpoint.get("global_step"),
        )
        if isinstance(io, SafeCheckpointIO) and _loads_through_checkpoint_io(trainer.strategy):
            io.preload(ckpt_path, checkpoint)
        del checkpoint
    try:
        with _third_party_warnings_quiet():
            trainer.fit(
                module,
                train_dataloaders=train_loader,
                val_dataloaders=val_loader,
                datamodule=datamodule,
                ckpt_path=None if ckpt_path is None else str(ckpt_path),
            )
    except torch.OutOfMemoryError as exc:  # torch.cuda.OutOfMemoryError
        raise out_of_memory(exc, trainer, train_loader, memory_hint) from None
    finally:
        if isinstance(io, SafeCheckpointIO):
            io.clear_preloaded()


def out_of_memory(exc: BaseException, trainer: L.Trainer, loader: Any, hint: str | None) -> GpuOutOfMemoryError:
    """The one line a CUDA out-of-memory error becomes (the cache is emptied first)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    batch = getattr(loader, "batch_size", None)
    where = f"epoch {trainer.current_epoch + 1}, step {trainer.global_step}"
    tried = re.search(r"Tried to allocate [0-9.]+ [KMGT]?i?B", str(exc))
    what = ", ".join(x for x in (f"per-GPU batch {batch}" if batch else "", hint or "") if x)
    return GpuOutOfMemoryError(
        f"CUDA out of memory at {where} ({what}{'; ' + tried[0].lower() if tried else ''}): lower the batch size, "
        "the image size or the backbone (a smaller ViT), or turn on activation checkpointing where the network "
        "has it (train.activation_checkpointing); train.precision=bf16 halves activations"
    )
