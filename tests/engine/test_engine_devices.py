"""Devices with TAO's meaning, the same for every network: the spec -> Trainer mapping runs for real
up to the Trainer, with CUDA mocked to 8 visible devices and the Trainer replaced by a recorder."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from foveal.data.synthetic import make_demo_dataset
from foveal.engine import trainer as engine_trainer
from foveal.errors import SpecError
from foveal.jobs import JobRegistry, Workspace
from foveal.jobs.lifecycle import prepare_job, run_job
from foveal.spec.common import device_ids

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "networks"))
from nvdinov2_tiny import TRAIN as NVDINOV2_TINY  # noqa: E402

pytestmark = pytest.mark.integration


def test_device_ids_follow_tao():
    assert device_ids(1, [0]) == [0]
    assert device_ids(8, [0]) == list(range(8))  # the default [0]: the first num_gpus GPUs
    assert device_ids(2, []) == [0, 1]
    assert device_ids(2, [3, 5]) == [3, 5]
    assert device_ids(1, [3]) == [3]
    with pytest.raises(SpecError, match=r"train.gpu_ids: lists 1 GPU \[3\] but train.num_gpus=2"):
        device_ids(2, [3])
    with pytest.raises(SpecError, match="names a GPU twice"):
        device_ids(2, [1, 1])


class _Recorded(Exception):
    """Raised by the fake Trainer once it has the arguments the network asked for."""

    def __init__(self, kwargs: dict) -> None:
        super().__init__("recorded")
        self.kwargs = kwargs


@pytest.fixture
def eight_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    def fake_trainer(**kwargs):
        raise _Recorded(kwargs)

    monkeypatch.setattr(L, "Trainer", fake_trainer)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_dataset(
        tmp_path_factory.mktemp("devices"),
        num_train=8,
        num_val=4,
        num_test=0,
        image_size=32,
        num_classes=2,
        archives=False,
    )


def _specs(data):
    return {
        "classification": [
            f"dataset.train_dataset.images_dir={data['labeled_train']}",
            "model.backbone.type=vit_tiny_patch16",
            "dataset.img_size=32",
            "dataset.num_classes=0",
            "dataset.workers=0",
        ],
        "mae": [
            f"dataset.train_data_sources={data['images_train']}",
            "model.arch=vit_tiny_patch16",
            "dataset.augmentation.input_size=32",
            "dataset.num_workers_per_gpu=0",
        ],
        "nvdinov2": [f"dataset.train_dataset.images_dir={data['images_train']}", *NVDINOV2_TINY],
    }


@pytest.mark.parametrize("network", ["classification", "mae", "nvdinov2"])
def test_num_gpus_8_gives_the_same_8_devices_strategy_and_precision_in_every_network(
    network, data, eight_gpus, tmp_path
):
    overrides = [*_specs(data)[network], "train.num_gpus=8", "train.precision=bf16"]
    with pytest.raises(_Recorded) as recorded:
        run_job(network, "train", overrides=overrides, workspace=Workspace(tmp_path))
    kwargs = recorded.value.kwargs
    assert kwargs["accelerator"] == "gpu"
    assert kwargs["devices"] == list(range(8))
    assert kwargs["strategy"] == "ddp"
    assert kwargs["precision"] == "bf16-mixed"
    assert kwargs["num_nodes"] == 1


@pytest.mark.parametrize("network", ["classification", "mae", "nvdinov2"])
def test_explicit_gpu_ids_and_fsdp_reach_the_trainer(network, data, eight_gpus, tmp_path):
    overrides = [
        *_specs(data)[network],
        "train.num_gpus=2",
        "train.gpu_ids=[3,5]",
        "train.distributed_strategy=fsdp",
        "train.accum_grad_batches=4",
    ]
    with pytest.raises(_Recorded) as recorded:
        run_job(network, "train", overrides=overrides, workspace=Workspace(tmp_path))
    kwargs = recorded.value.kwargs
    assert kwargs["devices"] == [3, 5]
    assert kwargs["strategy"] == "fsdp"
    assert kwargs["accumulate_grad_batches"] == 4


@pytest.mark.parametrize("network", ["classification", "mae", "nvdinov2"])
def test_gpu_ids_that_do_not_fit_num_gpus_are_one_spec_error_before_the_job(network, data, tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(SpecError) as caught:
        prepare_job(
            network,
            "train",
            overrides=[*_specs(data)[network], "train.num_gpus=2", "train.gpu_ids=[3]"],
            workspace=ws,
        )
    assert [i.key for i in caught.value.issues] == ["train.gpu_ids"]
    assert JobRegistry(ws.db_path).list() == []


def test_more_gpus_than_visible_is_a_spec_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SpecError, match=r"train.num_gpus: asks for GPUs \[0, 1, 2, 3\] but 2 CUDA device"):
        engine_trainer.resolve_devices(4, [0])
