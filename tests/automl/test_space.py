"""Search spaces from schema metadata: bounds, log scale, options and weights, depends_on,
math_cond, user ranges, and parameters AutoML leaves out unless named."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import optuna
import pytest

from foveal.errors import UsageError
from foveal.networks.registry import Monitoring, Network, NetworkMetadata, get_network
from foveal.spec import action_schema
from foveal.spec.fields import field, section
from foveal.tuning.space import build_space

pytestmark = pytest.mark.unit
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class ToyTrain:
    use_ema: bool = field(False, automl_enabled=True, description="EMA on/off.")
    ema_decay: float = field(
        0.99, valid_min=0.9, valid_max=0.9999, automl_enabled=True, depends_on="train.use_ema"
    )
    width: int = field(64, valid_min=1, valid_max=100, math_cond="% 8 == 0", automl_enabled=True)
    dropout: float = field(0.1, valid_min=0.0, valid_max=0.5, math_cond="> 0", automl_enabled=True)
    optimizer: str = field(
        "adamw", valid_options=("adamw", "sgd", "lamb"), option_weights=(0.7, 0.3, 0.0), automl_enabled=True
    )
    momentum: float = field(0.9, valid_min=0.0, valid_max=1.0, description="not searched by default")
    name: str = field("run", description="free text")
    steps: int = field(10, valid_min=1, automl_enabled=False)


@dataclass
class ToyConfig:
    train: ToyTrain = section(ToyTrain)


TOY = Network(
    name="toy",
    config_cls=ToyConfig,
    actions={},
    metadata=NetworkMetadata(task="toy", automl_enabled=True, monitoring=Monitoring("train_loss")),
)


def _by_key(space):
    return {p.key: p for p in space.params}


def test_mae_default_space_follows_the_schema():
    mae = get_network("mae")
    space = build_space(mae)
    schema = action_schema(mae.config_cls, "train", mae.action_sections["train"])
    assert sorted(space.keys) == sorted(schema["automl_default_parameters"])
    params = _by_key(space)
    lr = params["train.optim.lr"]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-6, 0.1, True)  # 5 decades: log scale
    wd = params["train.optim.weight_decay"]
    assert (wd.low, wd.high, wd.log) == (0.0, 0.5, False)
    warm = params["train.optim.warmup_epochs"]
    assert (warm.kind, warm.low, warm.high) == ("int", 0, 50)


def test_disabled_parameters_only_when_named():
    mae = get_network("mae")
    schema = action_schema(mae.config_cls, "train", mae.action_sections["train"])
    assert "train.optim.momentum" in schema["automl_disabled_parameters"]
    assert "train.optim.momentum" not in build_space(mae).keys
    named = build_space(mae, params=["train.optim.momentum", "train.optim.lr"])
    assert named.keys == ["train.optim.momentum", "train.optim.lr"]
    by_range = build_space(mae, params=["train.optim.lr"], ranges={"train.optim.momentum": "0.5:0.99"})
    assert by_range.keys == ["train.optim.lr", "train.optim.momentum"]


def test_math_cond_and_options():
    params = _by_key(build_space(TOY))
    width = params["train.width"]
    assert (width.low, width.high, width.step) == (8, 96, 8)  # multiples of 8 inside [1, 100]
    assert params["train.dropout"].low > 0.0  # "> 0" excludes the bound
    assert params["train.optimizer"].choices == ("adamw", "sgd", "lamb")
    assert params["train.use_ema"].choices == (False, True)
    assert "train.steps" not in params and "train.momentum" not in params


@pytest.mark.parametrize("network", ["mae", "classification"])
def test_warmup_stays_below_the_base_spec_epochs(network):
    net = get_network(network)
    warm = "train.optim.warmup_epochs"
    short = _by_key(build_space(net, params=[warm], base={"train": {"num_epochs": 1}}))[warm]
    assert (short.low, short.high) == (0, 0)  # num_epochs=1 leaves warm-up 0 only (was: 0..50, failed trials)
    mid = _by_key(build_space(net, params=[warm], base={"train": {"num_epochs": 10}}))[warm]
    assert (mid.low, mid.high) == (0, 9)
    # num_epochs searched too: the bound is unknown when the range is built, so the schema's range
    both = _by_key(build_space(net, params=[warm, "train.num_epochs"], ranges={"train.num_epochs": "2:20"}))
    assert both[warm].high == 50


def test_option_weights_and_depends_on_when_sampling():
    space = build_space(TOY)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    draws = []
    for _ in range(300):
        trial = study.ask()
        values = space.sample(trial, {"train": {"use_ema": False}})
        study.tell(trial, 0.0)
        draws.append(values)
    counts = Counter(d["train.optimizer"] for d in draws)
    assert counts["lamb"] == 0  # weight 0: never drawn
    assert 0.6 < counts["adamw"] / len(draws) < 0.8  # weight 0.7
    for d in draws:
        assert ("train.ema_decay" in d) == d["train.use_ema"]
        assert d["train.width"] % 8 == 0


def test_dependency_false_in_the_spec_drops_the_parameter():
    space = build_space(TOY, params=["train.ema_decay"], base={"train": {"use_ema": False}})
    assert space.keys == []
    space = build_space(TOY, params=["train.ema_decay"], base={"train": {"use_ema": True}})
    assert space.keys == ["train.ema_decay"]


def test_user_ranges():
    mae = get_network("mae")
    space = build_space(mae, params=["train.optim.lr"], ranges={"train.optim.lr": "1e-5:1e-3:log"})
    lr = space.params[0]
    assert (lr.low, lr.high, lr.log) == (1e-5, 1e-3, True)
    lin = build_space(mae, params=["train.optim.lr"], ranges={"train.optim.lr": "1e-5:1e-2:linear"}).params[0]
    assert lin.log is False
    choices = build_space(TOY, params=["train.optimizer"], ranges={"train.optimizer": "sgd,adamw"}).params[0]
    assert choices.choices == ("sgd", "adamw") and choices.weights is None


@pytest.mark.parametrize(
    ("params", "ranges", "expected"),
    [
        (["train.optim.lr"], {"train.optim.lr": "1e-9:1e-3"}, "within the valid range"),
        (["train.optim.lr"], {"train.optim.lr": "fast"}, "expected LOW:HIGH"),
        (["train.optim.lrr"], {}, "did you mean train.optim.lr?"),
        (["train.optim.monitor_name"], {"train.optim.monitor_name": "f1"}, "subset of"),
        (["dataset.augmentation.min_ratio"], {}, "no valid_max"),
        (["dataset.augmentation.auto_aug"], {}, "cannot be searched"),
    ],
)
def test_bad_requests_are_one_line(params, ranges, expected):
    with pytest.raises(UsageError) as info:
        build_space(get_network("mae"), params=params, ranges=ranges)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
