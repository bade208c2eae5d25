"""ResNet and ResNet-D backbones with torchvision / timm parameter names.

Architecture: He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016,
arXiv:1512.03385), in the "v1.5" form of torchvision and timm (the stride of a bottleneck sits in
its 3x3 conv). The "d" variants follow He et al., "Bag of Tricks for Image Classification with
Convolutional Neural Networks" (CVPR 2019, arXiv:1812.01187): a deep stem of three 3x3 convs
(widths 32, 32, 64) instead of the 7x7 conv, and a shortcut that average-pools (2x2, stride 2,
ceil mode, padding not counted) before its 1x1 conv instead of striding the conv.

TAO's ``cv/backbone_v2/resnet.py`` subclasses timm 1.0.14's ResNet unchanged, so keys are
timm's, which equal torchvision's for the plain variants: ``conv1``, ``bn1``,
``layer{1..4}.{j}.{conv,bn}{1..3}``, ``downsample.{0,1}`` (``downsample.{1,2}`` for "d", whose
``downsample.0`` is the pool), deep stem ``conv1.{0,1,3,4,6}``, classifier ``fc``. Initialisation
is timm's: Kaiming-normal (fan-out) convs and a zero gamma on each block's last BN.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from foveal.nn.layers import DropPath
from foveal.nn.registry import register_backbone
from foveal.nn.state_dict import match_state_dict

logger = logging.getLogger(__name__)

# depth -> (block type, blocks per stage), as in the paper's Table 1.
RESNET_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
_STAGE_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut; ReLU after the sum. (B, C_in, H, W) -> (B, C, H/s, W/s)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act(self.drop_path(x) + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, each conv-BN; shortcut; ReLU after the sum."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, outplanes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.act = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.act(self.drop_path(x) + shortcut)


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _shortcut(inplanes: int, outplanes: int, stride: int, avg_down: bool) -> nn.Sequential:
    """Projection shortcut: strided 1x1 conv + BN, or ("d") 2x2 average pool + 1x1 conv + BN."""
    if not avg_down:
        return nn.Sequential(
            nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), nn.BatchNorm2d(outplanes)
        )
    pool: nn.Module = (
        nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    )
    return nn.Sequential(pool, nn.Conv2d(inplanes, outplanes, 1, bias=False), nn.BatchNorm2d(outplanes))


class ResNet(nn.Module):
    """ResNet / ResNet-D with the foveal backbone interface.

    ``forward_features`` returns ``x_norm_clstoken`` (B, C) = the global average pool of
    ``layer4`` (TAO's pre-logits; the name is the interface's, nothing is normalised: a ResNet has
    no final norm) and ``x_norm_patchtokens`` (B, H/32 * W/32, C) = ``layer4`` flattened.

    Args:
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50 and deeper).
        layers: blocks per stage.
        img_size: nominal input size (kept for the interface; any size works).
        in_chans: input channels.
        num_classes: size of the ``fc`` head; 0 means none (``forward`` returns the pooled feature).
        deep_stem: three 3x3 convs (``stem_width``, ``stem_width``, ``2 * stem_width``) instead of
            one 7x7 conv of ``stem_width`` channels.
        stem_width: see ``deep_stem``; 64 for the plain stem, 32 for the deep one (giving 64).
        avg_down: average-pool before the 1x1 projection shortcut instead of striding it.
        drop_rate: dropout before ``fc``.
        drop_path_rate: stochastic depth of the last block, growing linearly from 0 (timm's rule).
        zero_init_last: start each block's last BN gamma at zero (each block is then the identity).
    """

    def __init__(
        self,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 0,
        deep_stem: bool = False,
        stem_width: int = 64,
        avg_down: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f"unknown block {block!r}; expected one of {sorted(_BLOCKS)}")
        if len(layers) != 4:
            raise ValueError(f"layers must give 4 stages, got {tuple(layers)}")
        block_cls = _BLOCKS[block]
        self.block, self.layers = block, tuple(layers)
        self.img_size = img_size
        self.drop_rate = drop_rate
        self.zero_init_last = zero_init_last
        self.grad_checkpointing = False

        inplanes = 2 * stem_width if deep_stem else stem_width
        if deep_stem:
            self.conv1: nn.Module = nn.Sequential(
                nn.Conv2d(in_chans, stem_width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, stem_width, 3, padding=1, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, inplanes, 3, padding=1, bias=False),
            )
        else:
            self.conv1 = nn.Conv2d(in_chans, inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        total = sum(self.layers)
        index = 0
        for stage, (planes, depth) in enumerate(zip(_STAGE_WIDTHS, self.layers, strict=True)):
            stride = 1 if stage == 0 else 2
            outplanes = planes * block_cls.expansion
            blocks = []
            for j in range(depth):
                downsample = None
                if j == 0 and (stride != 1 or inplanes != outplanes):
                    downsample = _shortcut(inplanes, outplanes, stride, avg_down)
                rate = drop_path_rate * index / max(total - 1, 1)
                blocks.append(block_cls(inplanes, planes, stride if j == 0 else 1, downsample, rate))
                inplanes, index = outplanes, index + 1
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.embed_dim = self.num_features = inplanes
        self.fc: nn.Module = nn.Linear(inplanes, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @property
    def n_blocks(self) -> int:
        return sum(self.layers)

    def stages(self) -> list[nn.Sequential]:
        """``layer1`` .. ``layer4``."""
        return [getattr(self, f"layer{i}") for i in range(1, 5)]

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's initialisation: Kaiming-normal (fan-out, ReLU) convs, BN gamma 1 and beta 0 (the
        last BN of each block at gamma 0 with ``zero_init_last``), PyTorch's default for ``fc``."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.Linear)):
                module.reset_parameters()
        if self.zero_init_last:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    norm = module.last_norm()
                    if isinstance(norm, nn.BatchNorm2d):
                        nn.init.zeros_(norm.weight)

    # ----------------------------------------------------------------------------- forward

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, 64, H/4, W/4): stem convs, BN, ReLU, 3x3 stride-2 max pool."""
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        for block in stage:
            if self.grad_checkpointing and torch.is_grad_enabled():
                # BN running statistics are updated again when the block is recomputed (as in timm).
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward_feature_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs (B, C_i, H/s, W/s) at strides s = 4, 8, 16, 32."""
        x = self.forward_stem(x)
        maps = []
        for stage in self.stages():
            x = self._run_stage(stage, x)
            maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Encode images.

        Args:
            x: (B, C_in, H, W), any size.
            masks: not supported (must be None).

        Returns:
            ``x_norm_clstoken`` (B, C): global average of ``layer4`` (not normalised, see the class
            docstring); ``x_norm_patchtokens`` (B, h*w, C): ``layer4`` flattened, h = ceil(H/32).
        """
        if masks is not None:
            raise ValueError("ResNet does not support masks")
        x = self.forward_stem(x)
        for stage in self.stages():
            x = self._run_stage(stage, x)
        tokens = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        return {"x_norm_clstoken": tokens.mean(dim=1), "x_norm_patchtokens": tokens}

    def forward_head(self, features: dict[str, torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        """The pooled feature (B, C), then dropout and ``fc`` unless ``pre_logits``."""
        pooled = features["x_norm_clstoken"]
        if pre_logits:
            return pooled
        return self.fc(F.dropout(pooled, p=self.drop_rate, training=self.training))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, num_classes) logits, or the pooled (B, C) feature without a head."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` (PyTorch's default init); ``num_classes=0`` removes it."""
        self.fc = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    # ----------------------------------------------------------------------------- training

    def no_weight_decay(self) -> set[str]:
        """Empty: a ResNet has no tokens or tables (TAO/timm decay BN and biases as well)."""
        return set()

    def layer_id_for_param(self, name: str) -> int:
        """Layer index for layer-wise LR decay.

        0 for the stem (``conv1``, ``bn1``), ``k + 1`` for the k-th residual block counted over all
        stages (its shortcut included), ``n_blocks + 1`` for ``fc`` and anything else. A wrapper
        prefix such as ``backbone.`` is allowed.
        """
        match = re.search(r"(?:^|\.)layer([1-4])\.(\d+)\.", name)
        if match:
            stage, block = int(match.group(1)) - 1, int(match.group(2))
            return sum(self.layers[:stage]) + block + 1
        if re.search(r"(?:^|\.)(?:conv1|bn1)\.", name):
            return 0
        return self.n_blocks + 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each residual block's activations in backward (non-reentrant checkpoint)."""
        self.grad_checkpointing = enable


# --------------------------------------------------------------------------------- checkpoints


def resnet_checkpoint_filter_fn(state_dict: Mapping[str, Any], model: ResNet) -> dict[str, torch.Tensor]:
    """A TAO, timm or torchvision ResNet checkpoint as ``model``'s state dict.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}``, strips the TAO prefixes ``model.``,
    ``model.backbone.``, ``backbone.`` (and DDP's ``module.``), drops the classifier ``fc.*`` when
    the model has none or one of another size, and keeps only keys whose name and shape match.
    Checkpoints saved with frozen BN lack ``num_batches_tracked``; it is filled with 0 so that a
    strict load into a BatchNorm2d model works.

    Args:
        state_dict: a state dict or a training checkpoint holding one.
        model: the target (only its state dict's names and shapes are read).

    Returns:
        The filtered state dict.
    """
    expected = model.state_dict()
    out = match_state_dict(state_dict, expected, head_prefixes=("fc.",))
    for key, value in expected.items():
        stem = key.removesuffix("num_batches_tracked")
        if stem != key and key not in out and stem + "running_mean" in out:
            out[key] = torch.zeros_like(value, device="cpu")
    return out


# --------------------------------------------------------------------------------- registry


def _register(depth: int, variant_d: bool) -> None:
    block, layers = RESNET_DEPTHS[depth]
    defaults: dict[str, Any] = {"block": block, "layers": layers}
    if variant_d:
        defaults.update(deep_stem=True, stem_width=32, avg_down=True)

    def build(**overrides: Any) -> ResNet:
        return ResNet(**{**defaults, **overrides})

    kind = "ResNet-D (deep stem, average-pool shortcut)" if variant_d else "ResNet (v1.5, torchvision)"
    build.__doc__ = f"{kind}-{depth}: {block} blocks {layers}."
    register_backbone(f"resnet_{depth}{'d' if variant_d else ''}")(build)


for _depth in RESNET_DEPTHS:
    _register(_depth, variant_d=False)
    _register(_depth, variant_d=True)
