"""Distributed layout and GPU errors: TAO's multi-node variables outside SLURM (WORLD_SIZE nodes x
NUM_GPU_PER_NODE, NODE_RANK, MASTER_ADDR, MASTER_PORT; two processes on loopback train as two
nodes with DDP, gloo on CPU), and CUDA out-of-memory as one line (simulated on CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from foveal.data.synthetic import make_demo_dataset
from foveal.engine.trainer import orchestrator_layout
from foveal.spec import SpecError
from foveal.spec.common import TrainConfig


def test_the_orchestrator_variables_replace_the_spec_layout(monkeypatch):
    train = TrainConfig()
    for name in ("WORLD_SIZE", "NUM_GPU_PER_NODE", "LOCAL_RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert orchestrator_layout(train) == (train.num_nodes, train.num_gpus, list(train.gpu_ids))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("NUM_GPU_PER_NODE", "8")
    assert orchestrator_layout(train) == (4, 8, list(range(8)))  # TAO: WORLD_SIZE counts nodes
    monkeypatch.setenv("LOCAL_RANK", "0")  # torchrun: WORLD_SIZE counts processes, the spec stands
    assert orchestrator_layout(train)[0] == train.num_nodes
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("NUM_GPU_PER_NODE", "eight")
    with pytest.raises(SpecError, match="expected whole numbers"):
        orchestrator_layout(train)


@pytest.mark.slow
@pytest.mark.integration
def test_two_processes_train_as_two_nodes_with_ddp(tmp_path):
    data = make_demo_dataset(tmp_path / "data", num_train=32, num_val=0, num_test=0, image_size=32,
                             num_workers=1, archives=False)  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "SLURM_NTASKS", "FOVEAL_WORKSPACE")}
        env.update(WORLD_SIZE="2", NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   NUM_GPU_PER_NODE="1", OMP_NUM_THREADS="1")  # fmt: skip
        argv = [sys.executable, "-m", "foveal.cli.main", "-w", str(tmp_path / f"node{rank}"), "mae", "train",
                "model.arch=vit_tiny_patch16", "model.decoder_embed_dim=16", "dataset.augmentation.input_size=32",
                "dataset.batch_size=8", "dataset.num_workers_per_gpu=0", "train.num_epochs=1",
                f"dataset.train_data_sources={data['images_train']}", "train.distributed_strategy=ddp"]  # fmt: skip
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for rank, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, out[-2000:]
        assert "multi-node: WORLD_SIZE=2 nodes x NUM_GPU_PER_NODE=1" in out and f"NODE_RANK={rank}" in out
    # 32 images, batch 8, 2 ranks: 2 steps per epoch (one process alone would take 4); rank 0 saves
    saved = sorted(Path(tmp_path / "node0").glob("results/*/model_epoch_*.pth"))
    assert [p.name for p in saved] == ["model_epoch_001_step_00002.pth"]
    assert not list(Path(tmp_path / "node1").glob("results/*/model_epoch_*.pth"))


def test_cuda_out_of_memory_is_one_line_with_what_to_change(tmp_path, capsys, monkeypatch):
    """Simulated on CPU: the training step raises what CUDA raises when memory runs out."""
    import torch

    from foveal.cli.main import main
    from foveal.networks.mae.module import MAEPretrainModule

    def oom(self, batch, batch_idx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")

    monkeypatch.setattr(MAEPretrainModule, "training_step", oom)
    data = make_demo_dataset(tmp_path / "data", num_train=16, num_val=0, num_test=0, image_size=32,
                             num_workers=1, archives=False)  # fmt: skip
    code = main(["-w", str(tmp_path / "ws"), "mae", "train", "model.arch=vit_tiny_patch16", "model.decoder_embed_dim=16",
                 "dataset.augmentation.input_size=32", "dataset.batch_size=8", "dataset.num_workers_per_gpu=0",
                 f"dataset.train_data_sources={data['images_train']}"])  # fmt: skip
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1, err
    line = err[0]
    for part in ("CUDA out of memory at epoch 1, step 0", "per-GPU batch 8", "dataset.augmentation.input_size=32",
                 "model.arch=vit_tiny_patch16", "tried to allocate 2.00 gib", "activation checkpointing"):  # fmt: skip
        assert part in line, line
