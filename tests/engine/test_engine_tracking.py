"""Experiment tracking for real: a tiny classification job logs to an offline Weights & Biases run
and to a local MLflow store, and each library's own format is read back (the W&B run file's
protobuf records, MLflow's client on the SQLite store) for the metrics per epoch, the spec as
parameters, and the final KPIs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from foveal.data.synthetic import make_demo_dataset
from foveal.jobs import JobStatus, Workspace
from foveal.jobs.lifecycle import run_job

pytestmark = pytest.mark.integration

TINY = [
    "model.backbone.type=vit_tiny_patch16",
    "dataset.img_size=32",
    "dataset.num_classes=0",
    "dataset.batch_size=16",
    "dataset.workers=0",
    "train.num_epochs=2",
    "train.precision=fp32",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("shapes")
    return make_demo_dataset(out, num_train=32, num_val=8, num_test=4, image_size=32, num_classes=2, num_workers=1)


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """No W&B key anywhere (so the run is offline), no MLflow server from the environment."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config" / "wandb"))


# ----------------------------------------------------------------------------- W&B reader


def wandb_records(path: Path) -> list:
    """The protobuf ``Record``s of a ``.wandb`` run file (W&B's LevelDB-log framing: a 7-byte
    file header, then 32 KiB blocks of chunks with a 7-byte header: CRC32, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B", raw[:7]
    block, records, pending = 32768, [], b""
    pos = 7
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            records.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            records.append(pending + chunk)
            pending = b""
    out = []
    for data in records:
        record = pb.Record()
        record.ParseFromString(data)
        out.append(record)
    return out


def test_wandb_offline_run_holds_metrics_spec_and_kpis(tmp_path, data, no_credentials):
    ws = Workspace(tmp_path / "ws")
    job = run_job(
        "classification",
        "train",
        overrides=[
            *TINY,
            f"dataset.train_dataset.images_dir={data['labeled_train']}",
            f"dataset.val_dataset.images_dir={data['labeled_val']}",
            "wandb.enable=true",
            "wandb.project=foveal-tests",
        ],
        workspace=ws,
    )
    assert job.status is JobStatus.DONE
    results = Path(job.results_dir)
    state = json.loads((results / "tracking.json").read_text())
    assert state["wandb_mode"] == "offline"
    (run_file,) = results.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.HasField("history")
    ]
    epochs = [h for h in history if "train_loss_epoch" in h]
    assert len(epochs) == 2 and all(h["train_loss_epoch"] > 0 for h in epochs)
    assert any("val_top1" in h for h in history)
    config = {}
    for r in records:  # the spec went in with the run record (and any later config record)
        for update in ([*r.run.config.update] if r.HasField("run") else []) + (
            [*r.config.update] if r.HasField("config") else []
        ):
            config[update.key] = json.loads(update.value_json)
    assert config["network"] == "classification" and config["dataset"]["img_size"] == 32
    summary = {}
    for r in records:
        if r.HasField("summary"):
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
    assert summary["status"] == "SUCCESS"
    assert summary["final/train_loss"] == pytest.approx(job.kpis["train_loss"])


def test_mlflow_store_holds_metrics_params_and_kpis(tmp_path, data, no_credentials):
    from mlflow.tracking import MlflowClient

    ws = Workspace(tmp_path / "ws")
    job = run_job(
        "classification",
        "train",
        overrides=[
            *TINY,
            f"dataset.train_dataset.images_dir={data['labeled_train']}",
            "mlflow.enable=true",
            "mlflow.experiment_name=tracking-test",
        ],
        workspace=ws,
    )
    assert job.status is JobStatus.DONE
    client = MlflowClient(f"sqlite:///{(ws.root / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("tracking-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["foveal.job_id"] == job.id
    losses = client.get_metric_history(run.info.run_id, "train_loss_epoch")
    assert len(losses) == 2 and all(m.value > 0 for m in losses)
    assert run.data.params["dataset.img_size"] == "32"
    assert run.data.params["model.backbone.type"] == "vit_tiny_patch16"
    assert run.data.metrics["final/train_loss"] == pytest.approx(job.kpis["train_loss"])


def test_bad_mlflow_uri_is_one_line_and_opens_nothing(tmp_path, data, no_credentials):
    from foveal.errors import UsageError

    ws = Workspace(tmp_path / "ws")
    with pytest.raises(UsageError, match=r"^mlflow.tracking_uri: cannot open the MLflow store") as excinfo:
        run_job(
            "classification",
            "train",
            overrides=[
                *TINY,
                f"dataset.train_dataset.images_dir={data['labeled_train']}",
                "mlflow.enable=true",
                "mlflow.tracking_uri=postgresql://user:hunter2@127.0.0.1:1/none",
            ],
            workspace=ws,
        )
    assert "hunter2" not in str(excinfo.value) and len(str(excinfo.value).splitlines()) == 1


def test_infrequent_diagnostics_reach_tensorboard_every_n_epochs(tmp_path, data, no_credentials):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ws = Workspace(tmp_path / "ws")
    job = run_job(
        "classification",
        "train",
        overrides=[
            *TINY,
            "train.num_epochs=4",
            "train.tensorboard.infrequent_logging_frequency=2",
            f"dataset.train_dataset.images_dir={data['labeled_train']}",
        ],
        workspace=ws,
    )
    (events,) = Path(job.results_dir).rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    steps = {tag: [e.step for e in acc.Scalars(tag)] for tag in ("lr/group0", "weight_norm", "grad_norm")}
    assert steps["lr/group0"] == steps["weight_norm"] == steps["grad_norm"] and len(steps["grad_norm"]) == 2
    assert all(e.value > 0 for e in acc.Scalars("grad_norm"))


def test_prepare_training_seeds_unless_minus_one_and_sets_cudnn(monkeypatch):
    import torch

    from foveal.engine.trainer import prepare_training
    from foveal.spec.common import TrainConfig

    for name in ("benchmark", "deterministic"):  # restored after the test
        monkeypatch.setattr(torch.backends.cudnn, name, getattr(torch.backends.cudnn, name))
    train = TrainConfig()
    train.seed, train.cudnn.benchmark, train.cudnn.deterministic = 7, True, False
    prepare_training(train)
    first = torch.rand(3)
    assert torch.backends.cudnn.benchmark is True and torch.backends.cudnn.deterministic is False
    prepare_training(train)
    assert torch.equal(torch.rand(3), first)
    train.seed = -1  # TAO: no seeding
    prepare_training(train)
    assert not torch.equal(torch.rand(3), first)


def test_tensorboard_switch_off_writes_no_event_files(tmp_path, data, no_credentials):
    ws = Workspace(tmp_path / "ws")
    job = run_job(
        "classification",
        "train",
        overrides=[
            *TINY,
            "train.num_epochs=1",
            "train.tensorboard.enabled=false",
            f"dataset.train_dataset.images_dir={data['labeled_train']}",
        ],
        workspace=ws,
    )
    assert job.status is JobStatus.DONE
    assert not list(Path(job.results_dir).rglob("events.out.tfevents.*"))
