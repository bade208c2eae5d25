"""foveal port hf end to end: the acceptance path on a tiny ViT, refusals, idempotence, removal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import write_config

from foveal.cli.main import main

pytestmark = pytest.mark.integration

PHASES = [
    "inspect",
    "inspect.onnx_sanity",
    "map",
    "generate",
    "verify.train",
    "verify.evaluate",
    "verify.export",
    "verify.onnxruntime",
]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow  # ~60 s alone, ~130 s on two shared cores
def test_port_tinyvit_then_train_and_export_in_a_fresh_process(tmp_path, capsys, tiny_model):
    ws = tmp_path / "ws"
    code, out, err = run(capsys, "-w", str(ws), "port", "hf", str(tiny_model("vit")), "--name", "tinyvit")
    assert code == 0, err
    for phase in PHASES:
        assert f"PASS {phase}:" in out, (phase, out)
    entry = ws / "networks" / "tinyvit"
    report = json.loads((entry / "port_report.json").read_text())
    assert report["status"] == "passed" and report["mapping"] == "native"
    assert [p["phase"] for p in report["phases"]] == PHASES
    figures = {p["phase"]: p["figures"] for p in report["phases"]}
    assert figures["map"]["hf_vs_native_features"] <= 1e-4
    ort = figures["verify.onnxruntime"]
    assert ort["ort_logits_max_abs_diff"] <= 1e-4 and ort["ort_features_max_abs_diff"] <= 1e-4
    assert ort["features_absmax"] > 0.1  # the comparison is not between two near-zero tensors
    network = json.loads((entry / "network.json").read_text())
    assert network["verified"] and network["backbone"]["kind"] == "native_vit"
    assert network["metadata"]["monitoring_metric"] == "val_top1" and network["metadata"]["automl_enabled"]
    assert "train.optim.lr" in network["metadata"]["automl_default_parameters"]
    assert network["defaults"]["dataset.augmentation.mean"] == [0.5, 0.5, 0.5]
    for action in ("train", "evaluate", "inference", "export", "gen_trt_engine"):
        assert (entry / "specs" / f"{action}.yaml").is_file() and (
            entry / "schema" / f"{action}.json"
        ).is_file()
    assert (entry / "backbone.safetensors").is_file() and not (entry / "hf").exists()
    assert "tinyvit: type" not in (entry / "specs" / "train.yaml").read_text()
    assert "type: tinyvit" in (entry / "specs" / "train.yaml").read_text()

    code, out, _ = run(capsys, "-w", str(ws), "models", "--format", "json")
    assert any(r["name"] == "tinyvit" for r in json.loads(out))

    data = ws / "cache" / "port_synthetic_32"
    code, out, err = run(
        capsys, "-w", str(ws), "tinyvit", "train", f"dataset.train_dataset.images_dir={data / 'labeled_train'}",
        f"dataset.val_dataset.images_dir={data / 'labeled_val'}", "train.num_epochs=1", "dataset.workers=0",
        "dataset.batch_size=4", "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    train = json.loads(out)
    assert train["status"] == "Done" and train["network"] == "tinyvit"
    assert train["spec"]["model"]["backbone"]["type"] == "tinyvit"

    code, out, err = run(
        capsys, "-w", str(ws), "tinyvit", "inference", "--parent", train["id"],
        f"dataset.test_dataset.images_dir={data / 'labeled_val'}", "dataset.workers=0", "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    rows = (Path(json.loads(out)["artifacts"]["results"])).read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("img_name,pred_label,pred_score")

    # A fresh process that knows only the workspace (-w) finds the ported network.
    env = {k: v for k, v in os.environ.items() if k != "FOVEAL_WORKSPACE"}
    proc = subprocess.run(
        [sys.executable, "-m", "foveal.cli.main", "-w", str(ws), "tinyvit", "export", "--parent", train["id"],
         "--format", "json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    export = json.loads(proc.stdout)
    onnx_file = Path(export["artifacts"]["onnx"])
    assert export["status"] == "Done" and onnx_file.is_file()
    assert export["kpis"]["onnx_max_abs_diff"] <= 1e-4

    # The exported file runs in ONNX Runtime and agrees with the checkpoint in PyTorch.
    from foveal.export import OnnxPredictor
    from foveal.networks.classification.actions import load_classifier
    from foveal.networks.ported import absolute_backbone_spec
    from foveal.nn.ported import register_ported_backbone

    register_ported_backbone("tinyvit", absolute_backbone_spec(network, entry))
    model, _, _ = load_classifier(train["artifacts"]["checkpoint"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    got = OnnxPredictor(onnx_file).run(x.numpy())["logits"]
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.slow  # two full ports
def test_port_is_idempotent_force_regenerates_and_remove_removes(tmp_path, capsys, tiny_model):
    from foveal.data.synthetic import make_demo_dataset

    ws, source = str(tmp_path / "ws"), str(tiny_model("resnet"))
    data = make_demo_dataset(tmp_path / "d", num_train=24, num_val=0, num_test=0, image_size=32, num_classes=3,
                             archives=False, num_workers=1)["labeled_train"]  # fmt: skip
    assert run(capsys, "-w", ws, "port", "hf", source, "--name", "tres", "--data", str(data))[0] == 0
    entry = tmp_path / "ws" / "networks" / "tres"
    first = json.loads((entry / "port_report.json").read_text())
    assert first["mapping"] == "wrapped" and (entry / "hf" / "config.json").is_file()
    code, out, _ = run(capsys, "-w", ws, "port", "list", "--format", "json")
    assert [(r["name"], r["mapping"], r["verified"]) for r in json.loads(out)] == [("tres", "wrapped", True)]
    train_phase = next(p for p in first["phases"] if p["phase"] == "verify.train")
    assert "port_data_tres" in train_phase["message"]  # the user's data, cut to 4 images per class

    code, out, _ = run(capsys, "-w", ws, "port", "hf", source, "--name", "tres", "--data", str(data))
    assert code == 0 and "already ported" in out and "UNCHANGED" in out
    assert json.loads((entry / "port_report.json").read_text())["jobs"] == first["jobs"]

    code, _, err = run(capsys, "-w", ws, "port", "hf", str(tiny_model("vit")), "--name", "tres")
    assert code == 2 and "already exists" in err and "--force" in err

    code, out, _ = run(
        capsys, "-w", ws, "port", "hf", source, "--name", "tres", "--data", str(data), "--force"
    )
    assert code == 0 and "PASSED" in out
    assert json.loads((entry / "port_report.json").read_text())["jobs"]["train"] != first["jobs"]["train"]

    # --force with a source phase 1 refuses: the existing entry stays as it was.
    bert = write_config(
        tmp_path / "bert", {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": 9}
    )
    code, _, err = run(capsys, "-w", ws, "port", "hf", str(bert), "--name", "tres", "--force")
    assert code == 2 and "text model" in err and json.loads((entry / "network.json").read_text())["verified"]

    code, out, _ = run(capsys, "-w", ws, "port", "remove", "tres")
    assert code == 0 and not entry.exists()
    code, _, err = run(capsys, "-w", ws, "tres", "evaluate")
    assert code == 2 and "unknown network 'tres'" in err
    code, _, err = run(capsys, "-w", ws, "port", "remove", "tres")
    assert code == 2 and "no ported network 'tres'" in err


def test_text_model_is_refused_in_one_line(tmp_path, capsys):
    from transformers import BertConfig

    folder = tmp_path / "bert"
    BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    ).save_pretrained(folder)
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    code, out, err = run(capsys, "-w", str(tmp_path / "ws"), "port", "hf", str(folder), "--name", "bert")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "text model" in err and "Traceback" not in err
    assert not (tmp_path / "ws" / "networks").exists()


@pytest.mark.parametrize(
    ("architecture", "model_type", "task"),
    [
        ("OneFormerForUniversalSegmentation", "oneformer", "universal-segmentation"),
    ],
)
def test_recognised_but_unsupported_tasks_are_refused_by_name(
    tmp_path, capsys, architecture, model_type, task
):
    folder = write_config(
        tmp_path / model_type, {"architectures": [architecture], "model_type": model_type, "num_channels": 3}
    )
    code, _, err = run(capsys, "-w", str(tmp_path / "ws"), "port", "hf", str(folder), "--name", "x1")
    assert code == 2 and f"is a {task} model" in err and "not supported yet" in err


def test_a_text_conditioned_detector_without_its_tokenizer_is_refused(tmp_path, capsys):
    folder = write_config(tmp_path / "gd", {"architectures": ["GroundingDinoForObjectDetection"],
                                            "model_type": "grounding-dino"})  # fmt: skip
    code, _, err = run(capsys, "-w", str(tmp_path / "ws"), "port", "hf", str(folder), "--name", "x1")
    assert code == 2 and "needs its text tokenizer" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}", "--name", "ok_name"], "no such folder"),
        (["{vit}", "--name", "classification"], "built-in network"),
        (["{vit}", "--name", "vit_t"], "built-in backbone"),
        (["{vit}", "--name", "Bad-Name"], "--name 'Bad-Name'"),
        (["{empty}", "--name", "ok_name"], "no config.json"),
    ],
)
def test_bad_sources_and_names_exit_2(tmp_path, capsys, tiny_model, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "vit": tiny_model("vit"), "empty": tmp_path / "empty"}
    argv = [a.format(**paths) for a in args]
    code, _, err = run(capsys, "-w", str(tmp_path / "ws"), "port", "hf", *argv)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_failed_phase_exits_1_with_the_report(tmp_path, capsys, tiny_model, monkeypatch):
    from foveal.port import mapping

    def drifting(info, folder, prefer_native=True):
        return mapping.MappingResult(
            "native", "vit", {"kind": "native_vit"}, 32, {"hf_vs_native_features": 0.5}
        )

    monkeypatch.setattr(mapping, "map_source", drifting)
    ws = tmp_path / "ws"
    code, out, err = run(capsys, "-w", str(ws), "port", "hf", str(tiny_model("vit")), "--name", "drift")
    assert code == 1 and "FAIL map:" in out and "PASS inspect:" in out
    assert err.strip().splitlines()[-1].startswith("error: port drift: map failed")
    report = json.loads((ws / "networks" / "drift" / "port_report.json").read_text())
    assert report["status"] == "failed" and report["phases"][-1]["phase"] == "map"
    assert not (ws / "networks" / "drift" / "network.json").exists()
    code, _, err = run(capsys, "-w", str(ws), "drift", "train")
    assert code == 2 and "drift" in err  # never registered: no such command
