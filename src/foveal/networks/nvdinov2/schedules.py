"""Per-step schedules of nvdinov2 (DINOv2's ``CosineScheduler``, arXiv:2304.07193), as pure functions.

Every schedule in ``train.schedulers`` is the engine's warm-up + cosine
(:func:`foveal.engine.schedules.warmup_cosine`): a linear warm-up from ``val_start`` to
``val_base`` over ``warm_up_steps``, then a half-cosine from ``val_base`` down (or up) to
``val_final`` reached at ``max_decay_steps`` (counted from step 0), held there afterwards. The
last-layer learning rate is additionally 0 during its ``freeze_steps`` (DINOv2 freezes the
prototypes at the start, when they would otherwise collapse).
"""

from __future__ import annotations

from dataclasses import dataclass

from foveal.engine.schedules import warmup_cosine
from foveal.networks.nvdinov2.config import (
    LastLayerLearningRateScheduleConfig,
    SchedulerConfig,
    SchedulersConfig,
)

SCHEDULE_NAMES = (
    "learning_rate",
    "last_layer_learning_rate",
    "weight_decay",
    "momentum",
    "teacher_temperature",
)


def schedule_value(sched: SchedulerConfig, step: int) -> float:
    """Value of one ``train.schedulers.<name>`` section at ``step`` (freeze included)."""
    if isinstance(sched, LastLayerLearningRateScheduleConfig) and step < sched.freeze_steps:
        return 0.0
    return warmup_cosine(
        step,
        base=float(sched.val_base),
        final=float(sched.val_final),
        start=float(sched.val_start),
        warmup_steps=int(sched.warm_up_steps),
        total_steps=int(sched.max_decay_steps),
    )


@dataclass(frozen=True)
class StepValues:
    """All schedule values at one optimizer step."""

    lr: float
    last_layer_lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float


def values_at(schedulers: SchedulersConfig, step: int) -> StepValues:
    """The five schedules of ``train.schedulers`` at ``step``."""
    return StepValues(
        lr=schedule_value(schedulers.learning_rate, step),
        last_layer_lr=schedule_value(schedulers.last_layer_learning_rate, step),
        weight_decay=schedule_value(schedulers.weight_decay, step),
        momentum=schedule_value(schedulers.momentum, step),
        teacher_temp=schedule_value(schedulers.teacher_temperature, step),
    )


def steps_beyond_run(schedulers: SchedulersConfig, total_steps: int) -> list[str]:
    """One-line notes for schedules whose warm-up or decay does not fit in ``total_steps``.

    TAO's defaults (100k warm-up, 2.5M decay steps) are sized for ImageNet-scale runs; in a small
    run they mean the learning rate never leaves its warm-up. The values are the user's: report
    them, never change them.
    """
    notes = []
    for name in SCHEDULE_NAMES:
        sched = getattr(schedulers, name)
        if name == "teacher_temperature" and sched.val_base == sched.val_final == sched.val_start:
            continue
        for key in ("warm_up_steps", "max_decay_steps"):
            value = int(getattr(sched, key))
            if value > total_steps and (key == "warm_up_steps" or sched.val_base != sched.val_final):
                notes.append(f"train.schedulers.{name}.{key}={value} > {total_steps} steps in this run")
                break
    return notes
