"""Checkpoint contract: names, atomic writes, safe loading, discovery, latest link."""

from __future__ import annotations

import dataclasses
import enum
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import foveal
from foveal.engine import (
    CheckpointError,
    checkpoint_filename,
    find_latest_checkpoint,
    latest_link_name,
    list_checkpoints,
    load_checkpoint,
    parse_checkpoint_filename,
    resolve_resume_checkpoint,
    save_checkpoint_atomic,
    save_weights_only,
    to_weights_only_safe,
    update_latest_link,
    weights_filename,
)

pytestmark = pytest.mark.unit


def _full(network="classification", **extra):
    obj = {
        "network": network,
        "config": {"a": 1},
        "foveal_version": foveal.__version__,
        "kind": "full",
        "epoch": 1,
        "global_step": 4,
        "state_dict": OrderedDict(w=torch.ones(2)),
    }
    obj.update(extra)
    return obj


class Evil:
    """Pickles to a call of os.system: loading it unsafely would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_names():
    assert checkpoint_filename(2, 40) == "model_epoch_002_step_00040.pth"
    assert checkpoint_filename(1234, 123456) == "model_epoch_1234_step_123456.pth"
    assert weights_filename("student", 3, 120) == "student_epoch_003_step_00120.pth"
    assert latest_link_name("nvdinov2") == "nvdinov2_latest.pth"
    assert parse_checkpoint_filename("model_epoch_002_step_00040.pth") == (2, 40)
    for name in (
        "classification_latest.pth",
        ".tmp-model_epoch_002_step_00040.pth.abc",
        "student_epoch_003.pth",
    ):
        assert parse_checkpoint_filename(name) is None


def test_find_latest_orders_by_epoch_and_step_and_ignores_others(tmp_path):
    for epoch, step in [(2, 40), (10, 200), (9, 180), (10, 150)]:
        save_checkpoint_atomic(
            _full(epoch=epoch, global_step=step), tmp_path / checkpoint_filename(epoch, step)
        )
    (tmp_path / ".tmp-model_epoch_099_step_99999.pth.x1y2").write_bytes(b"partial")
    (tmp_path / "student_epoch_050.pth").write_bytes(b"x")
    update_latest_link(tmp_path / checkpoint_filename(2, 40), tmp_path / "classification_latest.pth")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "model_epoch_002_step_00040.pth",
        "model_epoch_009_step_00180.pth",
        "model_epoch_010_step_00150.pth",
        "model_epoch_010_step_00200.pth",
    ]
    assert find_latest_checkpoint(tmp_path).name == "model_epoch_010_step_00200.pth"
    assert find_latest_checkpoint(tmp_path / "missing") is None


def test_save_and_load_round_trip(tmp_path):
    path = save_checkpoint_atomic(_full(), tmp_path / "deep" / checkpoint_filename(1, 4))
    loaded = load_checkpoint(path, network="classification", kind="full")
    assert loaded["network"] == "classification" and torch.equal(loaded["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_failed_write_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / checkpoint_filename(1, 4)
    save_checkpoint_atomic(_full(epoch=1), path)
    before = path.read_bytes()

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint_atomic(_full(epoch=2), path)  # overwrite attempt
    with pytest.raises(OSError):
        save_checkpoint_atomic(_full(epoch=2), tmp_path / checkpoint_filename(2, 8))  # new file
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_latest_link_is_relative_symlink_and_moves(tmp_path):
    first = save_checkpoint_atomic(_full(epoch=1), tmp_path / checkpoint_filename(1, 4))
    second = save_checkpoint_atomic(_full(epoch=2), tmp_path / checkpoint_filename(2, 8))
    link = tmp_path / latest_link_name("classification")
    update_latest_link(first, link)
    update_latest_link(second, link)
    assert link.is_symlink() and os.readlink(link) == second.name
    assert load_checkpoint(link)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name, link.name])


def test_latest_link_falls_back_to_a_copy(tmp_path, monkeypatch):
    target = save_checkpoint_atomic(_full(epoch=2), tmp_path / checkpoint_filename(2, 8))
    link = tmp_path / latest_link_name("classification")
    update_latest_link(target, link)  # an existing symlink is replaced by the copy

    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks not supported")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    update_latest_link(target, link)
    assert not link.is_symlink() and link.read_bytes() == target.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, link.name])


def test_weights_only_loading_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / checkpoint_filename(1, 1)
    torch.save({"network": "classification", "payload": Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="weights_only") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_errors_are_one_line_and_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    truncated = tmp_path / "truncated.pth"
    save_checkpoint_atomic(_full(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not a Foveal checkpoint"):
        load_checkpoint(foreign)
    assert "state_dict" in load_checkpoint(foreign, require_foveal=False)
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.ones(1), tensor_only)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tensor_only)


def test_wrong_network_and_kind(tmp_path):
    path = save_checkpoint_atomic(_full(network="nvdinov2"), tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match="is a nvdinov2 checkpoint; this is classification"):
        load_checkpoint(path, network="classification")
    student = save_weights_only(
        {"w": torch.zeros(3)},
        tmp_path / weights_filename("student", 3, 30),
        network="nvdinov2",
        config={"x": 1},
        kind="student",
        epoch=3,
        step=30,
    )
    with pytest.raises(
        CheckpointError, match="student weights only; resuming needs a full training checkpoint"
    ):
        load_checkpoint(student, kind="full")
    loaded = load_checkpoint(student, network="nvdinov2", kind="student")
    assert (loaded["epoch"], loaded["global_step"], loaded["config"]) == (3, 30, {"x": 1})
    assert loaded["foveal_version"] == foveal.__version__


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Cfg:
    path: Path
    lr: float
    tags: set


def test_non_plain_values_are_converted_so_weights_only_loads(tmp_path, caplog):
    obj = _full(
        config=Cfg(Path("/data/x"), np.float32(0.5), {"b", "a"}),
        extras={
            "color": Color.RED,
            "arr": np.arange(3),
            "n": np.int64(7),
            "obj": object(),
            "size": torch.Size([2, 3]),
            "dtype": torch.float16,
            "tuple": (1, Path("y")),
        },
    )
    path = save_checkpoint_atomic(obj, tmp_path / "x.pth")
    loaded = load_checkpoint(path)
    assert loaded["config"] == {"path": "/data/x", "lr": 0.5, "tags": ["a", "b"]}
    extras = loaded["extras"]
    assert extras["color"] == "red" and extras["n"] == 7 and type(extras["n"]) is int
    assert torch.equal(extras["arr"], torch.arange(3))
    assert extras["size"] == torch.Size([2, 3]) and extras["dtype"] is torch.float16
    assert extras["tuple"] == (1, "y") and extras["obj"].startswith("<object")
    assert "not plain data" in caplog.text
    assert to_weights_only_safe(OrderedDict(a=1)).__class__ is OrderedDict


def test_resolve_resume_checkpoint(tmp_path):
    assert resolve_resume_checkpoint(tmp_path) is None
    latest = save_checkpoint_atomic(_full(), tmp_path / checkpoint_filename(3, 12))
    save_checkpoint_atomic(_full(), tmp_path / checkpoint_filename(1, 4))
    assert resolve_resume_checkpoint(tmp_path) == latest
    explicit = tmp_path / checkpoint_filename(1, 4)
    assert resolve_resume_checkpoint(tmp_path, explicit) == explicit
    assert resolve_resume_checkpoint(tmp_path / "other", tmp_path) == latest  # a folder: its newest
    with pytest.raises(CheckpointError, match="resume_training_checkpoint_path: checkpoint not found"):
        resolve_resume_checkpoint(tmp_path, tmp_path / "nope.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model_epoch"):
        resolve_resume_checkpoint(tmp_path, tmp_path / "empty")
