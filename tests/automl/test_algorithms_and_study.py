"""Algorithm registry -> Optuna sampler/pruner; metric and direction; best-trial choice."""

from __future__ import annotations

import optuna
import pytest

from foveal.cli.main import main
from foveal.errors import UsageError
from foveal.networks.registry import get_network
from foveal.tuning import StudyRequest
from foveal.tuning.algorithms import get_algorithm, gp_available, list_algorithms
from foveal.tuning.controller import StudyController
from foveal.tuning.study import best_trial, metric_by_epoch, resolve_metric

pytestmark = pytest.mark.unit
optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_algorithm_mapping():
    assert [a.name for a in list_algorithms()] == ["asha", "bayesian", "bohb", "hyperband", "random"]
    expected = {
        "bayesian": (
            optuna.samplers.GPSampler if gp_available() else optuna.samplers.TPESampler,
            optuna.pruners.NopPruner,
        ),
        "hyperband": (optuna.samplers.RandomSampler, optuna.pruners.HyperbandPruner),
        "asha": (optuna.samplers.RandomSampler, optuna.pruners.SuccessiveHalvingPruner),
        "bohb": (optuna.samplers.TPESampler, optuna.pruners.HyperbandPruner),
        "random": (optuna.samplers.RandomSampler, optuna.pruners.NopPruner),
    }
    for name, (sampler_cls, pruner_cls) in expected.items():
        algorithm = get_algorithm(name)
        assert type(algorithm.make_sampler(0)) is sampler_cls
        assert type(algorithm.make_pruner(4)) is pruner_cls
        assert algorithm.multi_fidelity == (pruner_cls is not optuna.pruners.NopPruner)


def test_unknown_algorithm_suggests():
    with pytest.raises(UsageError, match="did you mean hyperband"):
        get_algorithm("hyperbnd")


def test_metric_defaults_from_network_metadata():
    mae = get_network("mae")
    with_val = {"train": {"stage": "pretrain"}, "dataset": {"val_data_sources": "/v"}}
    assert resolve_metric(mae, with_val, None, None) == ("val_loss", "minimize")
    no_val = {"train": {"stage": "pretrain"}, "dataset": {"val_data_sources": None}}
    assert resolve_metric(mae, no_val, None, None) == ("train_loss", "minimize")
    finetune = {"train": {"stage": "finetune"}, "dataset": {"val_data_sources": "/v"}}
    assert resolve_metric(mae, finetune, None, None) == ("val_top1", "maximize")
    assert resolve_metric(mae, no_val, "val_top1", None) == ("val_top1", "maximize")
    assert resolve_metric(mae, no_val, "my_error", None) == ("my_error", "minimize")


def test_a_loss_is_never_maximised():
    mae = get_network("mae")
    with pytest.raises(UsageError, match="is a loss"):
        resolve_metric(mae, {}, "train_loss", "maximize")
    with pytest.raises(UsageError, match="pass --direction"):
        resolve_metric(mae, {}, "zebra", None)


@pytest.mark.parametrize(("direction", "expected"), [("minimize", 2), ("maximize", 1)])
def test_best_trial_follows_direction(direction, expected):
    study = optuna.create_study(direction=direction)
    for value in (0.5, 0.9, 0.1, 0.3):
        study.add_trial(optuna.trial.create_trial(value=value))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    assert best_trial(study).number == expected


def test_metric_by_epoch_reads_running_lines():
    lines = [
        {"status": "STARTED", "epoch": 0, "kpi": {"train_loss": 9.0}},
        {"status": "RUNNING", "epoch": 1, "kpi": {"train_loss": 1.0}},
        {"status": "RUNNING", "epoch": 2, "kpi": {"train_loss": "nan"}},
        {"status": "RUNNING", "epoch": 3, "kpi": {"val_loss": 0.5}},
        {"status": "RUNNING", "epoch": 4, "kpi": {"train_loss": 0.25}},
        {"status": "SUCCESS", "kpi": {"train_loss": 0.2}},
    ]
    assert metric_by_epoch(lines, "train_loss") == {1: 1.0, 4: 0.25}


def test_network_without_automl_is_refused(tmp_path, capsys, monkeypatch):
    import dataclasses

    from foveal.networks.registry import get_network

    network = get_network("nvdinov2")
    monkeypatch.setattr(network, "metadata", dataclasses.replace(network.metadata, automl_enabled=False))
    with pytest.raises(UsageError, match="AutoML is not enabled"):
        StudyController(StudyRequest(network="nvdinov2", workspace=tmp_path))
    assert main(["automl", "nvdinov2", "-w", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: nvdinov2: AutoML is not enabled for this network (automl_enabled: false)"]


def test_bad_base_spec_fails_before_any_trial(tmp_path, capsys):
    assert main(["automl", "mae", "-w", str(tmp_path), "train.num_epochs=0"]) == 2
    assert "train.num_epochs" in capsys.readouterr().err
    assert not (tmp_path / "automl").exists()


def _settings(metric: str = "train_loss") -> dict:
    return {
        "network": "mae",
        "metric": metric,
        "direction": "minimize",
        "algorithm": "random",
        "space": [],
        "seed": 1,
    }


def test_study_storage_create_resume_and_mismatch(tmp_path):
    from foveal.tuning.study import open_study

    folder = tmp_path / "automl" / "s"
    sampler = get_algorithm("random").make_sampler
    study = open_study(folder, "s", _settings(), resume=False, sampler_factory=sampler, pruner=None)
    study.add_trial(optuna.trial.create_trial(value=1.0))
    assert (folder / "study.db").is_file()
    with pytest.raises(UsageError, match="already exists.*--resume"):
        open_study(folder, "s", _settings(), resume=False, sampler_factory=sampler, pruner=None)
    with pytest.raises(UsageError, match="created with metric='train_loss'"):
        open_study(folder, "s", _settings("val_loss"), resume=True, sampler_factory=sampler, pruner=None)
    resumed = open_study(folder, "s", _settings(), resume=True, sampler_factory=sampler, pruner=None)
    assert [t.value for t in resumed.trials] == [1.0]
    with pytest.raises(UsageError, match="no study t"):
        open_study(
            tmp_path / "automl" / "t", "t", _settings(), resume=True, sampler_factory=sampler, pruner=None
        )
