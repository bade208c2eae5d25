"""make_loader: the DataLoader rules every network shares."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from foveal.data import make_loader

pytestmark = pytest.mark.unit


def _data(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n))


def test_train_shuffles_and_drops_the_partial_batch_eval_keeps_order():
    torch.manual_seed(0)
    train = make_loader(_data(10), 4, 0, train=True)
    seen = torch.cat([b[0] for b in train])
    assert len(seen) == 8 and not torch.equal(seen, torch.arange(8))  # 2 full batches, shuffled
    ordered = torch.cat([b[0] for b in make_loader(_data(10), 4, 0, train=False)])
    assert torch.equal(ordered, torch.arange(10))


def test_tiny_sets_still_give_one_batch():
    assert [len(b[0]) for b in make_loader(_data(3), 64, 0, train=True)] == [3]
    assert make_loader(_data(0), 8, 0, train=False).batch_size == 1


def test_workers_capped_at_the_cores_and_persistence(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    loader = make_loader(_data(8), 4, 8, train=False)
    assert loader.num_workers == 2 and loader.persistent_workers
    assert not make_loader(_data(8), 4, 8, train=False, persistent=False).persistent_workers
    assert not make_loader(_data(8), 4, 0, train=True).persistent_workers
