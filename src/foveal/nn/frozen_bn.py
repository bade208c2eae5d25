"""Frozen batch normalisation: BatchNorm2d with fixed statistics and affine terms.

Batch norm (Ioffe & Szegedy, "Batch Normalization", ICML 2015, arXiv:1502.03167) estimates its
statistics from the batch in training. With small per-device batches (detection, segmentation,
fine-tuning on a few images) those estimates are noisy, so detectors since Faster R-CNN (Ren et
al., arXiv:1506.01497) and Mask R-CNN (He et al., arXiv:1703.06870) keep the pretrained
statistics and affine terms fixed. TAO exposes this as ``model.backbone.freeze_norm``.

``FrozenBatchNorm2d`` keeps ``weight``, ``bias``, ``running_mean`` and ``running_var`` as buffers
under BatchNorm2d's names, so a BatchNorm2d state dict loads into it (``num_batches_tracked`` is
ignored) and its own state dict loads back into a BatchNorm2d model through a checkpoint filter.
It computes the eval-mode BatchNorm in train mode too and has no parameters to train.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


class FrozenBatchNorm2d(nn.Module):
    """y = (x - running_mean) / sqrt(running_var + eps) * weight + bias on (B, C, H, W), always.

    Args:
        num_features: channels C.
        eps: added to the variance (BatchNorm2d's default 1e-5).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.register_buffer("weight", torch.ones(num_features, **factory))
        self.register_buffer("bias", torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        """A frozen copy of ``bn`` (same device and dtype), with its current values and eps.

        An affine-free ``bn`` gets weight 1 and bias 0; one without running statistics
        (``track_running_stats=False``) gets mean 0 and variance 1, i.e. only the affine part.
        """
        reference = bn.running_mean if bn.running_mean is not None else bn.weight
        device = reference.device if reference is not None else None
        dtype = reference.dtype if reference is not None else None
        frozen = cls(bn.num_features, eps=bn.eps, device=device, dtype=dtype)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                value = getattr(bn, name)
                if value is not None:
                    getattr(frozen, name).copy_(value.detach())
        if bn.running_mean is None:
            logger.warning("BatchNorm2d without running statistics frozen as mean 0, variance 1")
        return frozen

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A BatchNorm2d state dict carries a step counter that has no meaning here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W), one fused multiply-add per channel."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        # Cast so that autocast (fp16/bf16 activations, fp32 buffers) keeps the activation dtype.
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batchnorm(module: nn.Module) -> int:
    """Replace every ``nn.BatchNorm2d`` below ``module`` by a :class:`FrozenBatchNorm2d` copy.

    The copies keep the current statistics and affine terms, so a trained model computes the same
    eval-mode function afterwards, in train mode as well. ``module`` itself is not replaced (a
    bare BatchNorm2d has no parent to hold the copy): use ``FrozenBatchNorm2d.from_batchnorm``.
    ``SyncBatchNorm`` and 1d/3d batch norms are left alone.

    Args:
        module: any model; changed in place.

    Returns:
        The number of BatchNorm2d layers replaced.
    """
    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d.from_batchnorm(child))
            replaced += 1
        else:
            replaced += freeze_batchnorm(child)
    return replaced
