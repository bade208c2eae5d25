"""Detection, semantic segmentation and depth models port whole (backbone, neck, head) and train
with their own loss: tiny random DETR (ResNet backbone, no timm), SegFormer and DPT each port in
one command, then train -> evaluate -> export -> ONNX Runtime parity on the annotated synthetic
shapes, with the task's metric in status.json and the parity figure in port_report.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_tasks import save_tiny_task_model

import foveal
from foveal.cli.main import main

pytestmark = pytest.mark.integration

# task model -> (task, status.json KPI of evaluate, the ONNX outputs)
CASES = {
    "detr": ("object-detection", "mAP50", ["logits", "pred_boxes"]),
    "segformer": ("semantic-segmentation", "mIoU", ["logits"]),
    "dpt": ("depth-estimation", "abs_rel", ["predicted_depth"]),
    "mask2former": ("instance-segmentation", "mAP", ["class_queries_logits", "masks_queries_logits"]),
}


def _kpis(status_file: Path) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in status_file.read_text().splitlines():
        found.update(json.loads(line).get("kpi") or {})
    return found


@pytest.mark.parametrize("kind", list(CASES))
def test_task_models_port_train_evaluate_export(kind, tmp_path):
    import onnx

    task, metric, outputs = CASES[kind]
    source = save_tiny_task_model(kind, tmp_path / kind)
    ws = tmp_path / "ws"
    report = foveal.port_hf(source, name=f"tiny_{kind}", workspace=ws)
    assert report.status == "passed" and report.mapping == "whole" and report.task == task
    phases = {p["phase"]: p for p in report.phases}
    assert phases["map"]["figures"]  # copy vs source, per output
    assert all(v == 0.0 for k, v in phases["map"]["figures"].items() if k.startswith("copy_vs_source"))
    parity = phases["verify.onnxruntime"]
    assert parity["status"] == "pass" and parity["figures"]["ort_outputs_max_abs_diff"] <= 1e-4
    # relative to the outputs' scale too: a re-initialised head's outputs are small
    assert parity["figures"]["outputs_absmax"] > 0 and parity["figures"]["ort_outputs_rel_diff"] < 1e-4
    saved = json.loads((ws / "networks" / f"tiny_{kind}" / "port_report.json").read_text())
    assert saved["task"] == task and any(p["phase"] == "verify.onnxruntime" for p in saved["phases"])
    evaluate_status = ws / "results" / report.jobs["evaluate"] / "status.json"
    assert metric in _kpis(evaluate_status)
    onnx_file = Path(next(f for f in report.files if f.endswith(".onnx")))
    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    assert [o.name for o in graph.output] == outputs
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a dynamic batch


def test_ported_detector_infers_and_resumes_from_its_checkpoint(tmp_path):
    source = save_tiny_task_model("detr", tmp_path / "detr")
    ws = tmp_path / "ws"
    report = foveal.port_hf(source, name="det", workspace=ws)
    data = ws / "cache" / "port_tasks_224"
    from foveal.jobs.lifecycle import run_job

    job = run_job("det", "inference", parent_id=report.jobs["train"], workspace=ws,
                  overrides={"dataset.infer_data_sources.image_dir": str(data / "images" / "val"),
                             "inference.conf_threshold": 0.0, "dataset.workers": 0})  # fmt: skip
    results = json.loads(Path(job.artifacts["results"]).read_text())
    assert len(results) == 4 and all(r["detections"] for r in results)
    first = results[0]["detections"][0]
    assert first["label"] in ("circle", "square", "triangle") and len(first["bbox"]) == 4
    assert len(list(Path(job.artifacts["images_annotated"]).glob("*.png"))) == 4
    # a second train job starts from the first one's checkpoint (same classes: every tensor)
    train = run_job("det", "train", parent_id=report.jobs["train"], workspace=ws, new=True, overrides={
        "dataset.train_data_sources": [{"image_dir": str(data / "images" / "train"),
                                        "json_file": str(data / "annotations" / "instances_train.json")}],
        "train.num_epochs": 1, "dataset.workers": 0, "dataset.batch_size": 4})  # fmt: skip
    assert train.status == "Done" and "train_loss" in train.kpis


def test_segmentation_and_depth_inference_write_maps(tmp_path):
    from foveal.jobs.lifecycle import run_job

    ws = tmp_path / "ws"
    for kind, key, folders in (("segformer", "dataset.segment.root_dir", ("masks", "overlays")),
                               ("dpt", "dataset.depth.root_dir", ("depth", "colour"))):  # fmt: skip
        report = foveal.port_hf(save_tiny_task_model(kind, tmp_path / kind), name=kind, workspace=ws)
        size = 64  # both tiny configs say image_size 64
        root = ws / "cache" / f"port_tasks_{size}"
        job = run_job(kind, "inference", parent_id=report.jobs["train"], workspace=ws,
                      overrides={key: str(root), f"{key.rsplit('.', 1)[0]}.predict_split": "val",
                                 "dataset.workers": 0})  # fmt: skip
        for folder in folders:
            files = sorted(Path(job.artifacts[folder]).glob("*.png"))
            assert len(files) == 4
        from PIL import Image

        with Image.open(sorted(Path(job.artifacts[folders[0]]).glob("*.png"))[0]) as image:
            assert image.size == (size, size)
            assert image.mode in (("L",) if kind == "segformer" else ("I;16", "I"))


def test_a_bad_dataset_path_is_one_line(tmp_path, capsys):
    source = save_tiny_task_model("segformer", tmp_path / "segformer")
    ws = tmp_path / "ws"
    foveal.port_hf(source, name="seg", workspace=ws)
    capsys.readouterr()
    code = main(["-w", str(ws), "seg", "train", f"dataset.segment.root_dir={tmp_path / 'nope'}"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "nope" in lines[0] and "Traceback" not in err


def test_clip_with_its_tokenizer_ports_as_zero_shot_and_runs_the_normal_train_workflow(tmp_path, capsys):
    """TAO's example model by its TAO name: port a CLIP folder as ``clip``, then
    ``foveal workflow normal-train --model clip`` (AutoML, evaluate, export) like any network."""
    from tiny_tasks import save_tiny_clip

    ws = tmp_path / "ws"
    report = foveal.port_hf(save_tiny_clip(tmp_path / "clip_hf"), name="clip", workspace=ws)
    assert report.task == "zero-shot-image-classification" and report.status == "passed"
    train_kpis = next(p for p in report.phases if p["phase"] == "verify.train")["figures"]
    assert {"zero_shot_top1", "val_top1"} <= set(train_kpis)  # before and after fine-tuning
    entry = json.loads((ws / "networks" / "clip" / "network.json").read_text())
    assert entry["base"] == "hf_zero_shot_classification"
    assert (ws / "networks" / "clip" / "hf" / "vocab.json").is_file()  # the tokenizer travels with it
    data = ws / "cache" / "port_synthetic_32"
    capsys.readouterr()
    code = main(["-w", str(ws), "workflow", "normal-train", "--model", "clip", "--train-dataset-uri",
                 str(data / "labeled_train"), "--eval-dataset-uri", str(data / "labeled_val"), "--max-trials", "2",
                 "--export", "train.num_epochs=1", "dataset.workers=0"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    stages = {line.split("\t")[0]: line.split("\t")[2] for line in out.splitlines() if line.count("\t") >= 3}
    assert stages == {"stage": "status", "train": "Done", "evaluate": "Done", "export": "Done"}, out
    assert "AutoML (bayesian, 2 trials, trials ranked on val_top1 (maximize)); metric val_top1 (maximize)" in out
    assert "zero_shot_top1=" in out


def test_a_zero_shot_spec_without_a_tokenizer_is_one_line(tmp_path, capsys):
    from tiny_tasks import save_tiny_clip

    ws = tmp_path / "ws"
    foveal.port_hf(save_tiny_clip(tmp_path / "clip_hf"), name="zs", workspace=ws)
    data = ws / "cache" / "port_synthetic_32"
    capsys.readouterr()
    code = main(["-w", str(ws), "zs", "train", f"dataset.train_dataset.images_dir={data / 'labeled_train'}",
                 f"model.tokenizer_dir={tmp_path}", "dataset.workers=0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "model.tokenizer_dir" in err and "Traceback" not in err
    code = main(["-w", str(ws), "zs", "train", f"dataset.train_dataset.images_dir={data / 'labeled_train'}",
                 "model.prompt_template=a photo"])  # fmt: skip
    assert code == 2 and "model.prompt_template" in capsys.readouterr().err


def test_grounding_dino_ports_as_an_open_vocabulary_detector_and_runs_the_normal_train_workflow(tmp_path, capsys):
    """TAO's other example model: a Grounding DINO folder (ResNet image backbone, BERT text
    encoder, its tokenizer beside it) ports as ``grounding_dino``; the dataset's category names
    become its caption; the ONNX graph (caption constant) gives per-category logits and boxes;
    ``foveal workflow normal-train --model grounding_dino`` takes COCO folders as dataset URIs."""
    import onnx
    from tiny_tasks import save_tiny_grounding_dino

    ws = tmp_path / "ws"
    report = foveal.port_hf(save_tiny_grounding_dino(tmp_path / "gd_hf"), name="grounding_dino", workspace=ws)
    assert report.task == "zero-shot-object-detection" and report.status == "passed"
    phases = {p["phase"]: p for p in report.phases}
    assert {"zero_shot_mAP50", "val_mAP50"} <= set(phases["verify.train"]["figures"])
    parity = phases["verify.onnxruntime"]["figures"]
    assert parity["ort_outputs_max_abs_diff"] <= 1e-4 and parity["ort_outputs_rel_diff"] < 1e-4
    onnx_file = next(f for f in report.files if f.endswith(".onnx"))
    graph = onnx.load(onnx_file, load_external_data=False).graph
    assert [o.name for o in graph.output] == ["logits", "pred_boxes"]
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim][1:] == [10, 3]  # 3 categories
    data = ws / "cache" / "port_tasks_224"
    capsys.readouterr()
    code = main(["-w", str(ws), "workflow", "normal-train", "--model", "grounding_dino", "--train-dataset-uri",
                 str(data / "coco_train"), "--eval-dataset-uri", str(data / "coco_val"), "--automl-policy", "off",
                 "--export", "train.num_epochs=1", "dataset.workers=0", "dataset.batch_size=4"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    stages = {line.split("\t")[0]: line.split("\t")[2] for line in out.splitlines() if line.count("\t") >= 3}
    assert stages == {"stage": "status", "train": "Done", "evaluate": "Done", "export": "Done"}, out
    assert "zero_shot_mAP50=" in out and "metric val_mAP50 (maximize)" in out


def test_a_ported_segmenter_deploys_on_a_tensorrt_engine(tmp_path, monkeypatch):
    """gen_trt_engine of a task network, then evaluate and inference on the engine: the export job's
    ONNX (named outputs, dynamic batch) goes to TensorRT's builder with the spec's fp16 profile and
    the engine runs in place of the checkpoint (an ONNX Runtime-backed fake TensorRT here,
    tests/fake_tensorrt.py; the real one runs in the GPU device check)."""
    import fake_tensorrt
    from foveal.jobs.lifecycle import run_job

    ws = tmp_path / "ws"
    report = foveal.port_hf(save_tiny_task_model("segformer", tmp_path / "seg"), name="seg", workspace=ws)
    export = run_job("seg", "export", parent_id=report.jobs["train"], workspace=ws)
    calls = fake_tensorrt.install(monkeypatch)  # after the export: torch's exporter probes for tensorrt
    engine = run_job("seg", "gen_trt_engine", parent_id=export.id, workspace=ws,
                     overrides={"gen_trt_engine.tensorrt.data_type": "fp16",
                                "gen_trt_engine.tensorrt.max_batch_size": 4})  # fmt: skip
    assert engine.status == "Done" and calls["flags"] == ["FP16"]
    (low, _, high), = calls["profiles"].values()
    assert low[0] == 1 and high[0] == 4 and low[1:] == [3, 64, 64]

    root = ws / "cache" / "port_tasks_64"
    data = {"dataset.segment.root_dir": str(root), "dataset.segment.predict_split": "val", "dataset.workers": 0}
    trt = {"evaluate.trt_engine": engine.artifacts["trt_engine"]}
    on_engine = run_job("seg", "evaluate", workspace=ws, overrides={**data, **trt})
    on_checkpoint = run_job("seg", "evaluate", parent_id=report.jobs["train"], workspace=ws, overrides=data)
    assert on_engine.kpis["mIoU"] == pytest.approx(on_checkpoint.kpis["mIoU"], abs=0.02)  # fp16 logits
    both = run_job("seg", "inference", parent_id=report.jobs["train"], workspace=ws,
                   overrides={**data, "inference.trt_engine": engine.artifacts["trt_engine"]})  # fmt: skip
    agreement = json.loads(Path(both.artifacts["tensorrt_vs_pytorch"]).read_text())
    assert agreement["compared"] == "logits" and agreement["data_type"] == "fp16" and agreement["within_tolerance"]
    assert 0 < agreement["max_abs_diff"] and len(list(Path(both.artifacts["masks"]).glob("*.png"))) == 4
