"""The Python API (foveal.run, start, check, jobs.*, models, schema, template, automl,
workflows.normal_train): every function, on real tiny jobs; quiet unless asked; errors are
foveal.errors classes, never SystemExit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import foveal
from foveal.data.synthetic import make_demo_dataset
from foveal.errors import HandoffError, JobNotFoundError, SpecError, UsageError

pytestmark = pytest.mark.integration

MAE = {
    "model.arch": "vit_micro_patch4",
    "dataset.augmentation.input_size": 32,
    "dataset.batch_size": 16,
    "dataset.num_workers_per_gpu": 0,
    "train.num_epochs": 1,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return make_demo_dataset(
        tmp_path_factory.mktemp("shapes"), num_train=32, num_val=16, num_test=8, image_size=32,
        num_classes=2, archives=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def chain(data, ws):
    """pretrain -> finetune (parent given as a Job) -> evaluate (parent given as an id)."""
    pre = foveal.run("mae", "train", overrides={**MAE, "dataset.train_data_sources": data["images_train"]}, workspace=ws)
    fin = foveal.run(
        "mae", "train", parent=pre, workspace=ws,
        overrides={**MAE, "train.stage": "finetune", "dataset.train_data_sources": data["labeled_train"],
                   "dataset.augmentation.mixup": 0, "dataset.augmentation.cutmix": 0},
    )  # fmt: skip
    ev = foveal.run("mae", "evaluate", parent=fin.id, workspace=ws,
                    overrides=[f"dataset.val_data_sources={data['labeled_test']}"])  # fmt: skip
    return pre, fin, ev


def test_run_returns_finished_jobs_linked_by_parent(chain):
    pre, fin, ev = chain
    assert [j.status.value for j in chain] == ["Done"] * 3
    assert fin.parent_id == pre.id and ev.parent_id == fin.id
    assert fin.spec["train"]["pretrained_model_path"] == pre.artifacts["best_checkpoint"]
    assert 0.0 <= ev.kpis["top1"] <= 1.0 and Path(ev.artifacts["results"]).is_file()


def test_quiet_by_default_and_progress_on_request(data, tmp_path, capfd):
    overrides = {**MAE, "dataset.train_data_sources": data["images_train"]}
    foveal.run("mae", "train", overrides=overrides, workspace=tmp_path)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    foveal.run("mae", "train", overrides=overrides, workspace=tmp_path, new=True, progress=True)
    out, err = capfd.readouterr()
    assert out == "" and "epoch 1/1 done" in err and "site-packages" not in err


def test_errors_are_foveal_errors_not_system_exit(data, ws, chain):
    with pytest.raises(SpecError) as caught:
        foveal.run("mae", "train", overrides={"train.num_epoch": 3}, workspace=ws)
    assert {i.key for i in caught.value.issues} >= {"train.num_epoch", "dataset.train_data_sources"}
    with pytest.raises(UsageError, match="unknown network 'mea'"):
        foveal.run("mea", "train", workspace=ws)
    with pytest.raises(HandoffError, match="cannot start a nvdinov2 train job"):
        foveal.run("nvdinov2", "train", parent=chain[1], workspace=ws,
                   overrides={"dataset.train_dataset.images_dir": str(data["images_train"])})  # fmt: skip
    with pytest.raises(UsageError, match="overrides: expected a mapping"):
        foveal.run("mae", "train", overrides="train.num_epochs=3", workspace=ws)


def test_check_gives_the_resolved_spec_or_every_error():
    good = foveal.check("mae", "train", overrides={"dataset.train_data_sources": "/data"})
    assert good.ok and good.errors == [] and good.spec["dataset"]["train_data_sources"] == "/data"
    bad = foveal.check("nvdinov2", "train", overrides=["model.backbone.patch_size=16"])
    assert not bad.ok and bad.spec is None
    keys = [e.key for e in bad.errors]
    assert "dataset.train_dataset.images_dir" in keys and "model.backbone.img_size" in keys
    assert bad.to_dict()["errors"][0] == {"key": keys[0], "message": bad.errors[0].message,
                                           "suggestion": bad.errors[0].suggestion}  # fmt: skip


def test_listings_match_the_cli():
    names = [m["name"] for m in foveal.models()]
    assert {"classification", "mae", "nvdinov2"} <= set(names)
    assert all(m["automl_enabled"] for m in foveal.models("automl"))
    schema = foveal.schema("mae", "train")
    assert schema["properties"]["train"]["properties"]["num_epochs"]["default"] == 10
    assert "num_epochs: 10" in foveal.template("mae", "train")
    with pytest.raises(UsageError):
        foveal.models("everything")


def test_jobs_list_get_logs(chain, ws):
    pre, fin, ev = chain
    listed = foveal.jobs.list(workspace=ws, network="mae")
    assert {j.id for j in chain} <= {j.id for j in listed}
    assert foveal.jobs.get(fin.id[:-2], workspace=ws).id == fin.id  # a unique prefix
    assert "saved checkpoint" in foveal.jobs.logs(pre, workspace=ws)
    assert '"status": "SUCCESS"' in foveal.jobs.logs(pre.id, status=True, workspace=ws)
    with pytest.raises(JobNotFoundError):
        foveal.jobs.get("no-such-job", workspace=ws)


def test_start_watch_wait_and_cancel(data, tmp_path):
    overrides = {**MAE, "dataset.train_data_sources": data["images_train"]}
    handle = foveal.start("mae", "train", overrides=overrides, workspace=tmp_path)
    lines: list[str] = []
    job = handle.watch(every=0.5, emit=lines.append, timeout=300)
    assert job.status.value == "Done" and handle.done and lines[-1].startswith(f"train {job.id} Done")
    assert handle.wait(timeout=5).id == job.id and "epoch 1/1 done" in handle.logs()
    long = foveal.start("mae", "train", overrides={**overrides, "train.num_epochs": 500}, workspace=tmp_path)
    deadline = time.monotonic() + 120
    while long.status == "Pending" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert long.cancel().status.value == "Canceled"
    assert foveal.jobs.get(long.job_id, workspace=tmp_path).status.value == "Canceled"
    again = foveal.start("mae", "train", overrides={**overrides, "train.num_epochs": 500}, workspace=tmp_path)
    with pytest.raises(TimeoutError):
        again.wait(timeout=0.5)
    assert foveal.jobs.cancel(again.job_id, workspace=tmp_path).status.value == "Canceled"


def test_automl_and_normal_train(data, tmp_path):
    result = foveal.automl(
        "mae", overrides={**MAE, "dataset.train_data_sources": data["images_train"]}, algorithm="random",
        max_trials=2, params=["train.optim.lr"], ranges={"train.optim.lr": "1e-4:1e-3:log"}, workspace=tmp_path,
    )  # fmt: skip
    assert len(result.trials) == 2 and result.best_trial is not None and result.metric == "train_loss"
    summary = foveal.workflows.normal_train(
        "mae", data["images_train"], automl_policy="off", export=True,
        overrides=[f"{k}={v}" for k, v in MAE.items()], workspace=tmp_path,
    )  # fmt: skip
    assert [s["stage"] for s in summary["stages"]] == ["train", "export"]
    assert all(s["status"] == "Done" for s in summary["stages"])
