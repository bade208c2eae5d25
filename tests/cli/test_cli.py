"""The foveal command as a user and an agent see it: output formats, errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from foveal.cli.main import main
from foveal.networks.registry import list_networks
from foveal.spec import action_schema, default_dict

pytestmark = pytest.mark.unit


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_json_lists_every_network(capsys):
    code, out, _ = run(capsys, "models", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert (
        {r["name"] for r in rows}
        == {n.name for n in list_networks()}
        >= {"mae", "nvdinov2", "classification"}
    )
    cls = next(r for r in rows if r["name"] == "classification")
    assert cls["actions"] == ["train", "evaluate", "inference", "export", "gen_trt_engine"]


def test_schema_reflects_the_typed_schema(capsys):
    code, out, _ = run(capsys, "schema", "mae", "train")
    assert code == 0
    schema = json.loads(out)
    from foveal.networks.registry import get_network

    net = get_network("mae")
    assert schema == json.loads(
        json.dumps(action_schema(net.config_cls, "train", net.action_sections["train"]))
    )
    mask = schema["properties"]["train"]["properties"]["mask_ratio"]
    assert mask["type"] == "number" and mask["default"] == 0.75 and mask["automl_enabled"] is True
    assert "minimum" in mask and "maximum" in mask
    assert "train.mask_ratio" in schema["automl_default_parameters"]
    assert "dataset.train_data_sources" in schema["required"]


def test_spec_template_is_the_defaults(capsys):
    code, out, _ = run(capsys, "spec", "nvdinov2", "train")
    assert code == 0
    from foveal.networks.registry import get_network

    net = get_network("nvdinov2")
    assert yaml.safe_load(out) == default_dict(net.config_cls, net.action_sections["train"])
    assert yaml.safe_load(out)["model"]["backbone"]["teacher_type"] == "vit_l"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.num_epoch=3", "train.num_epoch: unknown key (did you mean train.num_epochs?)"),
        ("train.num_epochs=0", "train.num_epochs: 0 is out of range [1, inf]"),
        ("train.stage=posttrain", "train.stage: 'posttrain' is not one of the options: pretrain, finetune"),
        ("train.mask_ratio=lots", "train.mask_ratio: expected number, got 'lots'"),
    ],
)
def test_bad_spec_values_exit_2_with_one_line(capsys, tmp_path, override, expected):
    spec = tmp_path / "spec.yaml"
    spec.write_text("dataset:\n  train_data_sources: /data/train\n")
    code, out, err = run(capsys, "-w", str(tmp_path / "ws"), "mae", "train", "-e", str(spec), override)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err and out == ""
    assert len(err.strip().splitlines()) == 1


def test_all_spec_errors_reported_together(capsys, tmp_path):
    code, _, err = run(capsys, "-w", str(tmp_path), "mae", "train", "train.num_epoch=3", "train.num_epochs=0")
    assert code == 2
    lines = err.strip().splitlines()
    assert any("train.num_epoch:" in line for line in lines)
    assert any("train.num_epochs: 0 is out of range" in line for line in lines)
    assert any("dataset.train_data_sources: required for train" in line for line in lines)


def test_a_missing_field_does_not_hide_cross_field_errors(capsys, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "model:\n  backbone:\n    patch_size: 16\ndataset:\n  transform:\n    global_crops_size: 100\n"
    )
    code, out, err = run(capsys, "-w", str(tmp_path / "ws"), "nvdinov2", "train", "-e", str(spec))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert any("dataset.train_dataset.images_dir: required for train but not set" in line for line in lines)
    assert any(
        "dataset.transform.global_crops_size: 100 is not divisible by model.backbone.patch_size=16" in line
        for line in lines
    )
    results = tmp_path / "ws" / "results"
    assert not results.exists() or not any(results.iterdir())  # nothing ran: no job, no results folder


def test_unsupported_combinations_are_refused_before_the_job(capsys, tmp_path):
    from foveal.jobs import JobRegistry, Workspace

    ws = tmp_path / "ws"
    cases = [
        (
            [
                "classification",
                "train",
                "dataset.train_dataset.images_dir=d",
                "train.pretrained_model_path=a.pth",
                "model.backbone.pretrained_backbone_path=b.pth",
            ],
            "is set together with model.backbone.pretrained_backbone_path",
        ),
        (
            ["classification", "train", "dataset.train_dataset.images_dir=d", "model.backbone.type=vit_nope"],
            "model.backbone.type: unknown backbone 'vit_nope'",
        ),
        (
            [
                "mae",
                "train",
                "dataset.train_data_sources=d",
                "train.stage=finetune",
                "dataset.augmentation.interpolation=random",
            ],
            "dataset.augmentation.interpolation: 'random' is not supported yet",
        ),
        (
            [
                "nvdinov2",
                "train",
                "dataset.train_dataset.images_dir=d",
                "model.distill.enable=true",
                "model.backbone.student_type=vit_s",
            ],
            "model.distill.pretrained_non_distill_pl_model_path: is empty",
        ),
    ]
    for argv, expected in cases:
        code, _, err = run(capsys, "-w", str(ws), *argv)
        assert code == 2 and expected in err, (argv, err)
    assert not (ws / "jobs.db").exists() or JobRegistry(Workspace(ws).db_path).list() == []


def test_version_and_exit_codes_by_class(capsys):
    from foveal import __version__
    from foveal.cli import errors as cli_errors
    from foveal.errors import (
        CheckpointError,
        EncryptionKeyError,
        ExportVerificationError,
        HandoffError,
        NonFiniteLossError,
        SpecError,
        SpecIssue,
        Terminated,
        exit_code,
    )

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"foveal {__version__}"
    assert exit_code(SpecError(SpecIssue("a", "b"))) == 2
    assert (
        exit_code(CheckpointError("x"))
        == exit_code(HandoffError("x"))
        == exit_code(EncryptionKeyError("x"))
        == 2
    )
    assert exit_code(NonFiniteLossError("x", epoch=1, step=1, last_checkpoint=None)) == 1
    assert exit_code(ExportVerificationError("x")) == 1
    assert exit_code(RuntimeError("x")) == 1
    assert exit_code(KeyboardInterrupt()) == 130 and exit_code(Terminated()) == 143

    class Renamed(HandoffError):  # a subclass keeps its exit code: no table of names
        pass

    assert exit_code(Renamed("y")) == 2
    import typer

    app = typer.Typer()

    @app.command()
    def boom(kind: str) -> None:
        raise {"usage": HandoffError("bad parent"), "term": Terminated(), "bug": ZeroDivisionError("x")}[kind]

    assert cli_errors.run_cli(app, ["usage"]) == 2
    assert cli_errors.run_cli(app, ["term"]) == 143
    assert cli_errors.run_cli(app, ["bug"]) == 1
    err = capsys.readouterr().err
    assert "error: bad parent" in err and "ZeroDivisionError: x (run with --debug" in err


def test_sigterm_ends_a_foreground_command_with_143(tmp_path):
    import signal
    import time

    code = (
        "import os, signal, threading, sys\n"
        "from foveal.cli.main import main\n"
        "from foveal.cli import main as m\n"
        "import typer\n"
        "@m.app.command('sleepy')\n"
        "def sleepy() -> None:\n"
        "    import time\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(30)\n"
        "sys.exit(main(['sleepy']))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 143
    assert "terminated" in proc.stderr.read()


def test_malformed_yaml_names_the_line(capsys, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("train:\n  num_epochs: [3\n")
    code, _, err = run(capsys, "-w", str(tmp_path), "mae", "train", "-e", str(spec))
    assert code == 2 and "malformed YAML at line" in err and str(spec) in err


def test_unknown_network_and_action(capsys, tmp_path):
    code, _, err = run(capsys, "schema", "mea", "train")
    assert code == 2 and "did you mean mae?" in err
    code, _, err = run(capsys, "mae", "trian")
    assert code == 2 and "No such command" in err
    code, _, err = run(capsys, "-w", str(tmp_path), "jobs", "show", "nope")
    assert code == 2 and "nope" in err


def test_missing_dataset_is_one_line(capsys, tmp_path):
    code, _, err = run(
        capsys,
        "-w",
        str(tmp_path),
        "classification",
        "train",
        f"dataset.train_dataset.images_dir={tmp_path / 'missing'}",
    )
    assert code == 2
    assert str(tmp_path / "missing") in err and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "not found" in errors[0]
    # The failed job is on record with the same line, for agents reading the registry.
    code, out, _ = run(capsys, "-w", str(tmp_path), "jobs", "list", "--format", "json")
    (job,) = json.loads(out)
    assert job["status"] == "Error" and "not found" in job["message"]


def test_console_script_runs_without_torch_import_for_listings():
    code = (
        "import sys; from foveal.cli.main import main; rc = main(['models', '--format', 'json']);"
        "print('torch' in sys.modules, file=sys.stderr); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stderr.strip().endswith("False")


def test_empty_dataset_folder_is_a_clear_error(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(
        capsys,
        "-w",
        str(tmp_path / "ws"),
        "classification",
        "train",
        f"dataset.train_dataset.images_dir={empty}",
    )
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 2 and len(errors) == 1
    assert str(empty) in errors[0] and "empty" in errors[0]


def test_data_demo_writes_the_tao_layout(capsys, tmp_path):
    code, out, _ = run(
        capsys,
        "data",
        "demo",
        str(tmp_path / "d"),
        "--num-train",
        "8",
        "--num-val",
        "4",
        "--num-test",
        "4",
        "--image-size",
        "16",
    )
    assert code == 0
    for name in ("images_train.tar.gz", "images_val.tar.gz", "images_test.tar.gz", "labeled_train.tar.gz"):
        assert (tmp_path / "d" / name).is_file() and name in out


@pytest.mark.parametrize("network", ["classification", "mae"])
def test_gen_trt_engine_without_tensorrt_is_one_line(capsys, tmp_path, network):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here")
    import torch

    from foveal.export import export_onnx

    onnx_file = tmp_path / "model.onnx"
    export_onnx(torch.nn.Conv2d(3, 4, 3), torch.randn(2, 3, 224, 224), onnx_file)
    code, _, err = run(
        capsys, "-w", str(tmp_path / "ws"), network, "gen_trt_engine", f"gen_trt_engine.onnx_file={onnx_file}"
    )
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 2 and len(errors) == 1 and "TensorRT is not installed" in errors[0]


def test_gen_trt_engine_with_a_corrupt_onnx_file_is_one_line(capsys, tmp_path):
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not an onnx model")
    code, _, err = run(
        capsys,
        "-w",
        str(tmp_path / "ws"),
        "classification",
        "gen_trt_engine",
        f"gen_trt_engine.onnx_file={onnx_file}",
    )
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 2 and len(errors) == 1 and "is not a readable ONNX model" in errors[0]
