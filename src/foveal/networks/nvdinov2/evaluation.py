"""Frozen-feature evaluation of an NVDINOv2 backbone: weighted kNN and a linear probe.

kNN follows DINO (Caron et al., arXiv:2104.14294, sec. 4.1 / appendix): L2-normalised CLS
features, cosine similarity, the k nearest training images vote for their class with weight
``exp(similarity / T)`` (k = 20, T = 0.07 by default). The linear probe follows DINOv2's linear
evaluation (Oquab et al., arXiv:2304.07193, sec. 7.1): a logistic regression on the
concatenation of the CLS token and the mean patch token, trained here full-batch with L-BFGS
on CPU (a convex problem: a few hundred steps reach the optimum, and the result is
deterministic for a fixed seed, unlike DINOv2's SGD grid).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from foveal.networks.registry import ActionResult, RunContext
from foveal.spec import SpecError, SpecIssue

logger = logging.getLogger(__name__)


def _labels(labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Class indices as a 1-D long tensor; an inference-mode tensor is cloned, since the linear
    probe's loss saves its targets for backward, which inference tensors forbid."""
    out = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    return out.clone() if out.is_inference() else out


def knn_top1(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor | Sequence[int],
    val_feats: torch.Tensor,
    val_labels: torch.Tensor | Sequence[int],
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of DINO's temperature-weighted kNN classifier.

    Args:
        train_feats: (N, D) features of the labeled reference images.
        train_labels: (N,) class indices.
        val_feats: (V, D) features of the images to classify.
        val_labels: (V,) class indices.
        k: neighbours (capped at N).
        temperature: vote weight is ``exp(cosine similarity / temperature)``.

    Returns:
        Fraction of ``val`` rows whose weighted vote is their label (0.0 for an empty val set).
    """
    train_y, val_y = _labels(train_labels), _labels(val_labels)
    if train_feats.shape[0] != train_y.numel() or val_feats.shape[0] != val_y.numel():
        raise ValueError("features and labels differ in length")
    if train_feats.shape[0] == 0:
        raise ValueError("kNN needs at least one training feature")
    if val_feats.shape[0] == 0:
        return 0.0
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    train = F.normalize(train_feats.double(), dim=1)
    val = F.normalize(val_feats.double(), dim=1)
    k = min(k, train.shape[0])
    correct = 0
    for start in range(0, val.shape[0], 1024):  # bounds memory at 1024 x N similarities
        sim = val[start : start + 1024] @ train.T  # (v, N)
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, dtype=sim.dtype)
        votes.scatter_add_(1, train_y[top_idx], (top_sim / temperature).exp())
        correct += int((votes.argmax(dim=1) == val_y[start : start + 1024]).sum())
    return correct / val.shape[0]


def linear_probe_top1(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor | Sequence[int],
    val_feats: torch.Tensor,
    val_labels: torch.Tensor | Sequence[int],
    *,
    steps: int = 300,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Top-1 accuracy of a logistic regression trained on frozen features.

    Features are standardised with the training set's mean and std; the loss is cross-entropy
    plus ``weight_decay * ||W||^2``, minimised full-batch by L-BFGS for at most ``steps``
    iterations. Deterministic for a given ``seed`` (it only seeds the initial weights).

    Args:
        train_feats: (N, D); train_labels: (N,).
        val_feats: (V, D); val_labels: (V,).
        steps: L-BFGS iterations.
        weight_decay: L2 penalty on the weights (not the bias).
        seed: initial-weight seed.
    """
    train_y, val_y = _labels(train_labels), _labels(val_labels)
    if val_feats.shape[0] == 0:
        return 0.0
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    mean = train_feats.double().mean(dim=0, keepdim=True)
    std = train_feats.double().std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-6)
    x_train = ((train_feats.double() - mean) / std).float()
    x_val = ((val_feats.double() - mean) / std).float()
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(x_train.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 0.01)
        linear.bias.zero_()
    optimizer = torch.optim.LBFGS(
        linear.parameters(), lr=1.0, max_iter=max(steps, 1), line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x_train), train_y) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    # Small problems run hundreds of tiny matmuls: thread start-up would dominate (100x on a busy CPU).
    threads = torch.get_num_threads()
    if x_train.numel() * num_classes < 2**22:
        torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            optimizer.step(closure)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        predicted = linear(x_val).argmax(dim=1)
    return float((predicted == val_y).float().mean())


@torch.inference_mode()
def extract_features(
    backbone: nn.Module, batches: Iterable[tuple[torch.Tensor, object]]
) -> tuple[torch.Tensor, torch.Tensor, list[object]]:
    """(CLS (N, D), mean patch token (N, D), the batches' second items) of every image."""
    backbone.eval()
    cls, avg, extras = [], [], []
    for images, extra in batches:
        out = backbone.forward_features(images)
        cls.append(out["x_norm_clstoken"].float())
        avg.append(out["x_norm_patchtokens"].float().mean(dim=1))
        extras.extend(extra.tolist() if isinstance(extra, torch.Tensor) else list(extra))
    return torch.cat(cls), torch.cat(avg), extras


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(reference indices, held-out indices): ``fraction`` of each class goes to the reference.

    Every class with at least two images keeps at least one on each side, so kNN always has
    neighbours of each evaluated class. The permutation is seeded, so the split is fixed.
    """
    generator = torch.Generator().manual_seed(seed)
    reference: list[int] = []
    held_out: list[int] = []
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    for label in sorted(by_class):
        members = by_class[label]
        order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        cut = round(len(order) * fraction)
        if len(order) >= 2:
            cut = min(max(cut, 1), len(order) - 1)
        reference += order[:cut]
        held_out += order[cut:]
    return sorted(reference), sorted(held_out)


# ------------------------------------------------------------------------------ action


def _reference_set(cfg: Any, ctx: RunContext, transform: Any, classes: list[str]) -> tuple[Any, str]:
    """Labeled training images for kNN/probe, or (None, why not) when they are not usable."""
    from foveal.data import DatasetError, LabeledImageFolderDataset, resolve_dataset

    uri = cfg.dataset.train_dataset.images_dir
    if not uri:
        return None, "dataset.train_dataset.images_dir is empty"
    try:
        return LabeledImageFolderDataset(resolve_dataset(uri, ctx.cache_dir), transform, classes=classes), ""
    except DatasetError as exc:
        return None, f"dataset.train_dataset.images_dir is not labeled like the val set ({exc})"


@dataclass
class _Split:
    """CLS (N, D) and mean-patch (N, D) features with their labels, for one side of the evaluation."""

    cls: torch.Tensor
    avg: torch.Tensor
    labels: list[int]

    def take(self, rows: list[int]) -> _Split:
        return _Split(self.cls[rows], self.avg[rows], [self.labels[i] for i in rows])


def _features(cfg: Any, ctx: RunContext, loaded: Any) -> tuple[_Split, _Split, str, list[str]]:
    """(reference, evaluated, how the reference was chosen, class names)."""
    from foveal.data import LabeledImageFolderDataset, make_loader, resolve_dataset
    from foveal.networks.nvdinov2.inference import batch_size_of, eval_transform

    e = cfg.evaluate
    transform = eval_transform(loaded)
    val_set = LabeledImageFolderDataset(
        resolve_dataset(cfg.dataset.val_dataset.images_dir, ctx.cache_dir), transform
    )
    batch, workers = batch_size_of(cfg, e), cfg.dataset.workers

    def features(dataset: Any) -> _Split:  # one ordered pass over the frozen backbone
        loader = make_loader(dataset, batch, workers, train=False, persistent=False)
        return _Split(*extract_features(loaded.backbone, loader))

    val = features(val_set)
    ref_set, why = _reference_set(cfg, ctx, transform, val_set.classes)
    if ref_set is not None:
        ref = features(ref_set)
        return ref, val, "dataset.train_dataset.images_dir", val_set.classes
    ref_rows, val_rows = stratified_split(val.labels, e.reference_fraction, e.seed)
    if not ref_rows or not val_rows:
        raise SpecError(
            SpecIssue(
                "dataset.val_dataset.images_dir",
                f"{len(val_set)} images are too few to split into reference and evaluated images",
                "add images or set dataset.train_dataset.images_dir to labeled training images",
            )
        )
    logger.info("evaluate: kNN reference is a split of the val set: %s", why)
    how = f"{e.reference_fraction:g} of dataset.val_dataset.images_dir per class (seed {e.seed})"
    return val.take(ref_rows), val.take(val_rows), how, val_set.classes


def evaluate(cfg: Any, ctx: RunContext) -> ActionResult:
    """kNN top-1 and linear-probe top-1 of the frozen backbone on labeled images -> results.json.

    The reference (training) side is ``dataset.train_dataset.images_dir`` when it has the
    val set's class folders, else a stratified ``evaluate.reference_fraction`` of the val set
    (seeded by ``evaluate.seed``); the log and results.json say which.
    """
    from foveal.networks.nvdinov2.checkpoints import load_backbone_file
    from foveal.networks.nvdinov2.inference import input_size

    e = cfg.evaluate
    loaded = load_backbone_file(e.checkpoint, key="evaluate.checkpoint")
    ref, val, reference, classes = _features(cfg, ctx, loaded)
    knn = knn_top1(ref.cls, ref.labels, val.cls, val.labels, k=e.knn_k, temperature=e.knn_temperature)
    probe = None
    if e.linear_probe_steps > 0:
        probe = linear_probe_top1(
            torch.cat([ref.cls, ref.avg], dim=1),
            ref.labels,
            torch.cat([val.cls, val.avg], dim=1),
            val.labels,
            steps=e.linear_probe_steps,
            weight_decay=e.linear_probe_weight_decay,
            seed=e.seed,
        )
    report: dict[str, Any] = {
        "knn_top1": knn,
        "linear_probe_top1": probe,
        "k": e.knn_k,
        "temperature": e.knn_temperature,
        "linear_probe": f"L-BFGS, {e.linear_probe_steps} steps on [CLS, mean patch] features"
        if probe is not None
        else "off",
        "num_reference": len(ref.labels),
        "num_evaluated": len(val.labels),
        "num_classes": len(classes),
        "classes": classes,
        "reference": reference,
        "input_size": input_size(loaded),
        "checkpoint": str(loaded.path),
        "backbone": f"{loaded.kind} {loaded.arch}",
    }
    out = ctx.results_dir / "results.json"
    out.write_text(json.dumps(report, indent=2))
    kpis = {"knn_top1": knn} | ({"linear_probe_top1": probe} if probe is not None else {})
    probe_text = f", linear-probe top-1 {probe:.4f}" if probe is not None else ""
    return ActionResult(
        kpis=kpis,
        artifacts={"results": str(out)},
        message=f"kNN top-1 {knn:.4f} (k={e.knn_k}, T={e.knn_temperature:g}){probe_text} on "
        f"{len(val.labels)} images, {len(ref.labels)} reference images",
    )
