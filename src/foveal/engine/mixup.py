"""Mixup and CutMix on a batch, with soft targets and soft-target cross entropy.

Mixup: Zhang et al., "mixup: Beyond Empirical Risk Minimization" (ICLR 2018) — a convex
combination ``lam * x_i + (1 - lam) * x_j`` of two images and of their one-hot targets,
``lam ~ Beta(alpha, alpha)``.
CutMix: Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
Localizable Features" (ICCV 2019) — a box of side ``sqrt(1 - lam)`` of image j is pasted into
image i; after clipping the box to the image, ``lam`` is corrected to the pixel fraction kept.
Partner j is the batch flipped (i <-> B-1-i), so no extra images are read. Semantics follow the
timm convention: with probability ``prob`` a batch (or pair, or element) is mixed; when both
are on, CutMix is chosen with probability ``switch_prob``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

MIXUP_MODES = ("batch", "pair", "elem")


@dataclass(frozen=True)
class MixupSettings:
    """What the training loop needs to mix a batch.

    mixup_alpha / cutmix_alpha: Beta(alpha, alpha) parameters; 0 turns that method off.
    cutmix_minmax: optional (min, max) box side as a fraction of the image, used instead of
    cutmix_alpha (timm's option). prob: probability of mixing a batch/pair/element.
    switch_prob: probability of CutMix rather than Mixup when both are on. mode: lam drawn once
    per batch, per pair (i, B-1-i), or per element. label_smoothing: applied to the one-hot
    targets before mixing. num_classes: width of the soft targets.
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    cutmix_minmax: tuple[float, float] | None = None
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = "batch"
    label_smoothing: float = 0.0
    num_classes: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MIXUP_MODES:
            raise ValueError(f"mixup mode {self.mode!r}: expected one of {MIXUP_MODES}")
        if self.num_classes < 2:
            raise ValueError(f"mixup needs num_classes >= 2, got {self.num_classes}")
        if self.cutmix_minmax is not None and len(self.cutmix_minmax) != 2:
            raise ValueError(f"cutmix_minmax: expected (min, max), got {self.cutmix_minmax}")

    @classmethod
    def from_augmentation(cls, aug: Any, num_classes: int, label_smoothing: float) -> MixupSettings | None:
        """Settings from a spec's augmentation section (``mixup``, ``cutmix``, ``cutmix_minmax``,
        ``mixup_prob``, ``mixup_switch_prob``, ``mixup_mode``); None when mixing is off."""
        minmax = tuple(aug.cutmix_minmax) if aug.cutmix_minmax else None
        settings = cls(
            mixup_alpha=aug.mixup,
            cutmix_alpha=aug.cutmix,
            cutmix_minmax=minmax,
            prob=aug.mixup_prob,
            switch_prob=aug.mixup_switch_prob,
            mode=aug.mixup_mode,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )
        return settings if settings.enabled else None

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (
            self.mixup_alpha > 0 or self.cutmix_alpha > 0 or self.cutmix_minmax is not None
        )


def one_hot_smoothed(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) class indices -> (B, C) targets: ``1 - smoothing + smoothing / C`` on the true class."""
    off = smoothing / num_classes
    out = torch.full((target.shape[0], num_classes), off, device=target.device)
    return out.scatter_(1, target.long()[:, None], 1.0 - smoothing + off)


def mix_targets(target: torch.Tensor, lam: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Soft targets ``lam * y_i + (1 - lam) * y_flip(i)``; ``lam`` is (B,). Rows sum to 1."""
    y = one_hot_smoothed(target, num_classes, smoothing)
    lam = lam.to(y)[:, None]
    return lam * y + (1.0 - lam) * y.flip(0)


def cutmix_box(
    height: int,
    width: int,
    lam: float,
    rng: np.random.Generator,
    minmax: tuple[float, float] | None = None,
) -> tuple[tuple[int, int, int, int], float]:
    """A CutMix box ``(y0, y1, x0, x1)`` and the corrected lam = 1 - box area / image area.

    Without ``minmax`` the box has sides ``sqrt(1 - lam) * (H, W)`` around a uniform centre and
    is clipped to the image (so the area, and lam, are exact after clipping).
    """
    if minmax is not None:
        cut_h = min(height, int(rng.integers(int(height * minmax[0]), int(height * minmax[1]) + 1)))
        cut_w = min(width, int(rng.integers(int(width * minmax[0]), int(width * minmax[1]) + 1)))
        y0 = int(rng.integers(0, height - cut_h + 1))
        x0 = int(rng.integers(0, width - cut_w + 1))
        y1, x1 = y0 + cut_h, x0 + cut_w
    else:
        ratio = float(np.sqrt(1.0 - lam))
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        y0, y1 = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
        x0, x1 = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    corrected = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
    return (y0, y1, x0, x1), corrected


class Mixup:
    """Mix a batch in place of the loader's output: ``images, soft_targets = mixup(images, target)``.

    Args:
        settings: what to mix and how.
        seed: seed of the generator drawing lam, the method and the boxes (reproducible runs).
    """

    def __init__(self, settings: MixupSettings, seed: int | None = None) -> None:
        self.settings = settings
        self.rng = np.random.default_rng(seed)

    def _draw(self) -> tuple[float, bool]:
        """One (lam, use_cutmix) draw; lam = 1 means "not mixed"."""
        s = self.settings
        if self.rng.random() >= s.prob:
            return 1.0, False
        has_cutmix = s.cutmix_alpha > 0 or s.cutmix_minmax is not None
        use_cutmix = has_cutmix and (s.mixup_alpha <= 0 or self.rng.random() < s.switch_prob)
        if use_cutmix:
            lam = 1.0 if s.cutmix_minmax is not None else float(self.rng.beta(s.cutmix_alpha, s.cutmix_alpha))
        else:
            lam = float(self.rng.beta(s.mixup_alpha, s.mixup_alpha))
        return lam, use_cutmix

    def _plan(self, height: int, width: int) -> tuple[float, tuple[int, int, int, int] | None]:
        """Draw how to mix one unit: (lam, CutMix box or None). lam = 1 and no box: unmixed."""
        lam, use_cutmix = self._draw()
        if not use_cutmix:
            return lam, None
        box, lam = cutmix_box(height, width, lam, self.rng, self.settings.cutmix_minmax)
        return lam, box

    @staticmethod
    def _apply(
        dst: torch.Tensor, own: torch.Tensor, other: torch.Tensor, lam: float, box: tuple | None
    ) -> None:
        """dst <- own mixed with other: pasted box (CutMix) or ``lam * own + (1 - lam) * other``."""
        if box is not None:
            y0, y1, x0, x1 = box
            dst[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
        elif lam < 1.0:
            dst.copy_(own * lam + other * (1.0 - lam))

    def __call__(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W), target (B,) -> mixed images, soft targets (B, num_classes).

        Image i is mixed with image B-1-i. In ``pair`` mode both members of a pair share one
        draw; with an odd batch the middle image is its own partner and stays unmixed.
        """
        s = self.settings
        batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        flipped = images.flip(0)
        out = images.clone()
        lam = torch.ones(batch)
        if s.mode == "batch":
            value, box = self._plan(height, width)
            self._apply(out, images, flipped, value, box)
            lam[:] = value
        elif s.mode == "pair":
            for i in range(batch // 2):
                j = batch - 1 - i
                value, box = self._plan(height, width)
                self._apply(out[i], images[i], images[j], value, box)
                self._apply(out[j], images[j], images[i], value, box)
                lam[i] = lam[j] = value
        else:
            for i in range(batch):
                value, box = self._plan(height, width)
                self._apply(out[i], images[i], flipped[i], value, box)
                lam[i] = value
        return out, mix_targets(target, lam, s.num_classes, s.label_smoothing)


def soft_target_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """``-sum_c target_c * log_softmax(logits)_c`` averaged over the batch (target rows sum to 1).

    With ``weight`` (C,), class c's term is scaled by ``weight[c]`` and the sum is divided by the
    total target weight, as ``F.cross_entropy`` does for hard targets.
    """
    log_prob = F.log_softmax(logits.float(), dim=-1)
    target = target.float()
    if weight is None:
        return -(target * log_prob).sum(dim=-1).mean()
    weighted = target * weight.to(target)[None, :]
    return -(weighted * log_prob).sum() / weighted.sum()
