"""Building blocks of FAN (Fully Attentional Networks), assembled in :mod:`foveal.nn.fan`.

Zhou et al., "Understanding The Robustness in Vision Transformers" (ICML 2022,
arXiv:2204.12451). A FAN block is pre-norm self-attention over tokens followed by "channel
processing": a conv-augmented MLP whose output channels are gated by an attention computed over
channels. The class-attention head comes from CaiT (Touvron et al., "Going deeper with Image
Transformers", arXiv:2103.17239) and the Fourier positional encoding from XCiT (El-Nouby et al.,
arXiv:2106.09681). The hybrid stem is the first two stages of a ConvNeXt (Liu et al., "A ConvNet
for the 2020s", arXiv:2201.03545).

Attribute names (hence state-dict keys) are those of TAO's ``cv/backbone_v2/fan.py`` and
``convnext_utils.py``, which equal NVlabs/FAN's, so TAO checkpoints load without renaming. Token
tensors are (B, N, C) with N = H * W row-major; maps are (B, C, H, W).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from foveal.nn.layers import DropPath, Mlp

Size = tuple[int, int]


def tokens_to_map(x: torch.Tensor, size: Size) -> torch.Tensor:
    """(B, N, C) tokens -> (B, C, H, W) map."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], size[0], size[1])


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map -> (B, H*W, C) tokens."""
    return x.flatten(2).transpose(1, 2)


def fan_conv_init_(conv: nn.Conv2d) -> None:
    """The FAN blocks' conv init: N(0, sqrt(2 / fan_out)), fan_out = k*k*out / groups; zero bias."""
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def transformer_init_(module: nn.Module) -> None:
    """What FAN's ``_init_weights`` does to every submodule: Linear trunc-normal(0.02) with zero
    bias, LayerNorm (also the channels-first one) to ones and zeros."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------- embeddings


class PositionalEncodingFourier(nn.Module):
    """XCiT's Fourier position encoding, computed for any (H, W) grid, then a 1x1 conv to ``dim``.

    Rows 1..H and columns 1..W are scaled to (0, 2 pi]; each coordinate feeds ``hidden_dim``
    sinusoids (sin on even, cos on odd channels, wavelengths ``temperature ** (2 floor(i/2) /
    hidden_dim)``); y's channels come before x's.
    """

    def __init__(self, dim: int, hidden_dim: int = 32, temperature: float = 10000.0) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.eps = 1e-6
        self.token_projection = nn.Conv2d(2 * hidden_dim, dim, kernel_size=1)

    def _encode(self, length: int, device: torch.device) -> torch.Tensor:
        """(length, hidden_dim) sinusoids of positions 1..length, computed in float32."""
        pos = torch.arange(1, length + 1, dtype=torch.float32, device=device)
        pos = pos / (pos[-1:] + self.eps) * (2 * math.pi)
        index = torch.arange(self.hidden_dim, dtype=torch.float32, device=device)
        wavelengths = self.temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / self.hidden_dim)
        angles = pos[:, None] / wavelengths  # (length, hidden_dim)
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """The (1, H*W, dim) encoding of an H x W grid."""
        weight = self.token_projection.weight
        pos_y = self._encode(height, weight.device)[:, None].expand(height, width, self.hidden_dim)
        pos_x = self._encode(width, weight.device)[None].expand(height, width, self.hidden_dim)
        grid = torch.cat([pos_y, pos_x], dim=2).permute(2, 0, 1)[None]  # (1, 2*hidden, H, W)
        return map_to_tokens(self.token_projection(grid.to(weight.dtype)))

    def init_weights(self) -> None:
        self.token_projection.reset_parameters()  # the reference leaves PyTorch's default


class ConvPatchEmbed(nn.Module):
    """The ViT variants' stem: four [3x3 stride-2 conv (no bias), BatchNorm] stages with GELU in
    between, widths D/8, D/4, D/2, D; total stride 16. Keys ``proj.{0,2,4,6}.{0,1}``."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        widths = [in_chans, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        layers: list[nn.Module] = []
        for i in range(4):
            if i:
                layers.append(nn.GELU())
            conv = nn.Conv2d(widths[i], widths[i + 1], kernel_size=3, stride=2, padding=1, bias=False)
            layers.append(nn.Sequential(conv, nn.BatchNorm2d(widths[i + 1])))
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Size]:
        """(B, C_in, H, W) -> tokens (B, H/16 * W/16, D) and the grid (H/16, W/16)."""
        x = self.proj(x)
        return map_to_tokens(x), (x.shape[2], x.shape[3])

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                m.reset_parameters()  # the reference leaves PyTorch's default


class ConvNeXtLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (eps 1e-6), as the FAN reference's ConvNeXt
    computes it.

    The reference's ``LayerNorm2d`` (NVlabs/FAN and TAO ``convnext_utils.py``, from an old timm) normalises
    a contiguous map with ``F.layer_norm`` (biased variance) but a non-contiguous one with
    ``torch.var_mean``, whose variance is *unbiased* (divides by C - 1). The stem's norm permutes back,
    so every later map is channels-last strided: for an ordinary contiguous input the stem's norm is the
    biased one and every block and downsample norm the unbiased one. Pretrained FAN hybrids were trained
    that way, so ``unbiased`` fixes that choice per norm instead of reading the memory layout.
    """

    def __init__(self, dim: int, unbiased: bool, eps: float = 1e-6) -> None:
        super().__init__(dim, eps=eps)
        self.unbiased = unbiased

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.unbiased:
            x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
            return x.permute(0, 3, 1, 2)
        var, mean = torch.var_mean(x, dim=1, keepdim=True)  # correction=1, as the reference
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ConvNeXtMlp(nn.Module):
    """1x1-conv MLP on (B, C, H, W): fc1 -> GELU -> fc2 (timm ``ConvMlp``; its norm is Identity)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, kernel_size=1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block, channels first: x + gamma * mlp(norm(conv_dw(x))), gamma starting at 1e-6."""

    def __init__(self, dim: int, ls_init_value: float = 1e-6) -> None:
        super().__init__()
        self.ls_init_value = ls_init_value
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = ConvNeXtLayerNorm2d(dim, unbiased=True)
        self.mlp = ConvNeXtMlp(dim, 4 * dim)
        self.gamma = nn.Parameter(torch.full((dim,), ls_init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(self.conv_dw(x))) * self.gamma.reshape(1, -1, 1, 1)


class ConvNeXtStage(nn.Module):
    """Optional downsampling (channels-first LayerNorm + 2x2 stride-2 conv), then ConvNeXt blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool) -> None:
        super().__init__()
        self.downsample: nn.Module = (
            nn.Sequential(
                ConvNeXtLayerNorm2d(in_dim, unbiased=True), nn.Conv2d(in_dim, dim, kernel_size=2, stride=2)
            )
            if downsample
            else nn.Identity()
        )
        self.blocks = nn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXtStem(nn.Module):
    """The hybrids' CNN: a ConvNeXt cut after two stages (TAO ``ConvNeXtFANBackbone`` with
    ``use_head=False``): 4x4 stride-4 stem to 128 channels, 3 blocks at 128, downsampling to 256
    and ``depths[1]`` blocks. Output (B, 256, H/8, W/8). No stochastic depth (TAO passes none)."""

    def __init__(self, in_chans: int, depths: tuple[int, int], dims: tuple[int, int] = (128, 256)) -> None:
        super().__init__()
        self.num_features = dims[1]
        stem_norm = ConvNeXtLayerNorm2d(dims[0], unbiased=False)  # eps 1e-6, as every norm here
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), stem_norm)
        self.stages = nn.Sequential(
            ConvNeXtStage(dims[0], dims[0], depths[0], downsample=False),
            ConvNeXtStage(dims[0], dims[1], depths[1], downsample=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def init_weights(self) -> None:
        """ConvNeXt init: convs trunc-normal(0.02) with zero bias, LayerScale 1e-6, norms 1/0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, ConvNeXtBlock):
                nn.init.constant_(m.gamma, m.ls_init_value)


class HybridEmbed(nn.Module):
    """The hybrids' stem: ``backbone`` (a two-stage ConvNeXt, stride 8) then ``proj``, a 2x2
    stride-2 conv to the token width; total stride 16."""

    def __init__(self, in_chans: int, embed_dim: int, depths: tuple[int, int]) -> None:
        super().__init__()
        self.backbone = ConvNeXtStem(in_chans, depths)
        self.proj = nn.Conv2d(self.backbone.num_features, embed_dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Size]:
        """(B, C_in, H, W) -> tokens (B, H/16 * W/16, D) and the grid (H/16, W/16)."""
        x = self.proj(self.backbone(x))
        return map_to_tokens(x), (x.shape[2], x.shape[3])

    def init_weights(self) -> None:
        self.backbone.init_weights()
        self.proj.reset_parameters()  # the reference leaves PyTorch's default


class OverlapPatchEmbed(nn.Module):
    """Token downsampling inside a block (FAN-XLarge's block 19): 3x3 stride-2 conv on the map,
    then LayerNorm with PyTorch's default eps 1e-5 (not the blocks' 1e-6)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor, size: Size) -> tuple[torch.Tensor, Size]:
        x = self.proj(tokens_to_map(x, size))
        return self.norm(map_to_tokens(x)), (x.shape[2], x.shape[3])


# ------------------------------------------------------------------------------ FAN block parts


class DWConv(nn.Module):
    """On the token map: 3x3 depthwise conv1 -> GELU -> BatchNorm -> 3x3 depthwise conv2."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        return map_to_tokens(self.conv2(self.bn(self.act(self.conv1(tokens_to_map(x, size))))))


class DWConvMlp(nn.Module):
    """FAN's MLP: fc1 -> y + gamma * DWConv(y) -> fc2. There is NO activation after fc1 (the
    reference builds one and never calls it); ``gamma`` (hidden width) starts at 1."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.gamma = nn.Parameter(torch.ones(hidden_dim))
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        x = self.fc1(x)
        return self.fc2(self.gamma * self.dwconv(x, size) + x)


class SqueezeExcite(nn.Module):
    """Channel gate on (B, C, H, W): sigmoid(conv_expand(ReLU(conv_reduce(mean over H, W))))."""

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        reduced = max(1, int(dim * ratio + 0.5))  # timm make_divisible with divisor 1
        self.conv_reduce = nn.Conv2d(dim, reduced, kernel_size=1)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv_expand(self.act1(self.conv_reduce(x.mean(dim=(2, 3), keepdim=True))))
        return x * gate.sigmoid()


class SEMlp(DWConvMlp):
    """The SE variant's channel part: :class:`DWConvMlp`, then a squeeze-excite gate on the map."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__(dim, hidden_dim)
        self.se = SqueezeExcite(dim)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        return map_to_tokens(self.se(tokens_to_map(super().forward(x, size), size)))


class TokenMixing(nn.Module):
    """Multi-head self-attention with separate ``q`` and ``kv`` projections (no spatial reduction)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as the reference
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class ChannelProcessing(nn.Module):
    """FAN's channel attention: v = norm_v(mlp_v(x)) gated per channel by
    ``temperature * sigmoid(softmax_N(q(x))^T mean_d(softmax_N(x)))``.

    With h heads of width d: q (B, h, d, N) is softmaxed over tokens; the key is the raw input,
    softmaxed over tokens and averaged over d to (B, h, N, 1); their product is one gate per
    channel, (B, h, d, 1), broadcast over tokens. There is no output projection; ``norm_v`` uses
    LayerNorm's default eps 1e-5.
    """

    def __init__(self, dim: int, num_heads: int, hidden_dim: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.mlp_v = DWConvMlp(dim, hidden_dim)
        self.norm_v = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, c // self.num_heads).permute(0, 2, 3, 1)
        k = x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        q = q.softmax(dim=-1)  # (B, h, d, N), over tokens
        k = k.softmax(dim=-2).mean(dim=-1, keepdim=True)  # (B, h, N, 1)
        gate = torch.sigmoid(q @ k) * self.temperature  # (B, h, d, 1)
        v = self.norm_v(self.mlp_v(x, size))
        return v * gate.reshape(b, 1, c)


class FANBlock(nn.Module):
    """x + gamma1 * TokenMixing(norm1(x)), then x + gamma2 * mlp(norm2(x)), then the optional
    ``downsample`` (FAN-XLarge block 19). ``mlp`` is :class:`ChannelProcessing`, or
    :class:`SEMlp` for the SE variant (``se_mlp``). Norms eps 1e-6; gammas start at ``eta``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        eta: float = 1.0,
        se_mlp: bool = False,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.eta = eta
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TokenMixing(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp: nn.Module = SEMlp(dim, hidden) if se_mlp else ChannelProcessing(dim, num_heads, hidden)
        self.gamma1 = nn.Parameter(torch.full((dim,), eta))
        self.gamma2 = nn.Parameter(torch.full((dim,), eta))
        self.downsample = OverlapPatchEmbed(dim, out_dim) if out_dim is not None and out_dim != dim else None

    def forward(self, x: torch.Tensor, size: Size) -> tuple[torch.Tensor, Size]:
        """(B, N, C) tokens on an ``size`` grid -> tokens and grid (halved after a downsample)."""
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x), size))
        if self.downsample is not None:
            x, size = self.downsample(x, size)
        return x, size

    def init_weights(self) -> None:
        """Reference init: convs N(0, sqrt(2/fan_out)), Linear/LayerNorm as the whole model."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_conv_init_(m)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
            elif isinstance(m, DWConvMlp):
                nn.init.ones_(m.gamma)
            elif isinstance(m, ChannelProcessing):
                nn.init.ones_(m.temperature)
        transformer_init_(self)
        nn.init.constant_(self.gamma1, self.eta)
        nn.init.constant_(self.gamma2, self.eta)


# ---------------------------------------------------------------------------- class attention


class ClassAttn(nn.Module):
    """CaiT class attention: only the cls token (first) queries; keys/values are all tokens."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, C) -> the cls token's update (B, 1, C)."""
        b, n, c = x.shape
        d = c // self.num_heads
        q = self.q(x[:, :1]).reshape(b, 1, self.num_heads, d).transpose(1, 2)
        k = self.k(x).reshape(b, n, self.num_heads, d).transpose(1, 2)
        v = self.v(x).reshape(b, n, self.num_heads, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, 1, d)
        return self.proj(out.transpose(1, 2).reshape(b, 1, c))


class ClassAttentionBlock(nn.Module):
    """CaiT/XCiT class-attention block with ``tokens_norm=True``, quirks kept (they change what
    the next block sees):

    1. ``x_n = norm1(x)``; ``x = x + gamma1 * [attn(x_n), x_n[:, 1:]]``: patch tokens get their
       own normalised value added;
    2. ``x = norm2(x)`` over all tokens; ``x = x + [gamma2 * mlp(x[:, :1]), x[:, 1:]]``: patch
       tokens are doubled.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eta: float = 1.0) -> None:
        super().__init__()
        self.eta = eta
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ClassAttn(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma1 = nn.Parameter(torch.full((dim,), eta))
        self.gamma2 = nn.Parameter(torch.full((dim,), eta))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, C) -> (B, 1 + N, C)."""
        x_norm = self.norm1(x)
        x = x + self.gamma1 * torch.cat([self.attn(x_norm), x_norm[:, 1:]], dim=1)
        x = self.norm2(x)
        return x + torch.cat([self.gamma2 * self.mlp(x[:, :1]), x[:, 1:]], dim=1)

    def init_weights(self) -> None:
        transformer_init_(self)
        nn.init.constant_(self.gamma1, self.eta)
        nn.init.constant_(self.gamma2, self.eta)
