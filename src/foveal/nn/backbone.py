"""The one backbone interface every network builds on (STYLE.md rule 6), as a typing Protocol.

ViT, ConvNeXt V2 and the Hugging Face wrapper implement it: ``forward_features`` returns a dict
with ``x_norm_clstoken`` (B, D) and ``x_norm_patchtokens`` (B, N, D); ``no_weight_decay`` names
tokens and tables; ``layer_id_for_param`` numbers the layers for layer-wise decay (0 stem, k
for block k-1, ``n_blocks + 1`` for the final norm).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Backbone(Protocol):
    embed_dim: int

    @property
    def n_blocks(self) -> int: ...

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]: ...

    def no_weight_decay(self) -> set[str]: ...

    def layer_id_for_param(self, name: str) -> int: ...

    # the nn.Module methods callers use
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any: ...
