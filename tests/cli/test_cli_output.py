"""What a user reads: a real job's console output carries Foveal's lines, not third-party noise."""

from __future__ import annotations

import subprocess
import sys

import pytest

from foveal.data.synthetic import make_demo_dataset

pytestmark = pytest.mark.integration


def _foveal(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "foveal.cli.main", *argv], capture_output=True, text=True, timeout=300
    )


def test_a_pretraining_job_prints_no_third_party_warnings_and_quiet_means_quiet(tmp_path):
    data = make_demo_dataset(
        tmp_path / "d", num_train=32, num_val=8, num_test=8, image_size=32, num_classes=4, archives=False
    )
    common = [
        "model.arch=vit_micro_patch4",
        "dataset.augmentation.input_size=32",
        "dataset.batch_size=16",
        "dataset.num_workers_per_gpu=0",
        "train.num_epochs=1",
    ]
    ws = str(tmp_path / "ws")
    pre = _foveal("-w", ws, "mae", "train", *common, f"dataset.train_data_sources={data['images_train']}")
    assert pre.returncode == 0, pre.stderr
    assert "site-packages" not in pre.stderr and "Warning" not in pre.stderr, pre.stderr
    assert "epoch 1/1 done" in pre.stderr
    job = pre.stdout.split()[1]
    fin = _foveal(
        "-w", ws, "-q", "mae", "train", "--parent", job, *common, "train.stage=finetune",
        f"dataset.train_data_sources={data['labeled_train']}", f"dataset.val_data_sources={data['labeled_val']}",
    )  # fmt: skip
    assert fin.returncode == 0, fin.stderr
    assert "site-packages" not in fin.stderr and "epoch 1/1" not in fin.stderr  # -q: warnings and errors only
    assert "val_top1=" in fin.stdout and "top5" not in fin.stdout  # 4 classes: top-5 is 1 by construction
