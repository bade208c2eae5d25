"""Exponential moving average of a model's weights (Polyak averaging).

Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging" (1992); used for
ViT fine-tuning by DeiT (Touvron et al., arXiv:2012.12877). After every optimizer step,
``ema = d * ema + (1 - d) * live`` for floating-point tensors; integer buffers are copied.
With ``warmup`` the decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as
TensorFlow's ``ExponentialMovingAverage(num_updates=...)``), so a short run is not dominated by
its initial weights.

The average is a plain dict of tensors, not a module: it never appears in the live model's
``state_dict`` (checkpoints keep it apart, as ``ema_state_dict``), DDP never syncs it, and a
forward pass with it goes through ``torch.func.functional_call``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class WeightEma:
    """EMA of ``model.state_dict()``.

    Args:
        model: the live model; its current weights start the average.
        decay: per-update decay in [0, 1).
        warmup: ramp the decay up over the first updates (see the module docstring).
    """

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.state: dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        """Decay the next update will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the live weights into the average (call after each optimizer step)."""
        decay = self.current_decay()
        live = model.state_dict()
        floats_ema, floats_live = [], []
        for key, ema in self.state.items():
            value = live[key].detach()
            if ema.device != value.device:
                ema = self.state[key] = ema.to(value.device)
            if ema.is_floating_point():
                floats_ema.append(ema)
                floats_live.append(value.to(ema.dtype))
            else:
                ema.copy_(value)
        if floats_ema:
            # ema + (1 - d) * (live - ema) == d * ema + (1 - d) * live
            torch._foreach_lerp_(floats_ema, floats_live, 1.0 - decay)
        self.num_updates += 1

    def to(self, device: torch.device | str) -> WeightEma:
        """Move the average to ``device`` (e.g. the live model's, at fit start)."""
        self.state = {k: v.to(device) for k, v in self.state.items()}
        return self

    def forward(self, model: nn.Module, *args: Any) -> Any:
        """``model(*args)`` computed with the averaged weights (the live ones are untouched)."""
        return torch.func.functional_call(model, self.state, args)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, with the live model's keys, on the CPU."""
        return {k: v.detach().cpu() for k, v in self.state.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], num_updates: int = 0) -> None:
        """Restore an average saved by :meth:`state_dict` (e.g. when resuming)."""
        missing = set(self.state) - set(state)
        unexpected = set(state) - set(self.state)
        if missing or unexpected:
            raise KeyError(
                f"EMA weights do not match the model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        for key, value in state.items():
            self.state[key] = value.detach().to(self.state[key].device, self.state[key].dtype).clone()
        self.num_updates = int(num_updates)
