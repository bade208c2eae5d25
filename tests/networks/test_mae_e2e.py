"""mae end to end at toy size, as jobs: pretrain -> finetune (--parent) -> evaluate, inference,
export of both stages; one-line errors for checkpoints of the wrong kind."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from foveal.data.synthetic import make_demo_dataset
from foveal.engine import CheckpointError, load_checkpoint
from foveal.jobs import JobStatus, Workspace
from foveal.jobs.lifecycle import run_job
from foveal.networks.mae import models
from foveal.spec import SpecError

pytestmark = pytest.mark.integration

# The registered archs are full size; the tests shrink the encoder (every arch builds in
# test_mae_models.py) so that a job takes seconds.
TINY_VIT = {"depth": 1, "embed_dim": 32, "num_heads": 2}
COMMON = [
    "model.arch=vit_tiny_patch16",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "dataset.augmentation.input_size=32",
    "dataset.batch_size=16",
    "dataset.num_workers_per_gpu=0",
    "train.optim.warmup_epochs=0",
]


@pytest.fixture(scope="module")
def tiny_backbones():
    real = models.create_backbone
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "create_backbone", lambda name, **kw: real(name, **{**kw, **TINY_VIT}))
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("shapes")
    return make_demo_dataset(
        out, num_train=48, num_val=16, num_test=8, image_size=32, num_classes=2, num_workers=1
    )


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def pretrain(tiny_backbones, data, ws):
    return run_job(
        "mae",
        "train",
        overrides=[
            *COMMON,
            "train.num_epochs=2",
            "train.optim.monitor_name=val_loss",
            f"dataset.train_data_sources={data['images_train.tar.gz']}",
            f"dataset.val_data_sources={data['images_val']}",
        ],
        workspace=ws,
    )


@pytest.fixture(scope="module")
def finetune(pretrain, data, ws):
    # Mixup, CutMix and RandAugment stay at the spec defaults (on).
    return run_job(
        "mae",
        "train",
        parent_id=pretrain.id,
        overrides=[
            *COMMON,
            "train.stage=finetune",
            "train.num_epochs=1",
            f"dataset.train_data_sources={data['labeled_train']}",
            f"dataset.val_data_sources={data['labeled_val']}",
        ],
        workspace=ws,
    )


def test_pretrain_then_finetune_from_the_parent(pretrain, finetune):
    assert pretrain.status is JobStatus.DONE and {"train_loss", "val_loss"} <= set(pretrain.kpis)
    results = Path(pretrain.results_dir)
    assert (results / "vit_tiny_patch16_latest.pth").resolve().name == "model_epoch_002_step_00006.pth"
    ckpt = load_checkpoint(results / "vit_tiny_patch16_latest.pth", network="mae")
    assert ckpt["stage"] == "pretrain" and ckpt["config"]["model"]["arch"] == "vit_tiny_patch16"
    assert any(k.startswith("model.decoder_blocks.") for k in ckpt["state_dict"])

    assert finetune.status is JobStatus.DONE and finetune.parent_id == pretrain.id
    assert {"train_loss", "val_top1"} <= set(finetune.kpis)
    log = (Path(finetune.results_dir) / "logs" / "train.log").read_text()
    # --parent starts fine-tuning from the pretrain job's best checkpoint (val_loss), never resumes it
    assert finetune.spec["train"]["pretrained_model_path"] == pretrain.artifacts["best_checkpoint"]
    assert finetune.spec["train"]["resume_training_checkpoint_path"] is None
    assert "loaded" in log and "foveal mae pretrain checkpoint" in log
    tuned = load_checkpoint(Path(finetune.results_dir) / "vit_tiny_patch16_latest.pth", network="mae")
    assert tuned["stage"] == "finetune" and tuned["classes"] == ["circle", "square"]


def test_evaluate_both_stages(pretrain, finetune, data, ws):
    test_set = f"dataset.val_data_sources={data['labeled_test']}"
    ev = run_job(
        "mae",
        "evaluate",
        parent_id=pretrain.id,
        overrides=[test_set, f"dataset.train_data_sources={data['labeled_train']}"],
        workspace=ws,
    )
    report = json.loads((Path(ev.results_dir) / "results.json").read_text())
    assert report["stage"] == "pretrain" and report["num_images"] == 8
    assert report["reconstruction_loss"] > 0 and 0 <= report["knn_top1_avg"] <= 1 and "knn_top1_cls" in report
    assert ev.kpis["reconstruction_loss"] == report["reconstruction_loss"]

    ev = run_job("mae", "evaluate", parent_id=finetune.id, overrides=[test_set], workspace=ws)
    report = json.loads((Path(ev.results_dir) / "results.json").read_text())
    assert report["stage"] == "finetune" and sum(map(sum, report["confusion_matrix"])) == 8
    assert set(report["per_class"]) == {"circle", "square"} and ev.kpis["top1"] == report["top1"]


def test_inference_both_stages(pretrain, finetune, data, ws):
    images = [f"dataset.test_data_sources={data['images_test']}"]
    inf = run_job("mae", "inference", parent_id=finetune.id, overrides=images, workspace=ws)
    rows = list(csv.DictReader((Path(inf.results_dir) / "results.csv").open()))
    assert len(rows) == 8 and set(rows[0]) == {"path", "class_index", "class_name", "score"}
    assert all(["circle", "square"][int(r["class_index"])] == r["class_name"] for r in rows)

    inf = run_job("mae", "inference", parent_id=pretrain.id, overrides=images, workspace=ws)
    from PIL import Image
    from safetensors.torch import load_file

    emb = load_file(inf.artifacts["embeddings"])
    assert emb["embedding"].shape == (8, 32) and emb["cls_token"].shape == (8, 32)
    paths = list(csv.DictReader(Path(inf.artifacts["embeddings_index"]).open()))
    assert [int(r["row"]) for r in paths] == list(range(8)) and paths[0]["path"].endswith(".png")
    grid = Image.open(inf.artifacts["reconstruction"])
    assert grid.width > 3 * 32 and grid.height > 8 * 32


def test_export_both_stages_and_overwrite_guard(pretrain, finetune, ws, tmp_path):
    from foveal.export import OnnxPredictor

    exp = run_job("mae", "export", parent_id=finetune.id, workspace=ws)
    assert exp.kpis["onnx_max_abs_diff"] <= 1e-4
    out = OnnxPredictor(exp.artifacts["onnx"]).run(torch.randn(3, 3, 32, 32).numpy())
    assert out["logits"].shape == (3, 2)

    target = tmp_path / "encoder.onnx"
    exp = run_job(
        "mae", "export", parent_id=pretrain.id, overrides=[f"export.onnx_file={target}"], workspace=ws
    )
    assert exp.kpis["onnx_max_abs_diff"] <= 1e-4
    predictor = OnnxPredictor(target)
    assert predictor.metadata["stage"] == "pretrain" and "classes" not in predictor.metadata
    out = predictor.run(torch.randn(3, 3, 32, 32).numpy())
    assert out["embedding"].shape == (3, 32) and out["patch_tokens"].shape == (3, 4, 32)
    with pytest.raises(SpecError, match=r"export\.onnx_file: .* already exists .*export\.overwrite=true"):
        run_job(
            "mae", "export", parent_id=pretrain.id, overrides=[f"export.onnx_file={target}"], workspace=ws
        )
    again = run_job(
        "mae",
        "export",
        parent_id=pretrain.id,
        overrides=[f"export.onnx_file={target}", "export.overwrite=true"],
        workspace=ws,
    )
    assert again.status is JobStatus.DONE


def test_export_input_size_and_format(finetune, ws, tmp_path):
    from foveal.export import OnnxPredictor

    target = tmp_path / "wide.onnx"
    size = ["export.input_width=48", "export.input_height=32"]
    run_job(
        "mae", "export", parent_id=finetune.id, overrides=[f"export.onnx_file={target}", *size], workspace=ws
    )
    predictor = OnnxPredictor(target)
    assert predictor.input_shapes["input"] == ["batch", 3, 32, 48]
    assert (predictor.metadata["input_height"], predictor.metadata["input_width"]) == ("32", "48")
    assert predictor.run(torch.randn(2, 3, 32, 48).numpy())["logits"].shape == (2, 2)
    cases = [
        (
            ["export.input_width=40"],
            r"export\.input_width: 40 is not a multiple of 16, which vit_tiny_patch16 needs \(use 32 or 48\)",
        ),
        (["export.format=xdl"], r"export\.format: 'xdl' export is not supported \(use onnx\)"),
    ]
    for overrides, message in cases:
        with pytest.raises(SpecError, match=message) as info:
            run_job(
                "mae",
                "export",
                parent_id=finetune.id,
                overrides=[f"export.onnx_file={tmp_path / 'refused.onnx'}", *overrides],
                workspace=ws,
            )
        assert "\n" not in str(info.value)
    assert not (tmp_path / "refused.onnx").exists()


def test_wrong_kinds_and_class_counts_are_one_line(pretrain, finetune, data, ws):
    tuned = Path(finetune.results_dir) / "vit_tiny_patch16_latest.pth"
    labeled = f"dataset.train_data_sources={data['labeled_train']}"
    cases = [
        (
            ["train.stage=finetune", labeled, f"train.pretrained_model_path={tuned}"],
            CheckpointError,
            "is a mae finetune checkpoint; fine-tuning starts from a mae pretrain checkpoint",
        ),
        (
            [f"dataset.train_data_sources={data['images_train']}", f"train.pretrained_model_path={tuned}"],
            CheckpointError,
            "is a mae finetune checkpoint; pretraining continues from a mae pretrain checkpoint",
        ),
        (
            ["train.stage=finetune", labeled, "model.num_classes=5"],
            SpecError,
            "model.num_classes: 5, but dataset.train_data_sources .* has 2 classes .*set model.num_classes=2",
        ),
    ]
    for overrides, error, message in cases:
        with pytest.raises(error, match=message) as info:
            run_job("mae", "train", overrides=[*COMMON, *overrides], workspace=ws)
        assert "\n" not in str(info.value)


def test_report_pages_show_the_curves_and_the_child_jobs_pictures(pretrain, finetune, ws, render_page):
    """After evaluate and inference ran from them (tests above): the pretrain job's page shows the
    reconstruction grid of its inference child, the finetune job's the confusion matrix of its
    evaluate child (drawn from results.json), and both
    open in headless Chromium with every figure decoded."""
    from foveal.api import report

    for job, picture in ((pretrain, "reconstruction.png"), (finetune, "confusion matrix (2 classes)")):
        assert (Path(job.results_dir) / "report.html").is_file()  # written when the train job ended
        page = report(job.id, ws)
        text = page.read_text()
        assert picture in text and "Curves per epoch" in text and "val_loss" in text
        shown = render_page(page)
        assert shown["images"] >= 3 and shown["decoded"] == shown["images"] and shown["errors"] == 0
        assert shown["drawn"] > 0.02  # a blank page: < 0.01


def test_pretraining_on_a_labeled_val_set_reports_online_knn(tiny_backbones, data, ws):
    job = run_job(
        "mae",
        "train",
        overrides=[*COMMON, "train.num_epochs=2", f"dataset.train_data_sources={data['images_train']}",
                   f"dataset.val_data_sources={data['labeled_val']}"],  # fmt: skip
        workspace=ws,
    )
    from foveal.engine.status import read_status

    epochs = [x for x in read_status(Path(job.results_dir) / "status.json") if x.get("status") == "RUNNING"]
    assert len(epochs) == 2
    for line in epochs:
        assert {"val_loss", "val_knn_top1", "val_feature_std", "val_effective_rank"} <= set(line["kpi"])
    assert 0 <= job.kpis["val_knn_top1"] <= 1


def test_deploy_both_stages_on_tensorrt_engines(pretrain, finetune, data, ws, fake_tensorrt):
    """export -> gen_trt_engine (the ONNX Runtime-backed fake TensorRT) -> evaluate / inference on
    the engine alone (as TAO-Deploy), then beside its checkpoint (the agreement report)."""
    from safetensors.torch import load_file

    engines = {}
    for stage, job in (("pretrain", pretrain), ("finetune", finetune)):
        exp = run_job("mae", "export", parent_id=job.id, workspace=ws)
        gen = run_job(
            "mae", "gen_trt_engine", overrides=[f"gen_trt_engine.onnx_file={exp.artifacts['onnx']}",
                                                "gen_trt_engine.tensorrt.max_batch_size=4"], workspace=ws,
        )  # fmt: skip
        engines[stage] = gen.artifacts["trt_engine"]
    labeled = [f"dataset.val_data_sources={data['labeled_test']}", f"dataset.train_data_sources={data['labeled_train']}"]

    ev = run_job("mae", "evaluate", overrides=[*labeled, f"evaluate.trt_engine={engines['finetune']}"], workspace=ws)
    on_checkpoint = run_job("mae", "evaluate", parent_id=finetune.id, overrides=labeled[:1], workspace=ws)
    assert ev.kpis["top1"] == on_checkpoint.kpis["top1"] and ev.kpis["loss"] == pytest.approx(on_checkpoint.kpis["loss"], abs=1e-5)

    ev = run_job("mae", "evaluate", overrides=[*labeled, f"evaluate.trt_engine={engines['pretrain']}"], workspace=ws)
    report = json.loads((Path(ev.results_dir) / "results.json").read_text())
    assert report["reconstruction_loss"] is None and "decoder" in report["reconstruction"]
    on_checkpoint = run_job("mae", "evaluate", parent_id=pretrain.id, overrides=labeled, workspace=ws)
    assert ev.kpis["knn_top1_avg"] == on_checkpoint.kpis["knn_top1_avg"]

    images = [f"dataset.test_data_sources={data['images_test']}"]
    inf = run_job(
        "mae", "inference", parent_id=pretrain.id, overrides=[*images, f"inference.trt_engine={engines['pretrain']}"],
        workspace=ws,
    )  # fmt: skip
    agreement = json.loads(Path(inf.artifacts["tensorrt_vs_pytorch"]).read_text())
    assert agreement["compared"] == "class token" and agreement["within_tolerance"] and agreement["max_abs_diff"] < 1e-4
    assert "reconstruction" not in inf.artifacts and inf.kpis["trt_vs_pytorch_max_abs_diff"] < 1e-4
    plain = run_job("mae", "inference", parent_id=pretrain.id, overrides=images, workspace=ws)
    torch.testing.assert_close(load_file(inf.artifacts["embeddings"])["embedding"],
                               load_file(plain.artifacts["embeddings"])["embedding"], atol=1e-4, rtol=0)  # fmt: skip

    with pytest.raises(SpecError, match="is a mae finetune engine but inference.checkpoint is a pretrain checkpoint"):
        run_job("mae", "inference", parent_id=pretrain.id,
                overrides=[*images, f"inference.trt_engine={engines['finetune']}"], workspace=ws)  # fmt: skip
