"""normal-train planning: every bad request is one line before any job exists; datasets, AutoML,
metric, base checkpoint and image decisions; the non-interactive and interactive CLI intake."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from foveal.cli.main import main
from foveal.errors import UsageError
from foveal.jobs import JobRegistry, Workspace
from foveal.networks.registry import PortedFrom, get_network
from foveal.workflows.normal import (
    NormalTrainRequest,
    _max_concurrent,
    dataset_overrides,
    plan_normal_train,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def data(tmp_path) -> dict[str, Path]:
    out = {}
    for name in ("train", "val"):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        out[name] = folder
    return out


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws").ensure()


def _plan(ws, **kwargs):
    return plan_normal_train(NormalTrainRequest(**kwargs), ws)


def _no_jobs(ws: Workspace) -> bool:
    return JobRegistry(ws.db_path).list() == [] and not any(ws.results_root.iterdir())


def test_dataset_uris_map_to_each_actions_keys():
    mae = get_network("mae")
    assert dataset_overrides(mae, "train", "T", "E", set()) == [
        "dataset.train_data_sources=T",
        "dataset.val_data_sources=E",
    ]
    assert dataset_overrides(mae, "evaluate", "T", "E", set()) == [
        "dataset.val_data_sources=E",
        "dataset.train_data_sources=T",
    ]
    assert dataset_overrides(mae, "train", "T", None, {"dataset.train_data_sources"}) == []
    cls = get_network("classification")
    assert dataset_overrides(cls, "evaluate", "T", "E", set()) == ["dataset.val_dataset.images_dir=E"]
    with pytest.raises(
        UsageError, match="classification evaluate needs dataset.val_dataset.images_dir .*--eval-dataset-uri"
    ):
        dataset_overrides(cls, "evaluate", "T", None, set())


def test_mae_plan_automl_metric_and_stages(ws, data):
    plan = _plan(ws, model="mae", train_dataset_uri=str(data["train"]), eval_dataset_uri=str(data["val"]))
    assert plan.use_automl and plan.evaluate and plan.export is False
    assert plan.metric == {"metric": "val_loss", "mode": "min", "direction": "minimize", "source": "metadata"}
    assert f"dataset.val_data_sources={data['val']}" in plan.stage_overrides["train"]
    assert plan.environment["platform"] == "local" and "torch" in plan.environment
    assert plan.base_checkpoint["source"] == "from scratch (no default declared)"
    # Without an eval set there is no val_loss to rank by: the metadata's fallback is used.
    plan = _plan(ws, model="mae", train_dataset_uri=str(data["train"]), overrides=["train.num_epochs=1"])
    assert plan.metric["metric"] == "train_loss" and not plan.evaluate
    assert set(plan.stage_overrides) == {"train", "export"}
    assert plan.stage_overrides["export"] == ["train.num_epochs=1"]
    plan = _plan(
        ws, model="mae", train_dataset_uri=str(data["train"]), eval_dataset_uri=str(data["val"]),
        overrides=["train.stage=finetune"], automl_policy="off",
    )  # fmt: skip
    assert plan.metric["metric"] == "val_top1" and plan.metric["direction"] == "maximize"
    assert not plan.use_automl and plan.automl_note == "plain train (--automl-policy off)"
    assert _no_jobs(ws)


def test_automl_policy_rules(ws, data, monkeypatch):
    # nvdinov2 goes through AutoML (TAO's metadata), ranked on the online kNN with eval data
    plan = _plan(ws, model="nvdinov2", train_dataset_uri=str(data["train"]), eval_dataset_uri=str(data["val"]))
    assert plan.use_automl and plan.automl_note.endswith("trials ranked on val_knn_top1 (maximize))")
    assert f"dataset.val_dataset.images_dir={data['val']}" in plan.stage_overrides["train"]
    plan = _plan(ws, model="nvdinov2", train_dataset_uri=str(data["train"]))
    assert plan.use_automl and plan.automl_note.endswith("trials ranked on train_loss (minimize))")
    network = get_network("nvdinov2")
    monkeypatch.setattr(network, "metadata", replace(network.metadata, automl_enabled=False))
    with pytest.raises(UsageError, match="--automl-policy on: nvdinov2 metadata sets automl_enabled: false"):
        _plan(ws, model="nvdinov2", train_dataset_uri=str(data["train"]), automl_policy="on")
    plan = _plan(ws, model="nvdinov2", train_dataset_uri=str(data["train"]))
    assert not plan.use_automl and "automl_enabled: false" in plan.automl_note
    assert get_network("nvdinov2").metadata.automl_enabled is False  # the policy never changes metadata
    with pytest.raises(UsageError, match="--automl-policy 'sometimes': expected one of auto, on, off"):
        _plan(ws, model="mae", train_dataset_uri=str(data["train"]), automl_policy="sometimes")
    with pytest.raises(UsageError, match="AutoML trials run on the local platform only"):
        _plan(
            ws,
            model="mae",
            train_dataset_uri=str(data["train"]),
            platform="slurm",
            automl_policy="on",
            yes=True,
        )
    plan = _plan(ws, model="mae", train_dataset_uri=str(data["train"]), platform="slurm", yes=True)
    assert not plan.use_automl and "local platform only" in plan.automl_note


def test_automl_enabled_but_not_runnable_says_so_and_runs_plain(ws, data, monkeypatch):
    from foveal.workflows import catalog

    monkeypatch.setattr(
        catalog, "train_schema_status",
        lambda n: {"train_schema": False, "train_template": False, "automl_default_parameters": [], "error": "boom"},
    )  # fmt: skip
    plan = _plan(ws, model="mae", train_dataset_uri=str(data["train"]), automl_policy="on")
    assert not plan.use_automl and "AutoML is enabled but not runnable" in plan.automl_note


def test_bad_requests_fail_before_any_job(ws, data):
    cases = [
        (dict(model="mea"), "unknown network 'mea' .did you mean mae"),
        (dict(model="classification"), "classification needs an evaluation dataset .*--eval-dataset-uri"),
        (
            dict(model="mae", train_dataset_uri="/no/such/data"),
            "--train-dataset-uri /no/such/data: no such file",
        ),
        (dict(model="mae", eval_dataset_uri="/nope"), "--eval-dataset-uri /nope: no such file"),
        (dict(model="mae", base_checkpoint="/no/ckpt.pth"), "--base-checkpoint /no/ckpt.pth: no such file"),
        (dict(model="mae", platform="lsf"), "unknown platform 'lsf'"),
        (dict(model="mae", platform="ray", yes=True), "unknown platform 'ray'"),
    ]
    for kwargs, message in cases:
        kwargs.setdefault("train_dataset_uri", str(data["train"]))
        with pytest.raises(UsageError, match=message):
            _plan(ws, **kwargs)
    assert _no_jobs(ws)


def test_base_checkpoint_flag_and_model_default(ws, data, tmp_path, monkeypatch):
    ckpt = tmp_path / "start.pth"
    ckpt.write_bytes(b"x")
    plan = _plan(ws, model="mae", train_dataset_uri=str(data["train"]), base_checkpoint=str(ckpt))
    assert plan.base_checkpoint == {
        "source": "--base-checkpoint",
        "path": str(ckpt),
        "key": "train.pretrained_model_path",
    }
    assert f"train.pretrained_model_path={ckpt}" in plan.stage_overrides["train"]
    net = get_network("mae")
    monkeypatch.setattr(net, "metadata", replace(net.metadata, default_pretrained_checkpoint="mae_base.pth"))
    plan = _plan(ws, model="mae", train_dataset_uri=str(data["train"]))
    assert plan.base_checkpoint["source"] == "from scratch (mae_base.pth not found locally)"
    (ws.root / "pretrained").mkdir()
    (ws.root / "pretrained" / "mae_base.pth").write_bytes(b"x")
    plan = _plan(ws, model="mae", train_dataset_uri=str(data["train"]))
    assert plan.base_checkpoint["source"] == "model default"
    assert plan.base_checkpoint["path"] == str(ws.root / "pretrained" / "mae_base.pth")
    plan = _plan(
        ws,
        model="mae",
        train_dataset_uri=str(data["train"]),
        overrides=[f"train.pretrained_model_path={ckpt}"],
    )
    assert plan.base_checkpoint["source"] == "override train.pretrained_model_path"
    assert plan.stage_overrides["train"].count(f"train.pretrained_model_path={ckpt}") == 1
    # a ported model starts from its source's weights, not from scratch
    ported = replace(
        net.metadata, default_pretrained_checkpoint=None, ported=PortedFrom("/ws/networks/x", "/models/vit-hf")
    )
    monkeypatch.setattr(net, "metadata", ported)
    plan = _plan(ws, model="mae", train_dataset_uri=str(data["train"]))
    assert plan.base_checkpoint == {
        "source": "ported weights (/models/vit-hf)",
        "path": None,
        "key": "train.pretrained_model_path",
    }


def test_remote_image_needs_confirmation(ws, data):
    base = dict(model="mae", train_dataset_uri=str(data["train"]), platform="slurm", automl_policy="off")
    with pytest.raises(
        UsageError,
        match=r"slurm: not writing runner files: the container image \S+ is not confirmed .*--yes .*--image",
    ):
        _plan(ws, **base)
    asked = []
    with pytest.raises(UsageError, match="not confirmed; pass --image IMAGE"):
        _plan(ws, **base, confirm=lambda q: asked.append(q) or False)
    assert asked and asked[0].startswith("Run on slurm in image localhost/foveal:")
    assert _plan(ws, **base, image="my/img:1").environment == {
        "platform": "slurm", "image": "my/img:1", "source": "--image", "confirmed": "--image"
    }  # fmt: skip
    assert _plan(ws, **base, yes=True).environment["confirmed"] == "--yes"
    assert _no_jobs(ws)


def test_cli_without_a_terminal_lists_the_flags_to_pass(capsys, tmp_path):
    code = main(["workflow", "normal-train", "-w", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (
        "error: no terminal to ask: pass --model M and --train-dataset-uri URI "
        "(see foveal workflow normal-train --help)"
    )
    code = main(["workflow", "normal-train", "--model", "mae", "-w", str(tmp_path)])
    assert code == 2 and "pass --train-dataset-uri URI" in capsys.readouterr().err


def test_cli_slurm_without_yes_refuses_and_writes_nothing(capsys, tmp_path, data):
    ws = tmp_path / "ws"
    argv = ["workflow", "normal-train", "--model", "mae", "--train-dataset-uri", str(data["train"])]
    code = main([*argv, "--platform", "slurm", "-w", str(ws)])
    err = capsys.readouterr().err
    assert code == 2 and "slurm: not writing runner files" in err and "pass --yes" in err
    assert len(err.strip().splitlines()) == 1
    assert not list(ws.rglob("job.sbatch")) and JobRegistry(Workspace(ws).db_path).list() == []


def test_cli_interactive_intake_asks_for_what_is_missing(capsys, tmp_path, data, monkeypatch):
    import typer

    from foveal.cli import workflow

    answers = iter(["mae", str(data["train"]), "", "slurm", "lab/other:1"])
    prompts: list[str] = []
    monkeypatch.setattr(workflow, "interactive", lambda: True)
    monkeypatch.setattr(typer, "prompt", lambda text, **kw: prompts.append(text) or next(answers))
    confirms: list[str] = []
    monkeypatch.setattr(typer, "confirm", lambda text, **kw: confirms.append(text) or False)  # no monitor
    monkeypatch.setenv("FOVEAL_CREDENTIALS_FILE", str(tmp_path / "none.yaml"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: the script is written, not submitted
    code = main(["workflow", "normal-train", "-w", str(tmp_path / "ws"), "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0
    assert prompts[0].startswith("Model (") and prompts[3].startswith("Platform (local, slurm")
    assert prompts[4].startswith("Container image for slurm") and confirms == [
        "Print a status line every few minutes?"
    ]
    summary = json.loads(out)
    assert summary["environment"]["image"] == "lab/other:1" and summary["stages"][0]["runner_file"].endswith(
        "job.sbatch"
    )
    assert summary["datasets"] == {"train": str(data["train"]), "eval": None}


def test_models_listing_json_has_the_workflow_fields(capsys):
    assert main(["models", "--scope", "automl", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == {"mae", "classification", "nvdinov2"}
    mae = next(r for r in rows if r["name"] == "mae")
    assert mae["automl_enabled"] and mae["automl_runnable"] and mae["train_schema"] and mae["train_template"]
    assert "train.mask_ratio" in mae["automl_default_parameters"]
    assert (mae["monitoring_metric"], mae["monitoring_direction"]) == ("val_loss", "minimize")
    train = {d["spec_key"]: d for d in mae["dataset_requirements"]["train"]}
    assert (
        train["dataset.train_data_sources"]["source"] == "train"
        and train["dataset.train_data_sources"]["required"]
    )
    assert (
        train["dataset.val_data_sources"]["source"] == "eval"
        and train["dataset.val_data_sources"]["expected_files"]
    )
    assert mae["default_pretrained_checkpoint"] == {"declared": None, "path": None, "available": False}
    assert main(["models", "--format", "json"]) == 0
    every = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    ranking = every["nvdinov2"]["automl_ranking"]
    assert every["nvdinov2"]["automl_enabled"] and every["nvdinov2"]["automl_reason"] is None
    assert ranking["with_validation"] == {"metric": "val_knn_top1", "direction": "maximize"}
    assert ranking["without_validation"] == {"metric": "train_loss", "direction": "minimize"}
    assert "train.num_prototypes" in ranking["left_out_when_ranking_on_a_loss"] and "scale" in ranking["why"]
    assert main(["models", "--scope", "gpu"]) == 2


def test_trials_at_once_default_from_the_local_platform_setting(ws, data, monkeypatch):
    request = NormalTrainRequest(model="mae", train_dataset_uri=str(data["train"]))
    monkeypatch.setenv("FOVEAL_LOCAL_MAX_CONCURRENT", "3")
    assert _max_concurrent(request, plan_normal_train(request, ws)) == 3
    request.max_concurrent = 2
    assert _max_concurrent(request, plan_normal_train(request, ws)) == 2
    request.max_concurrent = None
    monkeypatch.setenv("FOVEAL_LOCAL_MAX_CONCURRENT", "many")
    with pytest.raises(UsageError, match="local setting max_concurrent='many': expected a whole number"):
        _max_concurrent(request, plan_normal_train(request, ws))


def test_export_is_asked_after_training_only_at_a_terminal(ws, data):
    from foveal.workflows.normal import _Run, _want_export

    asked: list[str] = []
    request = NormalTrainRequest(
        model="mae", train_dataset_uri=str(data["train"]), confirm=lambda q: asked.append(q) or True
    )
    plan = plan_normal_train(request, ws)
    assert plan.export is None and _want_export(_Run(request, plan, ws, JobRegistry(ws.db_path)))
    assert asked == ["Training finished. Export the model to ONNX?"]
    quiet = NormalTrainRequest(model="mae", train_dataset_uri=str(data["train"]))
    assert plan_normal_train(quiet, ws).export is False  # no terminal, no --export: no export
    flagged = NormalTrainRequest(
        model="mae", train_dataset_uri=str(data["train"]), export=True, confirm=asked.append
    )
    assert plan_normal_train(flagged, ws).export is True
