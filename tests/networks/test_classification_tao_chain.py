"""TAO's own cats-and-dogs tutorial specs, unchanged, run as a TAO user runs them: train with
``train_cats_dogs.yaml``, evaluate and infer with ``test_cats_dogs.yaml``, export with
``export_cats_dogs.yaml``; then TAO-Deploy's gen_trt_engine, evaluate and inference specs on the
engine. Only what TAO's launcher also fills is given on the command line: the
data and results paths, and (for a CPU-sized run) the image size, batch and epochs. Everything
lands in TAO's results layout: ``<results_dir>/<action>/``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from foveal.cli.main import main
from foveal.data.synthetic import make_demo_dataset

pytestmark = pytest.mark.integration

SPECS = Path(__file__).resolve().parents[3] / "shared" / "tao_specs"


def _cli(*args: str) -> None:
    assert main(list(args)) == 0, args


def test_tut_cats_dogs_train_evaluate_inference_export_and_deploy(tmp_path, fake_tensorrt):
    data = make_demo_dataset(
        tmp_path / "data", num_train=24, num_val=8, num_test=6, image_size=32, num_classes=2, num_workers=1,
        archives=False,
    )  # fmt: skip
    results, ws = tmp_path / "results", str(tmp_path / "ws")
    paths = [
        f"results_dir={results}",
        f"dataset.root_dir={tmp_path / 'data'}",
        f"dataset.train_dataset.images_dir={data['labeled_train']}",
        f"dataset.val_dataset.images_dir={data['labeled_val']}",
        f"dataset.test_dataset.images_dir={data['images_test']}",
        "dataset.img_size=32",
        "dataset.workers=0",
    ]
    _cli(
        "-w", ws, "classification", "train", "-e", str(SPECS / "classification_pyt__tut__train_cats_dogs.yaml"),
        *paths, "model.backbone.pretrained_backbone_path=null", "dataset.batch_size=8", "train.num_epochs=1",
    )  # fmt: skip
    latest = results / "train" / "classifier_model_latest.pth"
    assert latest.is_file() and (results / "train" / "status.json").is_file()
    assert list((results / "train" / "tensorboard").glob("events.out.tfevents.*"))  # train.tensorboard.enabled

    test_spec = str(SPECS / "classification_pyt__tut__test_cats_dogs.yaml")
    for action in ("evaluate", "inference"):
        _cli(
            "-w", ws, "classification", action, "-e", test_spec, *paths,
            "model.backbone.pretrained_backbone_path=null", f"{action}.checkpoint={latest}",
        )  # fmt: skip
    rows = list(csv.DictReader((results / "evaluate" / "result.csv").open()))
    assert len(rows) == 8 and {r["gt_label"] for r in rows} == {"circle", "square"}
    rows = list(csv.DictReader((results / "inference" / "result.csv").open()))
    assert len(rows) == 6 and {r["pred_label"] for r in rows} <= {"circle", "square"}

    _cli(
        "-w", ws, "classification", "export", "-e", str(SPECS / "classification_pyt__tut__export_cats_dogs.yaml"),
        f"results_dir={results}", f"export.checkpoint={latest}", "export.input_width=32", "export.input_height=32",
    )  # fmt: skip
    # export.onnx_file: "${export.results_dir}/classifier.onnx", export.results_dir: "${results_dir}/export"
    onnx_file = results / "export" / "classifier.onnx"
    assert onnx_file.is_file()
    from foveal import secrets

    assert secrets.is_encrypted(onnx_file)  # the spec's encryption_key (tlt_encode) applies
    assert sorted(p.name for p in results.iterdir()) == ["evaluate", "export", "inference", "train"]

    # TAO-Deploy's own specs, unchanged: the (encrypted) ONNX file -> engine -> evaluate / inference
    # on the engine. TensorRT is the ONNX Runtime-backed fake here (tests/fake_tensorrt.py).
    deploy, engine = results / "deploy", results / "deploy" / "classifier.engine"
    _cli(
        "-w", ws, "classification", "gen_trt_engine", "-e", str(SPECS / "classification_pyt__deploy__gen_trt_engine.yaml"),
        f"results_dir={deploy}", f"gen_trt_engine.onnx_file={onnx_file}", f"gen_trt_engine.trt_engine={engine}",
        "encryption_key=tlt_encode",
    )  # fmt: skip
    assert engine.is_file() and (deploy / "classifier.engine.json").is_file()
    for action, images in (("evaluate", data["labeled_val"]), ("inference", data["images_test"])):
        _cli(
            "-w", ws, "classification", action, "-e", str(SPECS / f"classification_pyt__deploy__{action}.yaml"),
            f"results_dir={deploy}", f"{action}.trt_engine={engine}", f"dataset.test_dataset.images_dir={images}",
        )  # fmt: skip
        on_engine = list(csv.DictReader((deploy / action / "result.csv").open()))
        on_checkpoint = list(csv.DictReader((results / action / "result.csv").open()))
        key = "pred_label"
        assert [r[key] for r in on_engine] == [r[key] for r in on_checkpoint]
        for a, b in zip(on_engine, on_checkpoint, strict=True):
            assert float(a["pred_score"]) == pytest.approx(float(b["pred_score"]), abs=1e-4)
    engine_results = json.loads((deploy / "evaluate" / "results.json").read_text())
    checkpoint_results = json.loads((results / "evaluate" / "results.json").read_text())
    assert engine_results["top1"] == checkpoint_results["top1"] and engine_results["weights"] == "tensorrt fp32"

    # with the checkpoint beside the engine, evaluate reports their agreement (fp32: float rounding)
    _cli(
        "-w", ws, "classification", "evaluate", "-e", str(SPECS / "classification_pyt__deploy__evaluate.yaml"),
        f"results_dir={deploy / 'agreement'}", f"evaluate.trt_engine={engine}", f"evaluate.checkpoint={latest}",
        f"dataset.test_dataset.images_dir={data['labeled_val']}", "encryption_key=tlt_encode",
    )  # fmt: skip
    agreement = json.loads((deploy / "agreement" / "evaluate" / "results.json").read_text())["tensorrt_vs_pytorch"]
    assert agreement["within_tolerance"] and agreement["top1_agreement"] == 1.0
    assert agreement["max_abs_diff"] < 1e-5 and agreement["compared"] == "class probabilities"
