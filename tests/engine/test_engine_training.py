"""Training through build_trainer/fit: resume, checkpoints, non-finite loss, status, progress."""

from __future__ import annotations

import json
import logging
import os
import sys

import lightning as L
import numpy as np
import pytest
import torch

from foveal.engine import (
    INDEX_FILENAME,
    CheckpointError,
    FovealCheckpoint,
    NonFiniteLossError,
    PlainProgress,
    SafeCheckpointIO,
    StatusWriter,
    build_trainer,
    find_latest_checkpoint,
    load_checkpoint,
    read_status,
    resolve_precision,
    resolve_resume_checkpoint,
)
from foveal.engine import trainer as trainer_module
from foveal.engine.trainer import cpu_has_native_bf16

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
]


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class OptimizerProbe(L.Callback):
    """Captures optimizer/scheduler state when training (re)starts."""

    def on_train_start(self, trainer, pl_module):
        self.adam_step = float(trainer.optimizers[0].state_dict()["state"][0]["step"])
        self.scheduler_epoch = trainer.lr_scheduler_configs[0].scheduler.last_epoch
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]


def test_resume_continues_where_it_stopped_and_matches_an_uninterrupted_run(tmp_path, tiny):
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    first, _ = tiny.train(interrupted, 2)
    assert first.epochs_trained == [1, 2]
    assert find_latest_checkpoint(interrupted).name == "model_epoch_002_step_00008.pth"

    probe = OptimizerProbe()
    resumed, _ = tiny.train(interrupted, 4, resume=True, callbacks=[probe])
    assert resumed.epochs_trained == [3, 4]  # not from 0
    assert probe.adam_step == 8 and probe.scheduler_epoch == 2  # optimizer + scheduler state restored
    assert probe.lr == pytest.approx(0.05 * 0.7**2)

    reference, _ = tiny.train(straight, 4)
    for a, b in zip(resumed.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [p.name for p in sorted(interrupted.glob("model_epoch_*"))] == [
        f"model_epoch_00{e}_step_000{4 * e:02d}.pth" for e in (1, 2, 3, 4)
    ]


def test_checkpoint_contents_latest_link_and_index(tmp_path, tiny, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    results = tmp_path / "results"
    module, trainer = tiny.train(results, 3, checkpoint_interval=2, monitor="val_loss", monitor_mode="max")
    names = sorted(p.name for p in results.glob("model_epoch_*"))
    assert names == ["model_epoch_002_step_00008.pth", "model_epoch_003_step_00012.pth"]  # every 2 + the last
    link = results / "classification_latest.pth"
    assert link.is_symlink() and os.readlink(link) == "model_epoch_003_step_00012.pth"

    ckpt = load_checkpoint(link, network="classification", kind="full")
    assert (ckpt["epoch"], ckpt["global_step"]) == (3, 12)
    assert ckpt["config"] == {"train": {"num_epochs": 3}} and ckpt["foveal_version"]
    assert {"state_dict", "optimizer_states", "lr_schedulers", "loops"} <= set(ckpt)
    assert torch.equal(ckpt["state_dict"]["lin.weight"], module.lin.weight.detach())

    index = json.loads((results / INDEX_FILENAME).read_text())
    assert index["latest_checkpoint"] == "model_epoch_003_step_00012.pth"
    values = {e["file"]: e["metrics"]["val_loss"] for e in index["checkpoints"]}
    best = max(values, key=values.get)
    assert index["best_checkpoint"]["file"] == best and index["best_checkpoint"]["metric"] == "val_loss"
    assert trainer.checkpoint_callback.best_model_path == str(results / best)
    assert (results / "tensorboard").is_dir()
    assert not any(cwd.iterdir())  # no lightning_logs/ in the working directory


def test_step_checkpoints_use_the_running_epoch(tmp_path, tiny):
    tiny.train(tmp_path, 2, checkpoint_interval=3, checkpoint_interval_unit="step")
    assert sorted(p.name for p in tmp_path.glob("model_epoch_*")) == [
        "model_epoch_001_step_00003.pth",
        "model_epoch_002_step_00006.pth",
        "model_epoch_002_step_00008.pth",
    ]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny):
    status = StatusWriter(tmp_path / "status.json")
    module = tiny.TinyModule(nan_at_step=9)  # epoch 3 = steps 8..11
    with pytest.raises(NonFiniteLossError) as info:
        tiny.train(tmp_path, 5, module=module, status=status)
    message = str(info.value)
    assert "nan at epoch 3, step 9" in message and "model_epoch_002_step_00008.pth" in message
    assert "learning rate" in message and "fp32" in message and "clipping" in message
    assert "\n" not in message and info.value.last_checkpoint.name == "model_epoch_002_step_00008.pth"

    assert sorted(p.name for p in tmp_path.glob("model_epoch_*")) == [
        "model_epoch_001_step_00004.pth",
        "model_epoch_002_step_00008.pth",
    ]
    link = tmp_path / "classification_latest.pth"
    assert os.readlink(link) == "model_epoch_002_step_00008.pth"
    kept = load_checkpoint(link)
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values())
    assert all(torch.isfinite(p).all() for p in module.parameters())  # stopped before the update
    assert [r["status"] for r in read_status(tmp_path / "status.json")] == ["STARTED", "RUNNING", "RUNNING"]


def test_status_lines_per_epoch(tmp_path, tiny):
    tiny.train(tmp_path, 3, status=StatusWriter(tmp_path / "status.json"))
    tiny.train(tmp_path, 4, resume=True, status=StatusWriter(tmp_path / "status.json"))
    records = read_status(tmp_path / "status.json")
    assert [r["status"] for r in records] == [
        "STARTED",
        "RUNNING",
        "RUNNING",
        "RUNNING",
        "STARTED",
        "RUNNING",
    ]
    started, running = records[0], records[1]
    assert (started["epoch"], started["max_epoch"], started["step"], started["max_step"]) == (0, 3, 0, 12)
    assert set(running["kpi"]) == {"train_loss", "val_loss"}
    assert (running["epoch"], running["max_epoch"], running["step"], running["max_step"]) == (1, 3, 4, 12)
    assert running["time_per_epoch"] > 0 and running["eta"] >= 0
    assert records[3]["eta"] == 0
    assert "resumed after epoch 3" in records[4]["message"] and records[5]["epoch"] == 4


def test_resume_reads_with_weights_only(tmp_path, tiny):
    marker = tmp_path / "pwned"
    results = tmp_path / "results"
    results.mkdir()
    torch.save(
        {"network": "classification", "kind": "full", "x": Evil(marker)},
        results / "model_epoch_009_step_00090.pth",
    )
    with pytest.raises(CheckpointError, match="weights_only"):
        tiny.train(results, 10, resume=True)
    # even straight through Lightning (bypassing fit()), the plugin loads with weights_only=True
    trainer = build_trainer(
        results_dir=results,
        network="classification",
        config_dict={},
        max_epochs=10,
        num_gpus=0,
        progress="off",
    )
    with pytest.raises(CheckpointError):
        trainer.fit(
            tiny.TinyModule(), tiny.make_loader(), ckpt_path=str(results / "model_epoch_009_step_00090.pth")
        )
    assert not marker.exists()


def test_resume_from_another_network_is_refused(tmp_path, tiny):
    tiny.train(tmp_path, 1)
    with pytest.raises(CheckpointError, match="is a classification checkpoint; this is mae"):
        tiny.train(tmp_path, 2, resume=True, network="mae")


def test_plain_progress_when_not_a_tty(tmp_path, tiny, monkeypatch, caplog):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    caplog.set_level(logging.INFO, logger="foveal.engine.progress")
    _, trainer = tiny.train(tmp_path, 2, progress="auto", log_every_n_steps=2)
    assert trainer.progress_bar_callback is None
    assert any(isinstance(c, PlainProgress) for c in trainer.callbacks)
    lines = [r.getMessage() for r in caplog.records if r.name == "foveal.engine.progress"]
    assert sum(line.startswith("epoch 1/2 batch") for line in lines) == 2
    assert any(line.startswith("epoch 2/2 batch 4/4 step 8 loss=") and "it/s" in line for line in lines)
    done = [line for line in lines if " done in " in line]
    assert len(done) == 2 and "train_loss=" in done[0] and "val_loss=" in done[0]


def test_rich_bar_on_a_tty(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    trainer = build_trainer(
        results_dir=tmp_path, network="classification", config_dict={}, max_epochs=1, num_gpus=0
    )
    assert isinstance(trainer.progress_bar_callback, RichProgressBar)
    assert not any(isinstance(c, PlainProgress) for c in trainer.callbacks)
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
    assert sum(isinstance(c, FovealCheckpoint) for c in trainer.callbacks) == 1
    assert trainer.checkpoint_callback.__class__ is FovealCheckpoint  # no default ModelCheckpoint


def test_precision_mapping(caplog):
    assert resolve_precision("fp32", "cpu") == "32-true"
    assert resolve_precision("bf16", "cpu") == "bf16-mixed"
    assert resolve_precision("FP16", "gpu") == "16-mixed"
    assert resolve_precision("fp16", "cpu") == "32-true"
    assert "fp16 is not supported on CPU" in caplog.text
    with pytest.raises(ValueError, match="train.precision"):
        resolve_precision("int8", "cpu")


def test_cpu_bf16_support_is_read_from_the_cpu_flags():
    assert cpu_has_native_bf16("processor: 0\nflags\t: fpu avx2 fma\n") is False
    assert cpu_has_native_bf16("flags\t: fpu avx512f avx512_bf16\n") is True
    assert cpu_has_native_bf16("flags\t: fpu amx_bf16 amx_tile\n") is True
    assert cpu_has_native_bf16("model name: Apple M2\n") is None


def test_bf16_on_a_cpu_without_native_bf16_warns_and_keeps_bf16(caplog, monkeypatch):
    monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("bf16", "cpu") == "bf16-mixed"
    assert "no native bf16" in caplog.text and "train.precision=fp32" in caplog.text


def test_bf16_on_cpu_trains(tmp_path, tiny):
    module, trainer = tiny.train(tmp_path, 1, precision="bf16")
    assert trainer.precision == "bf16-mixed"
    assert load_checkpoint(resolve_resume_checkpoint(tmp_path))["epoch"] == 1


def test_checkpoint_callback_alone_never_saves_after_a_non_finite_loss(tmp_path, tiny):
    callback = FovealCheckpoint(tmp_path, "classification", {})
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[callback],
        plugins=[SafeCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(tiny.TinyModule(nan_at_step=6), tiny.make_loader())  # no guard: training goes on
    assert [p.name for p in tmp_path.glob("model_epoch_*")] == ["model_epoch_001_step_00004.pth"]
    assert os.readlink(tmp_path / "classification_latest.pth") == "model_epoch_001_step_00004.pth"


def test_resume_reads_the_file_once_and_keeps_hyperparameters_loadable(tmp_path, tiny, monkeypatch):
    class WithHparams(tiny.TinyModule):
        def __init__(self, root=None, scale=None):
            super().__init__()
            self.save_hyperparameters()

    tiny.train(tmp_path, 1, module=WithHparams(tmp_path / "data", np.float64(2.0)))
    ckpt = load_checkpoint(tmp_path / "classification_latest.pth")
    assert ckpt["hyper_parameters"] == {"root": str(tmp_path / "data"), "scale": 2.0}

    loads = []
    real_load = torch.load
    monkeypatch.setattr(
        torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real_load(*a, **k)
    )
    module, _ = tiny.train(tmp_path, 2, resume=True, module=WithHparams(tmp_path / "data", np.float64(2.0)))
    assert module.epochs_trained == [2] and loads == [True]


def test_checkpoint_callback_without_the_plugin_still_writes_final_names_only(tmp_path, tiny):
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[FovealCheckpoint(tmp_path, "mae", {"a": 1})],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(tiny.TinyModule(), tiny.make_loader())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoints.json",
        "mae_latest.pth",
        "model_epoch_001_step_00004.pth",
        "model_epoch_002_step_00008.pth",
    ]
    assert load_checkpoint(tmp_path / "mae_latest.pth", network="mae")["config"] == {"a": 1}
