"""Colour augmentation on the training device, for loaders whose CPU workers are the bottleneck.

DINO-style multi-crop spends most of its CPU time on per-pixel colour work: jitter (brightness,
contrast, saturation, hue in random order), grayscale, Gaussian blur and solarize on every crop.
With ``dataset.transform.gpu_augmentation`` the workers only decode, crop and flip (the geometry)
and ship ``uint8`` crops (a quarter of the float bytes) with each crop's random colour
parameters, drawn on the CPU with the same probabilities and ranges as :mod:`foveal.data.transforms`.
`apply_colour` then runs the colour operations for the whole batch on the device and normalises.

The operations are those of PIL's ``ImageEnhance`` (a blend with black, with the mean grey, with
the grey image), PIL's HSV hue shift, ITU-R 601 grey, a separable Gaussian (sigma = PIL's radius)
and solarize at 128, in float without the 8-bit rounding between steps; tests bound the
difference to the PIL path.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# columns of a crop's parameter row
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
ORDER = slice(4, 8)  # the jitter operations' order (ids 0-3 above)
GRAY, SIGMA, SOLARIZE = 8, 9, 10
NUM_PARAMS = 11
MAX_SIGMA = 2.0


class ColourPlan:
    """Draws one crop's colour parameters (a float row of `NUM_PARAMS`).

    Args:
        jitter: (brightness, contrast, saturation, hue) strengths, as ``ColorJitter``.
        jitter_p, gray_p, blur_p, solarize_p: probabilities of each operation.
        blur_radius: (min, max) of the blur's sigma (PIL's radius), DINO's (0.1, 2.0).
    """

    def __init__(
        self,
        jitter: Sequence[float],
        jitter_p: float,
        gray_p: float,
        blur_p: float,
        solarize_p: float = 0.0,
        blur_radius: tuple[float, float] = (0.1, MAX_SIGMA),
    ) -> None:
        if blur_radius[1] > MAX_SIGMA:
            raise ValueError(f"blur radius above {MAX_SIGMA} is not supported on the device path")
        self.jitter = tuple(float(v) for v in jitter)
        self.jitter_p, self.gray_p, self.blur_p, self.solarize_p = jitter_p, gray_p, blur_p, solarize_p
        self.blur_radius = blur_radius

    def sample(self, rng: random.Random | None = None) -> torch.Tensor:
        """One row; ``rng`` default: the ``random`` module (seeded per loader worker)."""
        rng = rng or random._inst  # the random module's own generator
        row = torch.zeros(NUM_PARAMS)
        row[BRIGHTNESS] = row[CONTRAST] = row[SATURATION] = 1.0
        order = [0, 1, 2, 3]
        if rng.random() < self.jitter_p:
            brightness, contrast, saturation, hue = self.jitter
            for column, amount in ((BRIGHTNESS, brightness), (CONTRAST, contrast), (SATURATION, saturation)):
                if amount > 0:
                    row[column] = rng.uniform(max(0.0, 1 - amount), 1 + amount)
            if hue > 0:
                row[HUE] = rng.uniform(-hue, hue)
            rng.shuffle(order)
        row[ORDER] = torch.tensor(order, dtype=torch.float)
        row[GRAY] = float(rng.random() < self.gray_p)
        if rng.random() < self.blur_p:
            row[SIGMA] = rng.uniform(*self.blur_radius)
        row[SOLARIZE] = float(rng.random() < self.solarize_p)
        return row


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    high, _ = x.max(1)
    low, _ = x.min(1)
    delta = high - low
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(high == r, ((g - b) / safe) % 6, torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    saturation = torch.where(high > 0, delta / torch.where(high > 0, high, torch.ones_like(high)), torch.zeros_like(high))
    return torch.stack([hue, saturation, high], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _jitter(x: torch.Tensor, op: int, value: torch.Tensor) -> torch.Tensor:
    f = value.view(-1, 1, 1, 1)
    if op == BRIGHTNESS:
        return (x * f).clamp(0, 1)
    if op == CONTRAST:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        return (mean + f * (x - mean)).clamp(0, 1)
    if op == SATURATION:
        gray = _gray(x)
        return (gray + f * (x - gray)).clamp(0, 1)
    hsv = _rgb_to_hsv(x)
    hsv = torch.cat([(hsv[:, :1] + f) % 1.0, hsv[:, 1:]], 1)
    return _hsv_to_rgb(hsv).clamp(0, 1)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian per image (sigma 0: unchanged), reflect padding."""
    n, c, h, w = x.shape
    radius = int(math.ceil(3 * MAX_SIGMA))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.clamp_min(1e-3).view(-1, 1)
    kernel = torch.exp(-(taps**2) / (2 * s**2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (N, K)
    weights = kernel.repeat_interleave(c, 0)  # (N C, K)
    flat = x.reshape(1, n * c, h, w)
    pad_h, pad_w = min(radius, h - 1), min(radius, w - 1)
    flat = F.pad(flat, (pad_w, pad_w, 0, 0), mode="reflect")
    flat = F.conv2d(flat, weights[:, None, None, radius - pad_w : radius + pad_w + 1], groups=n * c)
    flat = F.pad(flat, (0, 0, pad_h, pad_h), mode="reflect")
    flat = F.conv2d(flat, weights[:, None, radius - pad_h : radius + pad_h + 1, None], groups=n * c)
    blurred = flat.reshape(n, c, h, w)
    return torch.where((sigma > 0).view(-1, 1, 1, 1), blurred, x)


def apply_colour(
    crops: torch.Tensor, params: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """``uint8`` crops (N, 3, H, W) and their parameter rows (N, `NUM_PARAMS`) -> normalised float crops."""
    x = crops.float() / 255.0
    params = params.to(x.device, x.dtype)
    order = params[:, ORDER].long()
    for slot in range(4):
        for op in (BRIGHTNESS, CONTRAST, SATURATION, HUE):
            chosen = order[:, slot] == op
            identity = 0.0 if op == HUE else 1.0
            active = chosen & (params[:, op] != identity)
            if bool(active.any()):
                x = torch.where(active.view(-1, 1, 1, 1), _jitter(x, op, params[:, op]), x)
    x = torch.where(params[:, GRAY].bool().view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
    if bool((params[:, SIGMA] > 0).any()):
        x = _blur(x, params[:, SIGMA])
    solarize = params[:, SOLARIZE].bool().view(-1, 1, 1, 1) & (x * 255 >= 127.5)
    x = torch.where(solarize, 1.0 - x, x)
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean_t) / std_t
