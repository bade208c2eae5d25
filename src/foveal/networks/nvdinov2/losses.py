"""nvdinov2 losses: DINO (class tokens), iBOT (masked patch tokens), KoLeo, and teacher centering.

- DINO: Caron et al., arXiv:2104.14294. Cross-entropy between the sharpened, centred teacher
  distribution of one global crop and the student distribution of every *other* crop.
- iBOT: Zhou et al., arXiv:2111.07832. The same cross-entropy per masked patch of a global crop,
  weighted so that every masked image counts equally.
- KoLeo: Sablayrolles et al., "Spreading vectors for similarity search", arXiv:1806.03198, as in
  DINOv2 (arXiv:2304.07193): -mean log distance of each L2-normalised student class token to
  its nearest neighbour in the batch.
- Centering: DINO's softmax with a running centre (EMA of the teacher logits), or the
  Sinkhorn-Knopp normalisation of SwAV (Caron et al., arXiv:2006.09882) used by DINOv2.

Shapes: B images per crop, G global crops, L local crops, K prototypes, M masked patches.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)
CENTERINGS = ("softmax", "sinkhorn_knopp")


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x)
    return x


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def sinkhorn_knopp(
    logits: torch.Tensor, temperature: float, n_iterations: int = 3, n_rows: int | None = None
) -> torch.Tensor:
    """Teacher targets by Sinkhorn-Knopp: (R, K) logits -> (R, K) rows summing to 1 whose columns
    each carry an equal share ``R / K`` of the total mass (equipartition over prototypes).

    Args:
        logits: (R, K) teacher scores of R samples (all ranks together form the batch).
        temperature: teacher temperature.
        n_iterations: alternating normalisations (DINOv2: 3).
        n_rows: total rows over all ranks (default: ``R`` x world size).
    """
    # Subtracting the (global) max is a constant factor the first normalisation removes; it keeps
    # exp() finite for logits that are not cosine scores. A rank without rows (no masked patch)
    # still joins every collective below with empty sums, or the other ranks would wait forever.
    shift = (
        logits.detach().float().max()
        if logits.numel()
        else logits.new_full((), -math.inf, dtype=torch.float32)
    )
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(shift, op=dist.ReduceOp.MAX)
    q = torch.exp((logits.float() - shift) / temperature).t()  # (K, R)
    rows = n_rows if n_rows is not None else q.shape[1] * _world_size()
    k = q.shape[0]
    q /= _all_reduce(q.sum())
    for _ in range(n_iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))  # every prototype gets mass 1/K
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # every sample gets mass 1/R
        q /= rows
    q *= rows
    return q.t()


class TeacherCentering(nn.Module):
    """Turns teacher logits (R, K) into target distributions (R, K), with the chosen centering.

    ``softmax``: ``softmax((t - c) / T)`` then ``c <- m c + (1 - m) mean(t)`` (the centre is a
    buffer, so it is saved and resumed). ``sinkhorn_knopp``: :func:`sinkhorn_knopp`, no state.
    """

    center: torch.Tensor

    def __init__(self, num_prototypes: int, centering: str = "softmax", center_momentum: float = 0.9) -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        self.centering = centering
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, num_prototypes))

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, temperature: float, n_rows: int | None = None) -> torch.Tensor:
        if self.centering == "sinkhorn_knopp":
            # also with no rows (no masked patch here): under DDP the collectives must still run
            return sinkhorn_knopp(logits, temperature, n_rows=n_rows)
        probs = F.softmax((logits.float() - self.center) / temperature, dim=-1)
        if self.training:
            self.update_center(logits)
        return probs

    @torch.no_grad()
    def update_center(self, logits: torch.Tensor) -> None:
        """EMA of the mean teacher logit over the (global) batch; unchanged by an empty batch."""
        # sum and count reduced together: a rank (or batch) without rows contributes nothing
        totals = torch.cat(
            [logits.float().sum(dim=0), logits.new_full((1,), len(logits), dtype=torch.float32)]
        )
        totals = _all_reduce(totals)
        if totals[-1] > 0:
            batch_center = (totals[:-1] / totals[-1]).unsqueeze(0)
            self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


def dino_loss(
    student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor], student_temp: float = 0.1
) -> torch.Tensor:
    """Mean cross-entropy over (student crop, teacher crop) pairs, excluding a crop with itself.

    Args:
        student_logits: per crop (B, K): the G global crops first, then the L local crops.
        teacher_probs: per global crop (B, K) teacher targets (rows sum to 1).
        student_temp: student temperature (DINO: 0.1).

    Returns:
        Scalar: sum over pairs of the batch-mean cross-entropy, divided by the number of pairs
        (G (G - 1) + G L). Zero when there is no pair (one global crop, no local crop).
    """
    total = student_logits[0].new_zeros((), dtype=torch.float32)
    pairs = 0
    for i, logits in enumerate(student_logits):
        log_p = F.log_softmax(logits.float() / student_temp, dim=-1)
        for j, target in enumerate(teacher_probs):
            if i == j:  # global crop i is teacher crop i: predicting itself teaches nothing
                continue
            total = total - (target * log_p).sum(dim=-1).mean()
            pairs += 1
    return total / max(pairs, 1)


def ibot_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    masks: torch.Tensor,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """Cross-entropy on masked patches, each masked image weighted equally (DINOv2's
    ``forward_masked``).

    Args:
        student_logits: (M, K) student scores of the masked patches (row-major over ``masks``).
        teacher_probs: (M, K) teacher targets of the same patches.
        masks: (G B, N) bool masks of the global crops; M = ``masks.sum()``.
        student_temp: student temperature.

    Returns:
        Scalar: sum over masked images of their mean patch cross-entropy, divided by the number
        of global crop images G B (as DINOv2, so unmasked images dilute it); 0 without masks.
    """
    if student_logits.numel() == 0:
        return student_logits.new_zeros((), dtype=torch.float32)
    ce = -(teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)
    per_image = masks.sum(dim=-1).clamp(min=1).float()
    weights = (1.0 / per_image).unsqueeze(-1).expand_as(masks)[masks]
    return (ce * weights).sum() / masks.shape[0]


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo on (B, D) features: -mean log distance of each normalised row to its nearest neighbour.

    With fewer than 2 rows there is no neighbour: returns 0 (no spreading signal, never NaN).
    Two identical rows give distance ~eps and a large (finite) loss with huge gradients: the known
    cause of NaN losses on datasets with duplicate images.
    """
    if x.shape[0] < 2:
        return x.new_zeros((), dtype=torch.float32)
    x = F.normalize(x.float(), dim=-1, eps=eps)
    with torch.no_grad():
        dots = x @ x.t()
        dots.fill_diagonal_(-2.0)  # never pick itself
        nearest = dots.argmax(dim=1)
    distances = F.pairwise_distance(x, x[nearest], eps=eps)
    return -torch.log(distances + eps).mean()
