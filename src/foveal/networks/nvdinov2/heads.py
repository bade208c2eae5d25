"""DINO / iBOT projection heads (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", arXiv:2104.14294; Zhou et al., "iBOT", arXiv:2111.07832; DINOv2, arXiv:2304.07193).

An MLP maps a token (B, D) to a bottleneck (B, d), which is L2-normalised and scored against
``num_prototypes`` prototypes by a weight-normalised linear layer without bias (the "last
layer"). The prototypes' norm is fixed at 1, as DINO's ``norm_last_layer=True`` (which freezes
``weight_norm``'s gain for stability), so the layer is a linear map over row-normalised weights.
DINOv2's ``DINOHead`` fills the gain with 1 but leaves it trainable; with it fixed the scores
stay cosines in [-1, 1], so the temperatures alone set the sharpness.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PrototypeLayer(nn.Module):
    """Cosine scores against learnable prototypes: (B, d) -> (B, K), each prototype of norm 1."""

    def __init__(self, in_dim: int, num_prototypes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, in_dim))
        # nn.Linear's default init, as DINOv2's last layer (created after its trunc-normal init
        # pass): under Adam the raw norm sets how fast the normalised prototypes move.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight, dim=-1))


class DINOHead(nn.Module):
    """MLP (``num_layers`` linear layers, GELU between) -> L2 norm -> prototype scores.

    Args:
        in_dim: backbone width D.
        num_prototypes: output width K (``train.num_prototypes``).
        num_layers: linear layers in the MLP (1 = a single projection to the bottleneck).
        hidden_dim: MLP hidden width.
        bottleneck_dim: width d of the normalised bottleneck.
    """

    def __init__(
        self,
        in_dim: int,
        num_prototypes: int,
        num_layers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        num_layers = max(num_layers, 1)
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = PrototypeLayer(bottleneck_dim, num_prototypes)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., K) prototype scores (logits before temperature)."""
        x = self.mlp(x)
        # fp16 cannot represent 1e-12: DINOv2 uses a larger eps there.
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        return self.last_layer(F.normalize(x, dim=-1, eps=eps))
