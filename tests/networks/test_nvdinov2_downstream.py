"""nvdinov2 downstream actions on backbone files written in the train contract's format:
kNN / linear probe numbers, inference outputs, ONNX export parity, and checkpoint-kind errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from nvdinov2_tiny import TINY_VIT
from PIL import Image

from foveal.engine import CheckpointError
from foveal.jobs import JobStatus, Workspace
from foveal.jobs.lifecycle import run_job
from foveal.networks.nvdinov2.evaluation import knn_top1, linear_probe_top1, stratified_split
from foveal.spec import SpecError

pytestmark = pytest.mark.integration
DIM = TINY_VIT["embed_dim"]


@pytest.fixture(scope="module", autouse=True)
def tiny_backbones():
    from foveal.networks.nvdinov2 import backbones

    real = backbones.create_backbone
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backbones, "create_backbone", lambda name, **kw: real(name, **{**kw, **TINY_VIT}))
        yield


def _config(registers: int = 0):
    from foveal.networks.nvdinov2.config import NVDINOv2Config, resolve
    from foveal.spec import build_config

    data = {
        "model": {
            "backbone": {
                "teacher_type": "vit_t",
                "student_type": "vit_t",
                "patch_size": 16,
                "img_size": 32,
                "num_register_tokens": registers,
            }
        },
        "dataset": {"transform": {"global_crops_size": 32, "local_crops_size": 16}},
    }
    return resolve(build_config(NVDINOv2Config, data))


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory) -> Path:
    """``student_epoch_001_step_00002.pth`` as the train action writes it, plus its full twin."""
    from foveal.networks.nvdinov2.backbones import build_backbone
    from foveal.spec import to_dict

    torch.manual_seed(0)
    cfg = _config(registers=2)
    backbone = build_backbone(cfg, "student")
    folder = tmp_path_factory.mktemp("train")
    header = {"network": "nvdinov2", "arch": "vit_t", "config": to_dict(cfg), "epoch": 1, "step": 2}
    path = folder / "student_epoch_001_step_00002.pth"
    torch.save({**header, "kind": "student", "state_dict": backbone.state_dict()}, path)
    full = {f"student.backbone.{k}": v for k, v in backbone.state_dict().items()}
    full |= {f"teacher.backbone.{k}": torch.zeros_like(v) for k, v in backbone.state_dict().items()}
    torch.save({**header, "kind": "full", "state_dict": full}, folder / "model_epoch_001_step_00002.pth")
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("ws"))


def _image(path: Path, colour: tuple[int, int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 6, (40, 48, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


# ------------------------------------------------------------------------------ numbers


def test_knn_vote_is_temperature_weighted() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    labels = [0, 1, 1]
    val, val_y = torch.tensor([[2.0, 0.0]]), [0]
    # T = 1: class 1 collects e^0 + e^0.995 > e^1, so the vote is wrong ...
    assert knn_top1(train, labels, val, val_y, k=3, temperature=1.0) == 0.0
    # ... a sharp temperature lets the closest neighbour dominate; k = 1 is the nearest neighbour.
    assert knn_top1(train, labels, val, val_y, k=3, temperature=0.07) == 1.0
    assert knn_top1(train, labels, val, val_y, k=1) == 1.0


def test_knn_and_linear_probe_separable_vs_random_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    centres = torch.randn(4, 16, generator=generator) * 3
    feats = centres[labels] + torch.randn(200, 16, generator=generator)
    train, val = slice(0, 120), slice(120, 200)
    assert knn_top1(feats[train], labels[train], feats[val], labels[val]) == 1.0
    probe = linear_probe_top1(feats[train], labels[train], feats[val], labels[val])
    assert probe == 1.0
    assert probe == linear_probe_top1(feats[train], labels[train], feats[val], labels[val])  # deterministic

    noise = torch.randn(200, 16, generator=generator)
    random_labels = torch.randint(0, 4, (200,), generator=generator)
    assert knn_top1(noise[train], random_labels[train], noise[val], random_labels[val]) < 0.45
    assert linear_probe_top1(noise[train], random_labels[train], noise[val], random_labels[val]) < 0.45


def test_linear_probe_takes_features_and_labels_made_in_inference_mode() -> None:
    # Features embedded under torch.inference_mode() (as a user's own loop would) must not trip
    # autograd's "inference tensors cannot be saved for backward" in the probe's loss.
    generator = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        labels = torch.arange(80) % 2
        feats = torch.randn(2, 8, generator=generator)[labels] * 4 + torch.randn(80, 8, generator=generator)
    assert labels.is_inference() and feats.is_inference()
    assert linear_probe_top1(feats[:60], labels[:60], feats[60:], labels[60:]) == 1.0


def test_stratified_split_is_fixed_and_covers_every_class() -> None:
    labels = [0] * 5 + [1] * 2 + [2] * 9
    ref, held = stratified_split(labels, 0.5, seed=3)
    assert sorted(ref + held) == list(range(16)) and not set(ref) & set(held)
    for cls in (0, 1, 2):
        assert any(labels[i] == cls for i in ref) and any(labels[i] == cls for i in held)
    assert (ref, held) == stratified_split(labels, 0.5, seed=3)
    assert (ref, held) != stratified_split(labels, 0.5, seed=4)


# ------------------------------------------------------------------------------ inference


def test_inference_writes_csv_npy_and_pca(backbone_file, ws, tmp_path) -> None:
    from foveal.networks.nvdinov2.checkpoints import load_backbone_file
    from foveal.networks.nvdinov2.inference import eval_transform

    images = tmp_path / "images"
    for i in range(7):  # one nested folder: inference is recursive
        _image(images / ("nested" if i < 2 else "") / f"img_{i}.png", (30 * i, 200 - 20 * i, 90), i)
    job = run_job(
        "nvdinov2",
        "inference",
        overrides=[
            f"inference.checkpoint={backbone_file}",
            f"dataset.test_dataset.images_dir={images}",
            "inference.batch_size=3",
            "dataset.workers=0",
        ],
        workspace=ws,
    )
    assert job.status is JobStatus.DONE and job.kpis == {"num_images": 7.0, "feature_dim": float(DIM)}
    rows = list(csv.DictReader(Path(job.artifacts["inference_csv"]).open()))
    assert list(rows[0]) == ["input_path", "features"] and len(rows) == 7
    assert sum("nested" in r["input_path"] for r in rows) == 2
    matrix = np.load(job.artifacts["features"])
    assert matrix.shape == (7, DIM) and matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, np.array([json.loads(r["features"]) for r in rows]), rtol=1e-6)
    paths = Path(job.artifacts["features_paths"]).read_text().splitlines()
    assert paths == [r["input_path"] for r in rows]
    # Batched features equal a single image's forward (no cross-talk inside a batch).
    loaded = load_backbone_file(backbone_file, key="inference.checkpoint")
    single = eval_transform(loaded)(Image.open(paths[4]).convert("RGB"))[None]
    with torch.no_grad():
        expected = loaded.backbone.forward_features(single)["x_norm_clstoken"][0].numpy()
    np.testing.assert_allclose(matrix[4], expected, atol=1e-5)
    pca = Image.open(job.artifacts["pca"])
    assert pca.size == (256, 4 * 128)
    right = np.asarray(pca)[:, 128:]
    assert right.max() > 0 and len(np.unique(right.reshape(-1, 3), axis=0)) > 1


def test_pca_rows_follow_vis_after_n_batches() -> None:
    from foveal.networks.nvdinov2.inference import pca_picks

    assert pca_picks(6, batch=8, every=1) == [0, 1, 2, 3]  # one batch: its first four images
    assert pca_picks(100, batch=8, every=2) == [0, 16, 32, 48]  # the first image of every 2nd batch
    assert pca_picks(20, batch=8, every=2) == [0, 1, 2, 16]  # two drawn batches fill four rows
    assert pca_picks(2, batch=8, every=16) == [0, 1]


def test_pca_colours_split_foreground() -> None:
    from foveal.networks.nvdinov2.inference import pca_colours

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 16, 8, generator=generator) * 0.05
    tokens[:, :4] += 5.0  # a 4-patch "object" per image, far from the background
    colours = pca_colours(tokens)
    assert colours.shape == (2, 16, 3) and 0 <= colours.min() and colours.max() <= 1
    assert (colours[:, 4:] == 0).all() and (colours[:, :4].sum(-1) > 0).any()


# ------------------------------------------------------------------------------ evaluate


def _labeled(root: Path, separable: bool, per_class: int = 6, seed: int = 0) -> Path:
    colours = [(220, 30, 30), (30, 30, 220)]
    for cls in range(2):
        for i in range(per_class):
            colour = colours[cls] if separable else colours[i % 2]
            _image(root / f"class_{cls}" / f"{i}.png", colour, seed + 100 * cls + i)
    return root


def test_evaluate_separable_vs_not(backbone_file, ws, tmp_path) -> None:
    common = [f"evaluate.checkpoint={backbone_file}", "dataset.workers=0", "dataset.batch_size=5"]
    good = run_job(
        "nvdinov2",
        "evaluate",
        overrides=[*common, f"dataset.val_dataset.images_dir={_labeled(tmp_path / 'sep', True)}"],
        workspace=ws,
    )
    report = json.loads((Path(good.results_dir) / "results.json").read_text())
    assert report["knn_top1"] == 1.0 and report["linear_probe_top1"] == 1.0
    assert report["num_reference"] == 6 and report["num_evaluated"] == 6 and report["k"] == 20
    assert "of dataset.val_dataset.images_dir" in report["reference"]
    assert good.kpis == {"knn_top1": 1.0, "linear_probe_top1": 1.0}

    # Each class holds the same mix of red and blue images: no feature can tell them apart.
    bad = run_job(
        "nvdinov2",
        "evaluate",
        overrides=[
            *common,
            f"dataset.val_dataset.images_dir={_labeled(tmp_path / 'mixed_val', False)}",
            f"dataset.train_dataset.images_dir={_labeled(tmp_path / 'mixed_train', False, 8, seed=1000)}",
            "evaluate.knn_k=5",
        ],
        workspace=ws,
    )
    report = json.loads((Path(bad.results_dir) / "results.json").read_text())
    assert report["reference"] == "dataset.train_dataset.images_dir"
    assert report["num_reference"] == 16 and report["num_evaluated"] == 12 and report["k"] == 5
    assert report["knn_top1"] <= 0.75 and report["linear_probe_top1"] <= 0.75


def test_evaluate_needs_class_folders(backbone_file, ws, tmp_path) -> None:
    from foveal.data import DatasetError

    with pytest.raises(SpecError, match="dataset.val_dataset.images_dir"):
        run_job("nvdinov2", "evaluate", overrides=[f"evaluate.checkpoint={backbone_file}"], workspace=ws)

    flat = tmp_path / "flat"
    for i in range(3):
        _image(flat / f"{i}.png", (10, 10, 10), i)
    with pytest.raises(DatasetError, match="no class subfolders"):
        run_job(
            "nvdinov2",
            "evaluate",
            overrides=[f"evaluate.checkpoint={backbone_file}", f"dataset.val_dataset.images_dir={flat}"],
            workspace=ws,
        )


# ------------------------------------------------------------------------------ export


def test_export_parity_dynamic_batch_sizes_and_overwrite(backbone_file, ws, tmp_path) -> None:
    from foveal.export import OnnxPredictor
    from foveal.networks.nvdinov2.checkpoints import load_backbone_file

    target = tmp_path / "dino.onnx"
    job = run_job(
        "nvdinov2",
        "export",
        overrides=[f"export.checkpoint={backbone_file}", f"export.onnx_file={target}"],
        workspace=ws,
    )
    assert job.kpis["onnx_max_abs_diff"] <= 1e-4
    assert "outputs cls_token" in job.message and "patch_tokens" in job.message
    predictor = OnnxPredictor(target)
    assert predictor.input_names == ["input"] and predictor.metadata["arch"] == "vit_t"
    images = torch.randn(3, 3, 32, 32)
    out = predictor.run(images.numpy())
    assert out["cls_token"].shape == (3, DIM) and out["patch_tokens"].shape == (3, 4, DIM)
    loaded = load_backbone_file(backbone_file, key="export.checkpoint")
    with torch.no_grad():
        expected = loaded.backbone.forward_features(images)
    np.testing.assert_allclose(out["cls_token"], expected["x_norm_clstoken"].numpy(), atol=1e-4)
    np.testing.assert_allclose(out["patch_tokens"], expected["x_norm_patchtokens"].numpy(), atol=1e-4)
    report = json.loads(Path(job.artifacts["export_report"]).read_text())
    assert report["output_names"] == ["cls_token", "patch_tokens"] and report["passed"] is True

    with pytest.raises(SpecError, match=r"export\.onnx_file: .* already exists .*export\.overwrite=true"):
        run_job(
            "nvdinov2",
            "export",
            overrides=[f"export.checkpoint={backbone_file}", f"export.onnx_file={target}"],
            workspace=ws,
        )
    # A static batch of 2 at a non-square size: patch grid 3 x 6 of the checkpoint's 16-px patches
    # (neither side a multiple of this job's own default patch_size, 14: the checkpoint decides).
    job = run_job(
        "nvdinov2",
        "export",
        overrides=[
            f"export.checkpoint={backbone_file}",
            f"export.onnx_file={target}",
            "export.overwrite=true",
            "export.batch_size=2",
            "export.input_height=48",
            "export.input_width=96",
        ],
        workspace=ws,
    )
    predictor = OnnxPredictor(target)
    assert predictor.input_shapes["input"] == [2, 3, 48, 96] and job.kpis["onnx_max_abs_diff"] <= 1e-4
    assert predictor.run(torch.randn(2, 3, 48, 96).numpy())["patch_tokens"].shape == (2, 18, DIM)
    with pytest.raises(
        SpecError, match=r"export\.input_width: 100 is not divisible by the checkpoint's patch size 16"
    ):
        run_job(
            "nvdinov2",
            "export",
            overrides=[
                f"export.checkpoint={backbone_file}",
                f"export.onnx_file={target}",
                "export.overwrite=true",
                "export.input_width=100",
            ],
            workspace=ws,
        )


# ------------------------------------------------------------------------------ kinds


def test_full_checkpoint_uses_its_student(backbone_file, ws, tmp_path) -> None:
    from foveal.networks.nvdinov2.checkpoints import load_backbone_file

    full = backbone_file.parent / "model_epoch_001_step_00002.pth"
    a = load_backbone_file(full, key="inference.checkpoint")
    b = load_backbone_file(backbone_file, key="inference.checkpoint")
    assert a.kind == "student" and a.backbone.num_register_tokens == 2
    for key, value in b.backbone.state_dict().items():
        torch.testing.assert_close(a.backbone.state_dict()[key], value)


@pytest.mark.parametrize(
    ("obj", "pattern"),
    [
        (
            {"network": "mae", "stage": "pretrain", "config": {}, "state_dict": {}},
            "is a mae pretrain checkpoint",
        ),
        ({"patch_embed.proj.weight": torch.zeros(1)}, "is not a Foveal checkpoint"),
    ],
)
def test_wrong_kinds_are_one_line(ws, tmp_path, obj, pattern) -> None:
    path = tmp_path / "weights.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=f"export.checkpoint: .*{pattern}.*student_epoch_") as info:
        run_job("nvdinov2", "export", overrides=[f"export.checkpoint={path}"], workspace=ws)
    assert "\n" not in str(info.value)


def test_gen_trt_engine_takes_the_input_size_from_the_onnx_file(tmp_path, monkeypatch) -> None:
    import types

    import onnx
    from onnx import TensorProto, helper

    import foveal.export.tensorrt as tensorrt
    from foveal.networks.nvdinov2.export import gen_trt_engine

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["cls_token"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 48])],
        [helper.make_tensor_value_info("cls_token", TensorProto.FLOAT, ["batch", 3, 32, 48])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    seen = {}
    monkeypatch.setattr(tensorrt, "build_trt_engine", lambda onnx_file, engine, **kw: seen.update(kw) or "ok")
    cfg = _config()
    cfg.gen_trt_engine.onnx_file = str(tmp_path / "m.onnx")
    ctx = types.SimpleNamespace(results_dir=tmp_path)
    result = gen_trt_engine(cfg, ctx)
    assert result.artifacts["trt_engine"].endswith("nvdinov2.engine")
    batches = {k: seen[k] for k in ("min_batch", "opt_batch", "max_batch")}
    profile = tensorrt.plan_profiles(tmp_path / "m.onnx", input_shape=seen["input_shape"], **batches)["input"]
    assert all(list(shape)[1:] == [3, 32, 48] for shape in profile.values())  # the file's own size
    cfg.gen_trt_engine.input_height, cfg.gen_trt_engine.input_width = 64, 64  # explicit sizes win
    gen_trt_engine(cfg, ctx)
    assert seen["input_shape"] == (3, 64, 64)


# ------------------------------------------------------------------------------ TensorRT


def test_evaluate_and_inference_on_a_tensorrt_engine(backbone_file, ws, tmp_path, fake_tensorrt) -> None:
    """export -> gen_trt_engine (the ONNX Runtime-backed fake TensorRT) -> evaluate / inference on
    the engine alone, matching the checkpoint's numbers, and beside it (the agreement report)."""
    onnx_file = tmp_path / "dino.onnx"
    run_job("nvdinov2", "export", overrides=[f"export.checkpoint={backbone_file}", f"export.onnx_file={onnx_file}"],
            workspace=ws)  # fmt: skip
    gen = run_job(
        "nvdinov2", "gen_trt_engine",
        overrides=[f"gen_trt_engine.onnx_file={onnx_file}", "gen_trt_engine.tensorrt.max_batch_size=4"], workspace=ws,
    )  # fmt: skip
    engine = gen.artifacts["trt_engine"]
    common = ["dataset.workers=0", "dataset.batch_size=5", f"dataset.val_dataset.images_dir={_labeled(tmp_path / 'sep', True)}"]
    on_engine = run_job("nvdinov2", "evaluate", overrides=[*common, f"evaluate.trt_engine={engine}"], workspace=ws)
    on_checkpoint = run_job("nvdinov2", "evaluate", overrides=[*common, f"evaluate.checkpoint={backbone_file}"], workspace=ws)
    assert on_engine.kpis == on_checkpoint.kpis
    report = json.loads((Path(on_engine.results_dir) / "results.json").read_text())
    assert report["trt_engine"] == engine and report["input_size"] == 32 and report["backbone"] == "student vit_t"

    images = tmp_path / "images"
    for i in range(5):
        _image(images / f"img_{i}.png", (40 * i, 90, 200 - 30 * i), i)
    overrides = [f"dataset.test_dataset.images_dir={images}", "dataset.workers=0", "inference.batch_size=5"]
    both = run_job("nvdinov2", "inference",
                   overrides=[*overrides, f"inference.trt_engine={engine}", f"inference.checkpoint={backbone_file}"],
                   workspace=ws)  # fmt: skip
    plain = run_job("nvdinov2", "inference", overrides=[*overrides, f"inference.checkpoint={backbone_file}"], workspace=ws)
    np.testing.assert_allclose(np.load(both.artifacts["features"]), np.load(plain.artifacts["features"]), atol=1e-4)
    agreement = json.loads(Path(both.artifacts["tensorrt_vs_pytorch"]).read_text())
    assert agreement["compared"] == "class token" and agreement["within_tolerance"] and agreement["max_abs_diff"] < 1e-4
    assert Path(both.artifacts["pca"]).is_file() and fake_tensorrt["executions"] >= 6  # batches of 5 in chunks of 4

    with pytest.raises(SpecError, match=r"inference\.trt_engine: .* was built from a mae model's ONNX file"):
        mae_engine = tmp_path / "mae.engine"
        mae_engine.write_bytes(Path(engine).read_bytes())
        Path(f"{mae_engine}.json").write_text(json.dumps({"metadata": {"network": "mae"}}))
        run_job("nvdinov2", "inference", overrides=[*overrides, f"inference.trt_engine={mae_engine}"], workspace=ws)
