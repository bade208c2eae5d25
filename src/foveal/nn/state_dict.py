"""What every backbone's checkpoint filter shares: finding the state dict inside a training
checkpoint, stripping the prefixes TAO's generations and wrappers put on its keys, and reporting
what was not loaded.

TAO 6.25 saves ``model.<backbone keys>``, TAO 6.0 ``model.backbone.``, TAO 5.x and mmseg
``backbone.``, DDP ``module.``, MAE-style encoders ``encoder.``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

logger = logging.getLogger(__name__)

TAO_PREFIXES = ("model.backbone.", "backbone.", "model.", "module.", "encoder.")
# Training checkpoints nest the weights; the first of these keys that holds a dict is used.
STATE_WRAPPERS = ("state_dict", "model", "module", "model_state")


def unwrap_state_dict(checkpoint: Mapping[str, Any], wrappers: tuple[str, ...] = STATE_WRAPPERS) -> dict[str, Any]:
    """The tensors of the state dict inside ``checkpoint`` (``{"state_dict": ...}``,
    ``{"model": ...}``, nested as deep as it goes); a plain state dict is returned as it is."""
    while not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        inner = next((checkpoint[k] for k in wrappers if isinstance(checkpoint.get(k), Mapping)), None)
        if inner is None:
            break
        checkpoint = inner
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def strip_prefixes(key: str, expected: Mapping[str, Any], prefixes: tuple[str, ...] = TAO_PREFIXES) -> str:
    """``key`` without leading ``prefixes`` until the model has it (or no prefix is left)."""
    while key not in expected:
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            break
        key = key[len(prefix) :]
    return key


def match_state_dict(
    checkpoint: Mapping[str, Any],
    expected: Mapping[str, torch.Tensor],
    *,
    convert: Callable[[str, torch.Tensor], tuple[str, torch.Tensor]] | None = None,
    head_prefixes: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """The tensors of ``checkpoint`` a model with state dict ``expected`` can load.

    Unwraps a training checkpoint, strips the TAO / wrapper prefixes, applies ``convert`` (a
    family's own renames and reshapes) and keeps the tensors whose key and shape the model has.
    The rest is reported (:func:`report_unloaded`): keys the model lacks at debug level, keys of
    another shape as a warning, except a classifier (``head_prefixes``) for another number of
    classes, which is normal when fine-tuning.
    """
    out: dict[str, torch.Tensor] = {}
    absent: list[str] = []
    mismatched: list[str] = []
    for key, value in unwrap_state_dict(checkpoint).items():
        key = strip_prefixes(key, expected)
        if convert is not None:
            key, value = convert(key, value)
        if key not in expected:
            absent.append(key)
        elif value.shape != expected[key].shape:
            (absent if key.startswith(head_prefixes) else mismatched).append(key)
        else:
            out[key] = value
    report_unloaded(absent, mismatched)
    return out


def report_unloaded(absent: list[str], mismatched: list[str]) -> None:
    """Log checkpoint keys a filter did not load: absent ones are normal (debug), misfits are not."""
    if absent:
        logger.debug("checkpoint keys the model does not have, not loaded: %s", absent[:20])
    if mismatched:
        logger.warning("checkpoint keys of another shape, not loaded: %s", mismatched[:20])
