"""OmegaConf semantics in specs: ``${...}`` references, TAO's ``eval`` resolver (safely), ``???``,
Hydra's ``+name=value``, duplicate keys and the values as TAO writes them."""

from __future__ import annotations

import math

import pytest

from foveal.errors import SpecError
from foveal.networks.classification.config import ClassificationConfig
from foveal.networks.nvdinov2.config import NVDINOv2Config
from foveal.spec.interpolation import EvalError, safe_eval
from foveal.spec.loader import load_spec

pytestmark = pytest.mark.unit


def _write(tmp_path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("expression", "value"),
    [("2e-4 * (1024 / 1024) ** (1/2)", 2e-4), ("-(3 + 4) // 2", -4), ("7 % 4", 3), ("2 ** 10", 1024), (5, 5)],
)
def test_eval_computes_arithmetic(expression, value):
    assert safe_eval(expression) == pytest.approx(value)


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "(1).__class__",
        "'a' * 3",
        "9 ** 9 ** 9",
        "1 / 0",
        "[1, 2]",
        "x + 1",
        "True + 1",
    ],
)
def test_eval_refuses_everything_but_arithmetic(expression):
    with pytest.raises(EvalError):
        safe_eval(expression)


def test_tao_val_base_eval_resolves_with_references_after_overrides(tmp_path):
    spec = _write(
        tmp_path,
        "train:\n  schedulers:\n    learning_rate:\n"
        "      val_base: \"${eval: '2e-4 * (${dataset.batch_size} * ${train.num_gpus} / 1024) ** (1/2)'}\"\n",
    )
    overrides = ["dataset.batch_size=64", "train.num_gpus=4", "dataset.train_dataset.images_dir=/d"]
    cfg = load_spec(NVDINOv2Config, spec, overrides, action="train")
    assert cfg.train.schedulers.learning_rate.val_base == pytest.approx(2e-4 * math.sqrt(64 * 4 / 1024))


def test_references_results_dir_and_unset_values(tmp_path):
    spec = _write(
        tmp_path,
        "results_dir: /r\nexport:\n  onnx_file: ${export.results_dir}/model.onnx\n"
        "  checkpoint: ${results_dir}/train/classifier_model_latest.pth\n",
    )
    cfg = load_spec(ClassificationConfig, spec, [], action="export")
    # TAO's run-time rule: an action's unset results_dir is <results_dir>/<action>
    assert cfg.export.onnx_file == "/r/export/model.onnx"
    assert cfg.export.checkpoint == "/r/train/classifier_model_latest.pth"
    # a reference to an unset value is an error for the action that reads it, not the text "None"
    with pytest.raises(SpecError, match=r"export.checkpoint: \$\{results_dir\}/train/classifier_model_latest.pth "
                       r"refers to results_dir, which is not set"):  # fmt: skip
        load_spec(ClassificationConfig, spec, ["results_dir=null"], action="export")
    # ... and nothing for an action that does not read that section
    overrides = ["results_dir=null", "dataset.train_dataset.images_dir=/d"]
    load_spec(ClassificationConfig, spec, overrides, action="train", sections=("model", "dataset", "train"))


def test_unknown_reference_suggests_the_key_and_hydra_plus_fills_it(tmp_path):
    spec = _write(tmp_path, "dataset:\n  train_dataset:\n    images_dir: ${root_dir}/train\n")
    with pytest.raises(SpecError) as excinfo:
        load_spec(ClassificationConfig, spec, [], action="train")
    (issue,) = excinfo.value.issues
    assert issue.key == "dataset.train_dataset.images_dir" and "did you mean ${dataset.root_dir}" in issue.suggestion
    cfg = load_spec(ClassificationConfig, spec, ["+root_dir=/data"], action="train")
    assert cfg.dataset.train_dataset.images_dir == "/data/train"
    assert "root_dir" not in vars(cfg)  # only references read it
    # + on a schema key is a plain override
    cfg = load_spec(ClassificationConfig, spec, ["+root_dir=/data", "+dataset.img_size=64"], action="train")
    assert cfg.dataset.img_size == 64


def test_mandatory_marks_keep_defaults_and_fail_where_required(tmp_path):
    spec = _write(tmp_path, "evaluate:\n  checkpoint: ???\ntrain:\n  pretrained_model_path: ???\n")
    with pytest.raises(SpecError) as excinfo:
        load_spec(ClassificationConfig, spec, ["dataset.val_dataset.images_dir=/v"], action="evaluate")
    assert [str(i) for i in excinfo.value.issues] == [
        "evaluate.checkpoint: mandatory (???) and not set (set evaluate.checkpoint=... (or evaluate.trt_engine=...))"
    ]
    # a TensorRT engine instead: the checkpoint's ??? is not needed
    cfg = load_spec(ClassificationConfig, spec, ["dataset.val_dataset.images_dir=/v", "evaluate.trt_engine=/e"],
                    action="evaluate")  # fmt: skip
    assert cfg.evaluate.checkpoint is None and cfg.evaluate.trt_engine == "/e"
    # train reads neither: ??? keeps the schema's value, as OmegaConf's merge does
    cfg = load_spec(ClassificationConfig, spec, ["dataset.train_dataset.images_dir=/d"], action="train")
    assert cfg.train.pretrained_model_path is None and cfg.evaluate.checkpoint is None


def test_duplicate_keys_are_refused_naming_both_lines(tmp_path):
    spec = _write(tmp_path, "train:\n  num_epochs: 2\n  optim:\n    lr: 0.1\n    lr: 0.2\ntrain:\n  seed: 1\n")
    with pytest.raises(SpecError) as excinfo:
        load_spec(ClassificationConfig, spec, [], action="train")
    lines = str(excinfo.value).splitlines()
    assert len(lines) == 2
    assert "train.optim.lr: duplicate key at lines 4 and 5" in lines[0]
    assert "train: duplicate key at lines 1 and 6" in lines[1]


@pytest.mark.parametrize(
    ("written", "precision"),
    [("16-mixed", "fp16"), ("bf16-mixed", "bf16"), ("32-true", "fp32"), ("32", "fp32"), ("16", "fp16"),
     ("bf16", "bf16"), ("FP32", "fp32"), ("fp16", "fp16")],
)  # fmt: skip
def test_precision_as_tao_writes_it(written, precision):
    cfg = load_spec(NVDINOv2Config, None, [f"train.precision={written}"])
    assert cfg.train.precision == precision


@pytest.mark.parametrize(("written", "data_type"), [("FP32", "fp32"), ("Fp16", "fp16"), ("fp32,fp16", "fp32")])
def test_tensorrt_data_type_as_tao_deploy_writes_it(written, data_type):
    cfg = load_spec(ClassificationConfig, None, [f"gen_trt_engine.tensorrt.data_type={written}"])
    assert cfg.gen_trt_engine.tensorrt.data_type == data_type


def test_model_name_must_name_the_network():
    assert load_spec(ClassificationConfig, None, ["model_name=classification_pyt"]).model_name == "classification_pyt"
    with pytest.raises(SpecError, match="model_name"):
        load_spec(ClassificationConfig, None, ["model_name=nvdinov2"], action="train", resolve=_resolve)


def _resolve(cfg, action):
    from foveal.networks.classification.resolve import resolve

    return resolve(cfg, action)


def test_spec_data_is_what_load_spec_validates_plus_extras_included():
    from foveal.jobs.lifecycle import _explicit_results_dir
    from foveal.networks.registry import get_network
    from foveal.spec.loader import spec_data

    data = spec_data(ClassificationConfig, {"results_dir": "${base}/r"}, ["+base=/x"])
    assert data["results_dir"] == "/x/r" and "base" not in data
    # the job's results folder is found from the same data, before validation
    network = get_network("classification")
    assert str(_explicit_results_dir(network, "train", {"results_dir": "${base}/r"}, {"+base": "/x"})) == "/x/r/train"


def test_overrides_carry_omegaconf_syntax_as_text():
    from foveal.spec.loader import parse_overrides

    # "${eval: ...}" holds ": ", which YAML would read as a mapping
    parsed = parse_overrides(["train.optim.lr=${eval: 2e-4 * ${dataset.batch_size} / 8}", "a.b=???", "c=3"])
    assert parsed == {"train.optim.lr": "${eval: 2e-4 * ${dataset.batch_size} / 8}", "a.b": "???", "c": 3}
    cfg = load_spec(ClassificationConfig, None, ["train.optim.lr=${eval: 2e-4 * ${dataset.batch_size} / 8}"])
    assert cfg.train.optim.lr == pytest.approx(2e-4)
    with pytest.raises(SpecError, match=r"train.optim.lr: \$\{eval: 1/0\}: it divides by zero"):
        load_spec(ClassificationConfig, None, ["train.optim.lr=${eval: 1/0}"])
    with pytest.raises(SpecError, match=r"\+=3: override is not key=value"):
        parse_overrides(["+=3"])
