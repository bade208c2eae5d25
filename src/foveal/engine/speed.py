"""Training speed and memory switches shared by the networks' ``train`` sections.

* ``train.activation_checkpointing``: every backbone in the model recomputes its blocks'
  activations in backward (`enable_activation_checkpointing`): less memory, about a third more
  compute.
* ``train.torch_compile``: the training forward runs through ``torch.compile`` (`attach_compiled`)
  while the module tree, parameter names, checkpoints and EMA copies stay those of the eager model.
* ``train.channels_last``: convolutional backbones (ConvNeXt V2) in NHWC memory layout, with the
  images converted at each step (`channels_last`): tensor-core convolutions skip layout
  transposes on a GPU.

Each is off by default; the GPU device check (``bench/device_check.sh``) measures what it buys.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import torch
from torch import nn

from foveal.errors import SpecError, SpecIssue

logger = logging.getLogger(__name__)


def enable_activation_checkpointing(model: nn.Module, key: str = "train.activation_checkpointing") -> int:
    """Switch on activation checkpointing in every module of ``model`` that has it (the backbones'
    ``set_grad_checkpointing``); returns how many.

    Raises:
        SpecError: nothing in the model can checkpoint its activations.
    """
    count = 0
    for module in model.modules():
        switch = getattr(module, "set_grad_checkpointing", None)
        if callable(switch):
            switch(True)
            count += 1
    if not count:
        raise SpecError(
            SpecIssue(key, f"{type(model).__name__} has no backbone that can checkpoint activations",
                      f"set {key}=false")  # fmt: skip
        )
    logger.info("%s: %d module(s) recompute their activations in backward", key, count)
    return count


def check_compiler(key: str = "train.torch_compile") -> None:
    """torch.compile on CPU needs a C++ compiler.

    Raises:
        SpecError: no CUDA device and no C++ compiler on the PATH.
    """
    if torch.cuda.is_available():
        return
    if not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
        raise SpecError(
            SpecIssue(
                key,
                "true, but torch.compile on CPU needs a C++ compiler and none is on the PATH (g++, c++, clang++, $CXX)",
                f"install one (e.g. apt install g++) or set {key}=false",
            )
        )


def attach_compiled(owner: nn.Module, model: nn.Module, key: str = "train.torch_compile") -> None:
    """Give ``owner`` (a LightningModule) a ``compiled_forward``: ``torch.compile(model)``, kept
    off the module tree, so calls go through the compiled graph while ``state_dict`` keys,
    checkpoints, optimizer groups and EMA copies keep seeing the eager model (which shares its
    parameters with the compiled one)."""
    check_compiler(key)
    object.__setattr__(owner, "compiled_forward", torch.compile(model))
    logger.info("%s: the training forward of %s is compiled", key, type(model).__name__)


def is_convolutional(model: nn.Module) -> bool:
    """Whether the model's backbone is a ConvNeXt V2 (the backbone channels-last pays for)."""
    from foveal.nn.convnextv2 import ConvNeXtV2

    return any(isinstance(m, ConvNeXtV2) for m in model.modules())


def use_channels_last(model: nn.Module, key: str = "train.channels_last") -> bool:
    """Put a convolutional model in channels-last memory layout; False (with a warning) for others."""
    if not is_convolutional(model):
        logger.warning("%s: the model has no ConvNeXt V2 backbone; it stays in the default layout", key)
        return False
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    logger.info("%s: %s in channels-last memory layout", key, type(model).__name__)
    return True


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in channels-last layout (other shapes unchanged)."""
    return images.contiguous(memory_format=torch.channels_last) if images.dim() == 4 else images


class SpeedOptionsMixin:
    """For LightningModules whose ``model`` the training step runs: `train_step_forward` goes
    through the compiled forward and channels-last inputs when `apply_speed_options` set them."""

    model: nn.Module
    channels_last_inputs: bool = False

    def train_step_forward(self, *args: Any) -> Any:
        if self.channels_last_inputs:
            args = tuple(channels_last(a) if isinstance(a, torch.Tensor) else a for a in args)
        compiled = self.__dict__.get("compiled_forward")  # attach_compiled's (no truth test: a Module)
        return (self.model if compiled is None else compiled)(*args)


def apply_speed_options(owner: Any, train: Any) -> None:
    """``train.activation_checkpointing``, ``train.channels_last`` and ``train.torch_compile`` of
    a spec's ``train`` section, on ``owner.model`` (a `SpeedOptionsMixin` LightningModule)."""
    model = owner.model
    if getattr(train, "activation_checkpointing", False):
        enable_activation_checkpointing(model)
    if getattr(train, "channels_last", False):
        owner.channels_last_inputs = use_channels_last(model)
    if getattr(train, "torch_compile", False):
        attach_compiled(owner, model)
