"""The best-checkpoint contract on a real run whose best epoch is not its last: the engine's index
names it, the job records it, ``--parent-checkpoint best`` exports it and ``latest`` the last epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from foveal.cli.main import main
from foveal.data.synthetic import make_demo_dataset
from foveal.engine import CheckpointIndex, supervised
from foveal.jobs import JobStatus, Workspace
from foveal.jobs.lifecycle import run_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def spiked(tmp_path_factory, ws):
    """A 4-epoch classification run whose learning rate jumps 300x after epoch 2, so a later epoch
    is worse than an earlier one: the arrangement the best-checkpoint contract is tested on."""
    real = supervised.lr_multiplier

    def spike(kind, *, steps_per_epoch=1, scale=1.0, **kw):
        base = real(kind, steps_per_epoch=steps_per_epoch, scale=scale, **kw)
        return lambda step: base(step) * (300.0 if step >= 2 * steps_per_epoch else 1.0)

    data = make_demo_dataset(
        tmp_path_factory.mktemp("shapes8"),
        num_train=160,
        num_val=64,
        num_test=0,
        image_size=32,
        seed=1,
        archives=False,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(supervised, "lr_multiplier", spike)
        job = run_job(
            "classification",
            "train",
            workspace=ws,
            overrides=[
                "model.backbone.type=vit_tiny_patch16",
                "dataset.img_size=32",
                "dataset.num_classes=0",
                "dataset.workers=0",
                "train.num_epochs=4",
                "train.optim.lr=1e-3",
                "train.optim.monitor_name=val_acc_1",  # TAO's spelling of val_top1
                f"dataset.train_dataset.images_dir={data['labeled_train']}",
                f"dataset.val_dataset.images_dir={data['labeled_val']}",
            ],
        )
    assert job.status is JobStatus.DONE
    return job


def test_best_selects_the_best_epoch_and_latest_the_last_through_the_cli(spiked, ws, capsys):
    index = CheckpointIndex.read(spiked.results_dir)
    scores = {e.epoch: e.metrics["val_top1"] for e in index.entries}
    best_epoch = index.best().epoch
    assert scores[best_epoch] == max(scores.values()) and best_epoch < 4, scores
    assert (
        json.loads((Path(spiked.results_dir) / "checkpoints.json").read_text())["best_checkpoint"]["epoch"]
        == best_epoch
    )
    # jobs show lists the best checkpoint the engine recorded
    assert main(["jobs", "show", spiked.id, "-w", str(ws.root), "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert Path(shown["artifacts"]["best_checkpoint"]).name.startswith(f"model_epoch_{best_epoch:03d}_")
    exported = {}
    for selection in ("best", "latest"):
        args = ["classification", "export", "--parent", spiked.id, "--parent-checkpoint", selection]
        assert main([*args, "-w", str(ws.root), "--format", "json"]) == 0
        job = json.loads(capsys.readouterr().out)
        exported[selection] = Path(job["spec"]["export"]["checkpoint"]).name
        assert torch.load(job["spec"]["export"]["checkpoint"], weights_only=True)["epoch"] == (
            best_epoch if selection == "best" else 4
        )
    assert exported["best"].startswith(f"model_epoch_{best_epoch:03d}_")
    assert exported["latest"].startswith("model_epoch_004_")
