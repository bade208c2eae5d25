"""Per-step schedules every network trains with, as pure functions of the optimizer step.

One warm-up + cosine contract for all of them (DINOv2's ``CosineScheduler``, MAE's
``adjust_learning_rate`` per step): a linear warm-up from ``start`` to ``base`` over
``warmup_steps`` (step 0 is ``start``), then a half cosine from ``base`` to ``final``, reached
at ``total_steps`` (counted from step 0) and held afterwards. A multiplier schedule (the
fine-tuning networks' ``LambdaLR``) is the same function with ``base=1``. ``step_decay``
(MultiStep / StepLR) and ``linear_decay`` (TAO classification's per-epoch ``linear``) are the
alternatives, after the same warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def warmup_cosine(
    step: int, *, base: float, final: float, total_steps: int, warmup_steps: int = 0, start: float = 0.0
) -> float:
    """Value at optimizer ``step``: linear ``start -> base`` during warm-up, cosine ``base -> final``
    until ``total_steps``, then ``final``."""
    if step < warmup_steps:
        return start + (base - start) * step / warmup_steps
    if step >= total_steps:
        return final
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def step_decay(
    step: int, *, steps_per_epoch: int, milestones: Sequence[int], gamma: float, warmup_steps: int = 0
) -> float:
    """Multiplier at ``step``: the same linear warm-up from 0, then ``gamma`` once per epoch
    milestone passed (MultiStep)."""
    if step < warmup_steps:
        return step / warmup_steps
    epoch = step // max(1, steps_per_epoch)
    return float(gamma ** sum(1 for m in milestones if epoch >= m))


def linear_decay(step: int, *, steps_per_epoch: int, num_epochs: int, warmup_steps: int = 0) -> float:
    """TAO classification's ``linear`` policy: ``1 - e / (num_epochs + 1)`` in epoch ``e`` (from 0),
    after the same linear warm-up from 0."""
    if step < warmup_steps:
        return step / warmup_steps
    epoch = step // max(1, steps_per_epoch)
    return max(0.0, 1.0 - epoch / (num_epochs + 1))


SCHEDULES = ("cosine", "linear", "step", "multistep")


def lr_multiplier(
    kind: str,
    *,
    total_steps: int,
    warmup_steps: int,
    min_ratio: float = 0.0,
    steps_per_epoch: int = 1,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    step_size: int = 30,
    scale: float = 1.0,
) -> Callable[[int], float]:
    """A ``LambdaLR`` multiplier of the optimizer step, times ``scale`` (a group's layer-wise decay).

    Kinds (TAO's ``policy`` names): ``cosine`` (per step, to ``min_ratio``), ``linear`` (per epoch,
    ``1 - e/(E+1)``), ``step`` (``gamma`` every ``step_size`` epochs), ``multistep`` (``gamma`` at
    each epoch in ``milestones``). Every kind starts with the linear warm-up from 0.
    """
    if kind == "multistep":
        ms = tuple(milestones)
        return lambda s: scale * step_decay(
            s, steps_per_epoch=steps_per_epoch, milestones=ms, gamma=gamma, warmup_steps=warmup_steps
        )
    if kind == "step":
        every = max(1, int(step_size))
        epochs = max(1, total_steps // max(1, steps_per_epoch))
        ms = tuple(range(every, epochs + every, every))
        return lambda s: scale * step_decay(
            s, steps_per_epoch=steps_per_epoch, milestones=ms, gamma=gamma, warmup_steps=warmup_steps
        )
    if kind == "linear":
        epochs = max(1, round(total_steps / max(1, steps_per_epoch)))
        return lambda s: scale * linear_decay(
            s, steps_per_epoch=steps_per_epoch, num_epochs=epochs, warmup_steps=warmup_steps
        )
    if kind != "cosine":
        raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
    return lambda s: scale * warmup_cosine(
        s, base=1.0, final=min_ratio, total_steps=total_steps, warmup_steps=warmup_steps
    )
