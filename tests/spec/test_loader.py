"""Spec loading, overrides and validation on a small spec class."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from foveal.spec import (
    SpecError,
    action_schema,
    build_config,
    load_spec,
    parse_overrides,
    save_spec,
    spec_template,
)
from foveal.spec.fields import field, section

pytestmark = pytest.mark.unit


@dataclass
class Optim:
    lr: float = field(1e-3, valid_min=0.0, valid_max=1.0, automl_enabled=True, description="LR.")
    scheduler: str = field("cosine", valid_options=("cosine", "step"), description="Schedule.")
    milestones: list[int] = field(default_factory=lambda: [10, 20], valid_min=0, description="Steps.")


@dataclass
class Source:
    image_dir: str = field("", description="Images.")
    weight: float = field(1.0, valid_min=0.0, description="Sampling weight.")


@dataclass
class Train:
    num_epochs: int = field(10, valid_min=1, popular=True, description="Epochs.")
    optim: Optim = section(Optim)
    images_dir: str | None = field(None, required=("train",), description="Train images.")
    sources: list[Source] = field(default_factory=list, description="Sources.")


@dataclass
class Export:
    onnx_file: str | None = field(None, regex=r".*\.onnx$", description="ONNX.")


@dataclass
class Spec:
    train: Train = section(Train)
    export: Export = section(Export)
    results_dir: str | None = field(None, description="Results.")
    encryption_key: str | None = field(None, description="Key.")


def test_defaults_file_and_overrides_in_order(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("train:\n  num_epochs: 5\n  optim:\n    lr: 0.01\n")
    cfg = load_spec(Spec, spec, ["train.num_epochs=3", "train.optim.milestones=[1, 2]"])
    assert cfg.train.num_epochs == 3  # override beats file
    assert cfg.train.optim.lr == 0.01  # file beats default
    assert cfg.train.optim.milestones == [1, 2]
    assert cfg.train.optim.scheduler == "cosine"


def test_unknown_key_suggests_nearest(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec(Spec, None, ["train.num_epoch=3"])
    (issue,) = err.value.issues
    assert issue.key == "train.num_epoch"
    assert "train.num_epochs" in issue.suggestion


def test_all_errors_reported_together():
    bad = ["train.num_epochs=0", "train.optim.scheduler=linear", "train.optim.lr=fast", "trian.x=1"]
    with pytest.raises(SpecError) as err:
        load_spec(Spec, None, bad)
    text = str(err.value)
    assert len(err.value.issues) == 4
    assert "out of range [1, inf]" in text
    assert "not one of the options: cosine, step" in text
    assert "expected number, got 'fast'" in text
    assert "trian: unknown key (did you mean train?)" in text
    assert all("\n" not in line for line in err.value.lines())


def test_required_for_action_only():
    build_config(Spec, {}, action="export")
    with pytest.raises(SpecError, match="train.images_dir: required for train"):
        build_config(Spec, {}, action="train")


def test_types_and_regex():
    with pytest.raises(SpecError) as err:
        build_config(
            Spec,
            {
                "train": {"num_epochs": 2.5, "optim": {"milestones": [1, "x"]}},
                "export": {"onnx_file": "a.pt"},
            },
        )
    text = str(err.value)
    assert "train.num_epochs: expected integer, got 2.5" in text
    assert "train.optim.milestones[1]: expected integer" in text
    assert "does not match the pattern" in text
    assert build_config(Spec, {"train": {"num_epochs": 2.0}}).train.num_epochs == 2
    assert build_config(Spec, {"train": {"optim": {"lr": "1e-6"}}}).train.optim.lr == 1e-6
    with pytest.raises(SpecError, match="expected integer, got True"):
        build_config(Spec, {"train": {"num_epochs": True}})


def test_list_of_records():
    cfg = build_config(Spec, {"train": {"sources": [{"image_dir": "a"}, {"image_dir": "b", "weight": 2}]}})
    assert [s.image_dir for s in cfg.train.sources] == ["a", "b"]
    assert cfg.train.sources[1].weight == 2.0
    with pytest.raises(SpecError, match=r"train.sources\[0\].imagedir: unknown key"):
        build_config(Spec, {"train": {"sources": [{"imagedir": "a"}]}})


def test_malformed_yaml_names_line(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("train:\n  num_epochs: 3\n  optim: [1, 2\n")
    with pytest.raises(SpecError) as err:
        load_spec(Spec, spec)
    assert "malformed YAML at line" in str(err.value)
    assert str(spec) in str(err.value)


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(Spec, tmp_path / "nope.yaml")


def test_overrides_are_data_not_code():
    parsed = parse_overrides(["a=__import__('os').system('true')", "b=[1, 2]", "c=null", "d=1e-3"])
    assert parsed["a"] == "__import__('os').system('true')"
    assert parsed == {"a": parsed["a"], "b": [1, 2], "c": None, "d": "1e-3"} or parsed["d"] in (1e-3, "1e-3")
    with pytest.raises(SpecError, match="not key=value"):
        parse_overrides(["train.num_epochs"])


def test_round_trip(tmp_path):
    cfg = load_spec(Spec, None, ["train.images_dir=/data", "train.sources=[{image_dir: x}]"], action="train")
    path = save_spec(cfg, tmp_path / "experiment.yaml")
    assert load_spec(Spec, path, action="train") == cfg


def test_action_schema_and_template():
    schema = action_schema(Spec, "train")
    lr = schema["properties"]["train"]["properties"]["optim"]["properties"]["lr"]
    assert lr["type"] == "number" and lr["minimum"] == 0.0 and lr["maximum"] == 1.0 and lr["default"] == 1e-3
    assert lr["automl_enabled"] is True
    sched = schema["properties"]["train"]["properties"]["optim"]["properties"]["scheduler"]
    assert sched["enum"] == ["cosine", "step"]
    assert schema["automl_default_parameters"] == ["train.optim.lr"]
    assert "train.num_epochs" in schema["automl_disabled_parameters"]
    assert schema["popular"] == ["train.num_epochs"]
    assert schema["required"] == ["train.images_dir"]
    assert schema["default"]["train"]["optim"]["milestones"] == [10, 20]
    import yaml

    assert yaml.safe_load(spec_template(Spec, "train")) == schema["default"]
