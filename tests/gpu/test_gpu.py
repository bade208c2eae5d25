"""What only a CUDA device can check (``pytest -m gpu``; skipped without one, run by
bench/device_check.sh on the device machine): bf16 autocast, SDPA's fused kernels, fused AdamW,
DDP on one GPU, torch.compile, save -> resume on CUDA, export from a CUDA-trained checkpoint and a
TensorRT engine against ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TINY_MAE = [
    "model.arch=vit_tiny_patch16",
    "model.decoder_embed_dim=64",
    "dataset.augmentation.input_size=64",
    "dataset.batch_size=16",
    "dataset.num_workers_per_gpu=2",
    "train.num_gpus=1",
]


def _mae(img: int = 64) -> torch.nn.Module:
    from foveal.networks.mae.models import build_pretrain_model

    cfg = SimpleNamespace(arch="vit_tiny_patch16", drop_path_rate=0.0, decoder_embed_dim=64, decoder_depth=2)
    return build_pretrain_model(cfg, img_size=img, mask_ratio=0.75, norm_pix_loss=True).cuda()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict:
    from foveal.data.synthetic import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("gpu-shapes"), num_train=64, num_val=16, num_test=8,
                             image_size=64, num_classes=2, archives=False)  # fmt: skip


def test_bf16_autocast_step_matches_fp32():
    """Finite, and within 2% of the fp32 loss on the same batch, weights and mask noise."""
    torch.manual_seed(0)
    model = _mae()
    x = torch.randn(8, 3, 64, 64, device="cuda")
    noise = torch.rand(8, 16, device="cuda")
    loss32, _ = model(x, noise=noise)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss16, _ = model(x, noise=noise)
    loss16.backward()
    assert torch.isfinite(loss16) and abs(float(loss16) - float(loss32)) <= 0.02 * abs(float(loss32))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_sdpa_runs_on_the_flash_or_memory_efficient_kernel():
    """Only the fused backends are allowed: the math fallback would raise."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = _mae()
    x = torch.randn(8, 3, 64, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        loss, _ = model(x)
    assert torch.isfinite(loss)


def test_pretraining_uses_fused_adamw_on_cuda():
    from foveal.networks.mae.config import MAEConfig
    from foveal.networks.mae.module import MAEPretrainModule, optim_settings_from_mae

    module = MAEPretrainModule(_mae(), optim_settings_from_mae(MAEConfig().train.optim, stage="pretrain"),
                               steps_per_epoch=10, arch="vit_tiny_patch16")  # fmt: skip
    module.trainer = SimpleNamespace(estimated_stepping_batches=10)  # type: ignore[assignment]
    out = module.configure_optimizers()
    optimizer = out["optimizer"] if isinstance(out, dict) else out[0][0] if isinstance(out, tuple) else out
    assert optimizer.defaults.get("fused") is True


def _train(ws: Path, shapes: dict, *extra: str):
    from foveal.jobs import Workspace
    from foveal.jobs.lifecycle import run_job

    return run_job("mae", "train", workspace=Workspace(ws),
                   overrides=[*TINY_MAE, f"dataset.train_data_sources={shapes['images_train']}", *extra])  # fmt: skip


def test_ddp_on_one_gpu_and_bf16(tmp_path, shapes):
    job = _train(tmp_path, shapes, "train.num_epochs=1", "train.distributed_strategy=ddp", "train.precision=bf16")
    assert job.status.value == "Done" and job.kpis["train_loss"] > 0


def test_save_then_resume_on_cuda_and_export_from_it(tmp_path, shapes):
    first = _train(tmp_path, shapes, "train.num_epochs=1")
    results = Path(first.results_dir)
    again = _train(tmp_path / "second", shapes, "train.num_epochs=2",
                   f"train.resume_training_checkpoint_path={results}")  # fmt: skip
    assert again.status.value == "Done"
    assert sorted(p.name for p in Path(again.results_dir).glob("model_epoch_*.pth"))[-1].startswith("model_epoch_002")
    from foveal.jobs import Workspace
    from foveal.jobs.lifecycle import run_job

    export = run_job("mae", "export", parent_id=again.id, workspace=Workspace(tmp_path / "second"))
    assert export.kpis["onnx_max_abs_diff"] <= 1e-4


def test_nvdinov2_torch_compile_option(tmp_path, shapes):
    from foveal.jobs import Workspace
    from foveal.jobs.lifecycle import run_job

    job = run_job("nvdinov2", "train", workspace=Workspace(tmp_path), overrides=[
        "model.backbone.teacher_type=vit_t", "model.backbone.student_type=vit_t", "model.backbone.patch_size=16",
        "model.backbone.img_size=64", "model.head.hidden_dim=64", "model.head.bottleneck_dim=32",
        "dataset.batch_size=8", "dataset.workers=2", "dataset.transform.global_crops_size=64",
        "dataset.transform.local_crops_size=32", "dataset.transform.n_local_crops=2", "train.num_epochs=1",
        "train.num_prototypes=256", "train.precision=bf16", "train.torch_compile=true",
        f"dataset.train_dataset.images_dir={shapes['images_train']}"])  # fmt: skip
    assert job.status.value == "Done" and job.kpis["train_loss"] > 0


def test_tensorrt_engine_agrees_with_onnx_runtime(tmp_path, shapes):
    pytest.importorskip("tensorrt")
    from foveal.jobs import Workspace
    from foveal.jobs.lifecycle import run_job

    trained = _train(tmp_path, shapes, "train.num_epochs=1")
    exported = run_job("mae", "export", parent_id=trained.id, workspace=Workspace(tmp_path))
    engine = run_job("mae", "gen_trt_engine", parent_id=exported.id, workspace=Workspace(tmp_path),
                     overrides=["gen_trt_engine.tensorrt.data_type=fp32"])  # fmt: skip
    assert engine.status.value == "Done", engine.message

    # the engine in place of the checkpoint, the checkpoint beside it: agreement within the
    # stated tolerance (fp32: 1e-4, fp16: 2e-2 relative; foveal.export.trt_runtime.TOLERANCES)
    import json

    for data_type in ("fp32", "fp16"):
        if data_type == "fp16":
            engine = run_job("mae", "gen_trt_engine", parent_id=exported.id, workspace=Workspace(tmp_path), new=True,
                             overrides=["gen_trt_engine.tensorrt.data_type=fp16"])  # fmt: skip
        inferred = run_job("mae", "inference", parent_id=trained.id, workspace=Workspace(tmp_path), new=True,
                           overrides=[f"dataset.test_data_sources={shapes['images_test']}",
                                      f"inference.trt_engine={engine.artifacts['trt_engine']}"])  # fmt: skip
        report = json.loads(Path(inferred.artifacts["tensorrt_vs_pytorch"]).read_text())
        assert report["data_type"] == data_type and report["within_tolerance"], report


def test_classification_int8_engine_calibrates_then_evaluates(tmp_path, shapes):
    """INT8 from tensorrt.calibration (images, then the cache alone), evaluate on the engine with
    the checkpoint beside it: the top-1 agreement is reported (int8 has no stated tolerance)."""
    pytest.importorskip("tensorrt")
    import json

    from foveal.jobs import Workspace
    from foveal.jobs.lifecycle import run_job

    ws = Workspace(tmp_path)
    common = ["model.backbone.type=vit_tiny_patch16", "dataset.img_size=64", "dataset.batch_size=16",
              "dataset.workers=2", "model.backbone.pretrained_backbone_path=null", "dataset.num_classes=0"]  # fmt: skip
    trained = run_job("classification", "train", workspace=ws, overrides=[
        *common, "train.num_epochs=1", f"dataset.train_dataset.images_dir={shapes['labeled_train']}"])  # fmt: skip
    exported = run_job("classification", "export", parent_id=trained.id, workspace=ws)
    cache = tmp_path / "cal.bin"
    calibration = [
        "gen_trt_engine.tensorrt.data_type=int8", "gen_trt_engine.tensorrt.max_batch_size=8",
        f"gen_trt_engine.tensorrt.calibration.cal_image_dir=[{shapes['images_train']}]",
        f"gen_trt_engine.tensorrt.calibration.cal_cache_file={cache}",
        "gen_trt_engine.tensorrt.calibration.cal_batch_size=4", "gen_trt_engine.tensorrt.calibration.cal_batches=2",
    ]  # fmt: skip
    engine = run_job("classification", "gen_trt_engine", parent_id=exported.id, workspace=ws, overrides=calibration)
    assert engine.status.value == "Done" and cache.is_file() and cache.stat().st_size > 0
    again = run_job("classification", "gen_trt_engine", parent_id=exported.id, workspace=ws, new=True,
                    overrides=[*calibration[:-3], f"gen_trt_engine.tensorrt.calibration.cal_cache_file={cache}"])  # fmt: skip
    assert again.status.value == "Done"  # from the cache alone
    evaluated = run_job("classification", "evaluate", parent_id=trained.id, workspace=ws, overrides=[
        f"dataset.val_dataset.images_dir={shapes['labeled_val']}",
        f"evaluate.trt_engine={engine.artifacts['trt_engine']}"])  # fmt: skip
    report = json.loads((Path(evaluated.results_dir) / "results.json").read_text())["tensorrt_vs_pytorch"]
    assert report["data_type"] == "int8" and report["within_tolerance"] is None and report["top1_agreement"] >= 0.5
