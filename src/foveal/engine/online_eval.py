"""Online evaluation of self-supervised runs: is it learning?

A self-supervised loss says little about the features (the DINO loss sits near ln K for
hundreds of steps while the features improve; its scale moves with temperatures and prototype
counts). So at every validation interval a run embeds a labeled eval set with the network that
is evaluated offline (nvdinov2: the EMA teacher; mae: the encoder) and scores it with the kNN
of :mod:`foveal.engine.features` on the split the ``evaluate`` action uses, so that the online
figure of the last epoch is the offline one of the same checkpoint. Label-free collapse monitors
come with it:

- ``feature_std``: the mean over dimensions of the per-dimension std of the L2-normalised
  features (SimSiam's collapse monitor, Chen & He, arXiv:2011.10566): ``1/sqrt(D)`` for
  features spread over the sphere, 0 when every image maps to one point;
- ``effective_rank``: ``exp`` of the entropy of the normalised singular values of the feature
  matrix (Roy & Vetterli, 2007; RankMe, Garrido et al., arXiv:2210.02885): between 1 (all
  features on one line) and ``min(N, D)``;
- for DINO, the teacher's output entropy against ``ln K`` (a uniform teacher is at ``ln K``
  and teaches nothing).

:class:`LearningWatch` turns them into one-line warnings with what to try.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from foveal.engine.features import knn_top1, stratified_split

logger = logging.getLogger(__name__)


def feature_std(features: torch.Tensor) -> float:
    """Mean per-dimension std of the L2-normalised rows of ``features`` (N, D); 0 on collapse."""
    if features.shape[0] < 2:
        return float("nan")
    normalised = F.normalize(features.double(), dim=1)
    return float(normalised.std(dim=0, unbiased=False).mean())


def effective_rank(features: torch.Tensor) -> float:
    """``exp(H(p))`` with ``p`` the singular values of ``features`` (N, D) over their sum."""
    if features.shape[0] < 2:
        return float("nan")
    singular = torch.linalg.svdvals(features.double())
    p = singular / singular.sum().clamp_min(1e-12)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def mean_entropy(probabilities: torch.Tensor) -> float:
    """Mean entropy (nats) of the rows of ``probabilities`` (N, K), each a distribution."""
    p = probabilities.double().clamp_min(1e-30)
    return float(-(p * p.log()).sum(dim=1).mean())


@dataclass
class KnnProtocol:
    """How online kNN is scored: the ``evaluate`` action's settings, so both give one figure."""

    k: int = 20
    temperature: float = 0.07
    reference_fraction: float = 0.5
    seed: int = 0


def split_knn_top1(features: torch.Tensor, labels: Sequence[int], protocol: KnnProtocol) -> float:
    """kNN top-1 of ``features`` on a stratified split of their own labeled set: the reference
    is ``protocol.reference_fraction`` of each class (seeded), the rest is scored."""
    labels = [int(v) for v in labels]
    ref, held = stratified_split(labels, protocol.reference_fraction, protocol.seed)
    if not ref or not held:
        return float("nan")
    y = torch.as_tensor(labels, dtype=torch.long)
    return knn_top1(features[ref], y[ref], features[held], y[held], k=protocol.k, temperature=protocol.temperature)


@dataclass
class OnlineEvaluation:
    """Features of one pass over the eval set, accumulated batch by batch, then scored.

    ``add(features, labels)`` per batch (labels may be None for an unlabeled set);
    ``compute(prefix)`` -> ``{prefix + "knn_top1", prefix + "feature_std", prefix + "effective_rank"}``
    (kNN only with labels), then the buffer is emptied.
    """

    protocol: KnnProtocol = field(default_factory=KnnProtocol)
    _features: list[torch.Tensor] = field(default_factory=list)
    _labels: list[int] = field(default_factory=list)
    _labeled: bool = True

    def add(self, features: torch.Tensor, labels: torch.Tensor | Sequence[int] | None) -> None:
        self._features.append(features.detach().float().cpu())
        if labels is None:
            self._labeled = False
        else:
            self._labels += [int(v) for v in (labels.tolist() if isinstance(labels, torch.Tensor) else labels)]

    def __len__(self) -> int:
        return sum(len(f) for f in self._features)

    def compute(self, prefix: str = "val_") -> dict[str, float]:
        if not self._features:
            return {}
        features = torch.cat(self._features)
        out = {f"{prefix}feature_std": feature_std(features), f"{prefix}effective_rank": effective_rank(features)}
        if self._labeled and len(self._labels) == len(features):
            out[f"{prefix}knn_top1"] = split_knn_top1(features, self._labels, self.protocol)
        self._features, self._labels, self._labeled = [], [], True
        return out


# ------------------------------------------------------------------------------ diagnosis


@dataclass
class LearningWatch:
    """Known failures of a self-supervised run, said once each in one line with what to try.

    Call :meth:`check` at each epoch end with the epoch's metrics. Rules:

    - ``uniform_teacher``: the teacher's output entropy (``teacher_entropy``) or the DINO loss is
      still within 2% of ``ln K`` after ``uniform_after`` of the run: the teacher is uniform;
    - ``collapse``: ``val_feature_std`` (else ``feature_std``) below ``collapse_ratio / sqrt(D)``
      and below half its first value (falling, not merely low as at initialisation);
    - ``knn_regressed``: ``val_knn_top1`` below its value at initialisation after half the run.

    Attributes:
        num_prototypes: K of the DINO head (None: no DINO rules).
        feature_dim: D of the monitored features (None: no collapse rule).
        hints: rule -> what to try (the network's own keys).
    """

    num_prototypes: int | None = None
    feature_dim: int | None = None
    uniform_after: float = 0.3
    collapse_ratio: float = 0.1
    hints: dict[str, str] = field(default_factory=dict)
    knn_at_init: float | None = None
    std_at_start: float | None = None
    said: set[str] = field(default_factory=set)

    def check(self, metrics: dict[str, float], epoch: int, max_epochs: int) -> list[str]:
        """One line per rule that fires now and has not fired before (also logged as a warning)."""
        progress = epoch / max(1, max_epochs)
        lines: list[str] = []
        if self.num_prototypes and progress >= self.uniform_after:
            ln_k = math.log(self.num_prototypes)
            for key in ("teacher_entropy", "dino_loss"):
                value = metrics.get(key)
                if value is not None and math.isfinite(value) and value >= 0.98 * ln_k:
                    lines.append(
                        self._say(
                            "uniform_teacher",
                            f"{key} is {value:.3f} after {progress:.0%} of the run, at ln K = {ln_k:.3f} "
                            f"(K = {self.num_prototypes}): the teacher's output is uniform and teaches nothing",
                        )
                    )
                    break
        std = metrics.get("val_feature_std", metrics.get("feature_std"))
        if self.feature_dim and std is not None and math.isfinite(std):
            # A freshly initialised ViT maps every image to nearly the same class token (its
            # attention is near uniform), so a low spread alone is not a failure: falling is.
            if self.std_at_start is None:
                self.std_at_start = std
            floor = self.collapse_ratio / math.sqrt(self.feature_dim)
            if std < floor and std < 0.5 * self.std_at_start:
                lines.append(
                    self._say(
                        "collapse",
                        f"feature std {std:.2e} fell from {self.std_at_start:.2e} to below {floor:.2e} "
                        f"({self.collapse_ratio:g}/sqrt(D), D = {self.feature_dim}): the features are "
                        "collapsing to one point",
                    )
                )
        knn = metrics.get("val_knn_top1")
        if self.knn_at_init is not None and knn is not None and progress >= 0.5 and knn < self.knn_at_init:
            lines.append(
                self._say(
                    "knn_regressed",
                    f"val_knn_top1 {knn:.4f} after {progress:.0%} of the run is below its value at "
                    f"initialisation ({self.knn_at_init:.4f}): training is making the features worse",
                )
            )
        return [line for line in lines if line]

    def _say(self, rule: str, what: str) -> str:
        if rule in self.said:
            return ""
        self.said.add(rule)
        hint = self.hints.get(rule)
        line = f"{what}. {hint}" if hint else what
        logger.warning("%s", line)
        return line


# ------------------------------------------------------------------------------ Lightning hooks


class OnlineEvalHooks:
    """Lightning hooks of the online evaluation, mixed into a ``LightningModule`` placed before it
    (``class M(OnlineEvalHooks, L.LightningModule)``). The module sets ``online`` and ``watch``
    (None: off), implements :meth:`online_features` and calls :meth:`online_step` from its
    ``validation_step``. Every rank scores the whole eval set (features are gathered)."""

    online: OnlineEvaluation | None = None
    watch: LearningWatch | None = None

    def online_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) features of the network evaluated offline."""
        raise NotImplementedError

    @staticmethod
    def images_labels(batch: object) -> tuple[torch.Tensor, object]:
        """(images, class indices or None): an unlabeled set's items carry paths, not labels."""
        images, labels = batch if isinstance(batch, (tuple, list)) else (batch, None)
        return images, None if labels is None or isinstance(labels[0], str) else labels

    def online_step(self, batch: object) -> torch.Tensor:
        """Add a validation batch's features to the pass; returns its images."""
        images, labels = self.images_labels(batch)
        if self.online is None:
            return images
        module: Any = self
        features = self.online_features(images)
        if module.trainer.world_size > 1:
            features = module.all_gather(features).flatten(0, 1)
            labels = None if labels is None else module.all_gather(labels).flatten()
        self.online.add(features, labels)  # type: ignore[arg-type]
        return images

    def on_validation_epoch_end(self) -> None:
        if self.online is None:
            return
        module: Any = self
        metrics = self.online.compute("val_")
        if module.trainer.sanity_checking or not metrics:
            return
        module.log_dict(metrics, prog_bar=True, on_epoch=True, sync_dist=False, rank_zero_only=True)

    def on_train_start(self) -> None:
        """kNN of the network as it starts (once, not on resume): the bar ``knn_regressed`` uses."""
        module: Any = self
        trainer = module.trainer
        if self.online is None or self.watch is None or trainer.global_step or not trainer.val_dataloaders:
            return
        loaders = trainer.val_dataloaders
        with torch.no_grad():
            for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
                for batch in loader:
                    images, labels = self.images_labels(batch)
                    self.online.add(self.online_features(images.to(module.device)), labels)  # type: ignore[arg-type]
        metrics = self.online.compute("val_")
        if "val_knn_top1" in metrics:
            self.watch.knn_at_init = metrics["val_knn_top1"]
            logger.info("online evaluation at initialisation: val_knn_top1 %.4f", metrics["val_knn_top1"])

    def on_train_epoch_end(self) -> None:
        module: Any = self
        if self.watch is None or not module.trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in module.trainer.callback_metrics.items() if v.numel() == 1}
        epoch = module.trainer.current_epoch + 1
        self.watch.check(metrics, epoch, module.trainer.max_epochs or epoch)
