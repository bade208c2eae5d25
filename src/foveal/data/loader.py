"""The DataLoader every network builds, with Foveal's rules in one place."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    *,
    train: bool,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    pin_memory: bool = True,
    persistent: bool | None = None,
    shuffle: bool = True,
) -> DataLoader:
    """Batches of ``dataset``: shuffled (unless ``shuffle`` is false), last partial batch dropped
    when ``train``; ordered otherwise.

    - ``workers`` is capped at the machine's cores (TAO's default of 8 oversubscribes small
      machines; more workers than cores never helps).
    - The batch is capped at the dataset size (at least 1), so a tiny dataset still gives one
      batch, and a training set no larger than the batch is not dropped whole.
    - Workers persist between epochs (a validation loader is reused every epoch) unless
      ``persistent=False`` (a one-pass loader).
    - Memory is pinned only when CUDA is there and ``pin_memory`` allows it.
    """
    workers = min(workers, os.cpu_count() or 1)
    size = len(dataset)  # type: ignore[arg-type]  # map-style datasets are Sized
    batch = max(1, min(batch_size, size))
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=train and shuffle,
        drop_last=train and size > batch,
        num_workers=workers,
        persistent_workers=workers > 0 if persistent is None else persistent and workers > 0,
        pin_memory=pin_memory and torch.cuda.is_available(),
        collate_fn=collate_fn,
    )
