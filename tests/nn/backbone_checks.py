"""Checks every backbone family's tests share (imported by the test_nn_* modules, whose folder
pytest puts on sys.path)."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def key_digest(state: dict[str, torch.Tensor]) -> tuple[int, str]:
    """(number of entries, sha256[:16] of the sorted ``key:shape`` lines) of a state dict."""
    lines = sorted(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def loss_and_grads(
    model: nn.Module, x: torch.Tensor, checkpointing: bool, output: str = "x_norm_patchtokens"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One backward of ``forward_features(x)[output].pow(2).mean()`` with gradient checkpointing
    on or off; returns the loss and the gradients that exist. The seed is fixed before the
    forward so stochastic depth draws the same paths (the checkpoint replays them)."""
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(checkpointing)  # type: ignore[operator]
    torch.manual_seed(7)
    loss = model.forward_features(x)[output].pow(2).mean()  # type: ignore[operator]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
