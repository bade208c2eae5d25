"""iBOT block masking of global crops, as DINOv2's ``MaskingGenerator`` and ``collate_data_and_cast``.

BEiT-style blockwise masking (Bao et al., arXiv:2106.08254): rectangles of random area and aspect
are added until the target count is reached. DINOv2 (arXiv:2304.07193) masks a fraction
``mask_sample_probability`` of the global crops of a batch, with target ratios spread evenly
over ``[mask_ratio_min, mask_ratio_max]`` (one draw per stratum) and shuffled over the crops.

Unlike DINOv2, a crop is topped up with random single patches when no further block fits, so
the masked fraction is exactly the sampled one even on the tiny grids of CPU-sized runs (a 2x2
grid has no room for DINOv2's 4-patch minimum block).
"""

from __future__ import annotations

import math
import random
from typing import cast

import torch


class BlockMaskGenerator:
    """Boolean (H, W) masks of rectangles on an (H, W) patch grid.

    Args:
        grid: (H, W) patches of a global crop.
        min_block: smallest rectangle in patches (DINOv2: 4).
        max_block: largest rectangle in patches (DINOv2: half the grid).
        min_aspect: smallest aspect ratio of a rectangle (DINOv2: 0.3; the largest is 1 / 0.3).
    """

    def __init__(
        self, grid: tuple[int, int], min_block: int = 4, max_block: int | None = None, min_aspect: float = 0.3
    ) -> None:
        self.height, self.width = grid
        self.num_patches = self.height * self.width
        self.min_block = min_block
        self.max_block = max_block if max_block is not None else max(1, self.num_patches // 2)
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def _add_block(self, mask: torch.Tensor, budget: int, rng: random.Random) -> int:
        """Mask one rectangle of at most ``budget`` new patches; returns how many were added."""
        low = min(self.min_block, budget)
        for _ in range(10):
            area = rng.uniform(low, budget)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < h <= self.height and 0 < w <= self.width:
                top, left = rng.randint(0, self.height - h), rng.randint(0, self.width - w)
                window = mask[top : top + h, left : left + w]
                added = h * w - int(window.sum())
                if 0 < added <= budget:
                    window.fill_(True)
                    return added
        return 0

    def __call__(self, num_masked: int, rng: random.Random | None = None) -> torch.Tensor:
        """A (H, W) bool mask with exactly ``num_masked`` True patches."""
        rng = rng or cast(random.Random, random)  # the module has the Random API (the global state)
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        num_masked = min(max(num_masked, 0), self.num_patches)
        count = 0
        while count < num_masked:
            added = self._add_block(mask, min(num_masked - count, self.max_block), rng)
            if added == 0:
                break
            count += added
        if count < num_masked:  # top up with single patches where no block fits any more
            free = torch.nonzero(~mask.flatten()).flatten().tolist()
            for index in rng.sample(free, num_masked - count):
                mask.view(-1)[index] = True
        return mask


def sample_masks(
    n_crops: int,
    generator: BlockMaskGenerator,
    ratio_min: float,
    ratio_max: float,
    probability: float,
    rng: random.Random | None = None,
) -> torch.Tensor:
    """Masks for ``n_crops`` global crop images: (n_crops, N) bool.

    ``int(n_crops * probability)`` crops are masked, crop ``i`` of them with a ratio drawn
    uniformly in the i-th of as many equal strata of ``[ratio_min, ratio_max]``; the rest get no
    mask. The order is shuffled, so which crops are masked is random. A masked crop has at least
    one masked patch.
    """
    rng = rng or cast(random.Random, random)  # the module has the Random API (the global state)
    n_masked = int(n_crops * probability)
    bounds = torch.linspace(ratio_min, ratio_max, n_masked + 1).tolist()
    n = generator.num_patches
    # At least one patch per masked crop: on tiny grids int(N * ratio) is often 0.
    least = 1 if ratio_max > 0 else 0
    masks = [
        generator(max(least, int(n * rng.uniform(bounds[i], bounds[i + 1]))), rng).flatten()
        for i in range(n_masked)
    ]
    masks += [torch.zeros(n, dtype=torch.bool) for _ in range(n_crops - n_masked)]
    rng.shuffle(masks)
    return torch.stack(masks)
