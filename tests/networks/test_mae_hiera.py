"""mae with Hiera archs: the pretraining model against transformers' HieraForPreTraining, a training
step, pretrain -> finetune weight handoff (files and jobs), fine-tuning, ONNX export, spec checks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers.models.hiera")

from foveal.networks.mae import models  # noqa: E402
from foveal.networks.mae.checkpoints import load_finetune_start, load_pretrain_start  # noqa: E402
from foveal.networks.mae.config import ARCHS, MAEConfig, resolve  # noqa: E402
from foveal.networks.mae.mae_hiera import MaskedAutoencoderHiera  # noqa: E402
from foveal.networks.mae.models import build_finetune_model, build_pretrain_model  # noqa: E402
from foveal.spec import SpecError  # noqa: E402

pytestmark = pytest.mark.unit

# Full width and depth are tested in tests/nn/test_nn_hiera.py (parameter counts); here four
# one-block stages, 8 -> 64 channels, at the only input size, 224.
TINY = {"embed_dim": 8, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
SIZE = 224


def _model_cfg(arch: str = "hiera_tiny_224") -> SimpleNamespace:
    return SimpleNamespace(
        arch=arch, drop_path_rate=0.1, decoder_depth=1, decoder_embed_dim=16, global_pool=True
    )


def _pretrain(mask_ratio: float = 0.75) -> MaskedAutoencoderHiera:
    torch.manual_seed(0)
    model = build_pretrain_model(
        _model_cfg(), img_size=SIZE, mask_ratio=mask_ratio, norm_pix_loss=True, **TINY
    )
    assert isinstance(model, MaskedAutoencoderHiera)
    return model


def _images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_tao_hiera_archs_are_valid_options():
    assert {f"hiera_{s}_224" for s in ("tiny", "small", "base", "large", "huge")} <= set(ARCHS)
    assert "hiera_base_plus_224" not in ARCHS  # a registered backbone, but not one of TAO's MAE archs


def test_pretraining_model_matches_hugging_face():
    """Same weights and noise as transformers' HieraForPreTraining: same loss, predictions, mask."""
    from transformers import HieraForPreTraining

    model = _pretrain().eval()
    reference = HieraForPreTraining(model.config).eval()
    state = {("encoder." + k if k.startswith("hiera.") else k): v for k, v in reference.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) == {
        f"encoder.hiera.pooler.layernorm.{p}" for p in ("weight", "bias")
    }
    x, noise = _images(), torch.rand(2, 49, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss, out = model(x, noise=noise)
        expected = reference(pixel_values=x, noise=noise)
    torch.testing.assert_close(loss, expected.loss)
    torch.testing.assert_close(out["pred"], expected.logits)
    assert torch.equal(out["mask"].bool(), ~expected.bool_masked_pos)


def test_training_step_masks_units_and_reaches_every_parameter():
    model = _pretrain(mask_ratio=0.75).train()
    loss, out = model(_images())
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    # 49 mask units of 32x32 px; 12 kept at 0.75 (TAO's default); 14x14 predicted 16x16 patches.
    assert out["visible_units"].sum(dim=1).tolist() == [12, 12]
    assert out["pred"].shape == (2, 196, 16 * 16 * 3) and out["mask"].sum(dim=1).tolist() == [148.0, 148.0]
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused  # DDP needs no find_unused_parameters
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert not model.encoder.norm.weight.requires_grad  # the pooled feature's norm is not trained here
    # train.mask_ratio reaches the masking, per call too
    with torch.no_grad():
        _, half = model(_images(), mask_ratio=0.5)
    assert half["visible_units"].sum(dim=1).tolist() == [24, 24]


def test_reconstruction_grid_reads_the_hiera_layout():
    from foveal.networks.mae.visualize import reconstruct

    model = _pretrain().eval()
    images = _images()
    pixel_mask, recon = reconstruct(model, images)
    assert pixel_mask.shape == (2, 1, SIZE, SIZE)
    assert pixel_mask.mean().item() == pytest.approx(148 / 196)
    visible = pixel_mask.expand_as(images) == 0
    assert torch.equal(recon[visible], images[visible])
    assert torch.equal(model.unpatchify(model.patchify(images)), images)


def _save_pretrain_checkpoint(path: Path, model: torch.nn.Module) -> None:
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    config = {"model": {"arch": "hiera_tiny_224"}, "train": {"stage": "pretrain"}}
    torch.save({"network": "mae", "stage": "pretrain", "config": config, "state_dict": state}, path)


def test_pretrain_checkpoint_starts_finetuning_and_more_pretraining(tmp_path):
    pretrain = _pretrain()
    _save_pretrain_checkpoint(tmp_path / "pre.pth", pretrain)
    classifier = build_finetune_model(_model_cfg(), 3, SIZE, **TINY)
    assert classifier.backbone.config.num_query_pool == 3  # 7x7 final grid; pretraining used 2
    message = load_finetune_start(classifier, tmp_path / "pre.pth", "hiera_tiny_224")
    assert "foveal mae pretrain checkpoint" in message
    encoder = pretrain.encoder.state_dict()
    tuned = classifier.backbone.state_dict()
    assert set(tuned) == set(encoder)
    for key, value in tuned.items():
        assert torch.equal(value, encoder[key]), key

    more = build_pretrain_model(_model_cfg(), img_size=SIZE, mask_ratio=0.75, norm_pix_loss=True, **TINY)
    assert "mae pretrain checkpoint" in load_pretrain_start(more, tmp_path / "pre.pth", "hiera_tiny_224")
    for key, value in more.state_dict().items():
        assert torch.equal(value, pretrain.state_dict()[key]), key


def test_finetune_forward_backward_and_onnx_export(tmp_path):
    from foveal.export import OnnxPredictor, export_onnx

    classifier = build_finetune_model(_model_cfg(), 3, SIZE, **TINY)
    logits = classifier(_images())
    logits.logsumexp(dim=1).mean().backward()
    assert logits.shape == (2, 3)
    assert all(p.grad is not None for p in classifier.parameters())
    report = export_onnx(
        classifier.eval(),
        _images(),
        tmp_path / "hiera.onnx",
        input_names=("input",),
        output_names=("logits",),
    )
    assert report.passed and max(report.max_abs_diff.values()) <= 1e-4
    predictor = OnnxPredictor(tmp_path / "hiera.onnx")
    assert predictor.input_shapes["input"] == ["batch", 3, SIZE, SIZE]
    x = _images(3, seed=5)
    with torch.no_grad():
        expected = classifier(x).numpy()
    assert abs(predictor.run(x.numpy())["logits"] - expected).max() <= 1e-4


@pytest.mark.parametrize("size", [192, 256])
def test_resolve_wants_224_for_hiera(size):
    cfg = MAEConfig()
    cfg.model.arch = "hiera_base_224"
    cfg.dataset.augmentation.input_size = size
    with pytest.raises(SpecError) as info:
        resolve(cfg)
    assert len(info.value.issues) == 1 and "\n" not in str(info.value)
    assert str(info.value.issues[0]).startswith(
        f"dataset.augmentation.input_size: {size}, but hiera_base_224 takes 224x224 images only"
    )
    cfg.dataset.augmentation.input_size = SIZE
    resolve(cfg)


# ------------------------------------------------------------------------------ as jobs


@pytest.fixture(scope="module")
def hiera_jobs(tmp_path_factory):
    """pretrain (1 epoch) -> finetune (--parent, 1 epoch) of a tiny Hiera, as jobs."""
    from foveal.data.synthetic import make_demo_dataset
    from foveal.jobs import Workspace
    from foveal.jobs.lifecycle import run_job

    data = make_demo_dataset(
        tmp_path_factory.mktemp("shapes"),
        num_train=16,
        num_val=0,
        num_test=0,
        image_size=32,
        num_classes=2,
        num_workers=1,
    )
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    common = [
        "model.arch=hiera_tiny_224",
        "model.decoder_embed_dim=16",
        "model.decoder_depth=1",
        "dataset.batch_size=8",
        "dataset.num_workers_per_gpu=0",
        "train.num_epochs=1",
        "train.optim.warmup_epochs=0",
    ]
    real = models.create_backbone
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "create_backbone", lambda name, **kw: real(name, **{**kw, **TINY}))
        pretrain = run_job(
            "mae",
            "train",
            overrides=[*common, f"dataset.train_data_sources={data['images_train']}"],
            workspace=ws,
        )
        finetune = run_job(
            "mae",
            "train",
            parent_id=pretrain.id,
            overrides=[
                *common,
                "train.stage=finetune",
                f"dataset.train_data_sources={data['labeled_train']}",
            ],
            workspace=ws,
        )
        yield SimpleNamespace(pretrain=pretrain, finetune=finetune, ws=ws, run_job=run_job, data=data)


@pytest.mark.integration
def test_jobs_pretrain_finetune_and_export(hiera_jobs, tmp_path):
    from foveal.engine import load_checkpoint
    from foveal.jobs import JobStatus

    pretrain, finetune = hiera_jobs.pretrain, hiera_jobs.finetune
    assert pretrain.status is JobStatus.DONE and finetune.status is JobStatus.DONE
    log = (Path(finetune.results_dir) / "logs" / "train.log").read_text()
    assert "foveal mae pretrain checkpoint" in log and "backbone tensors not in" not in log
    tuned = load_checkpoint(Path(finetune.results_dir) / "hiera_tiny_224_latest.pth", network="mae")
    assert tuned["stage"] == "finetune"
    assert any(k.startswith("model.backbone.hiera.encoder.stages.3.") for k in tuned["state_dict"])

    with pytest.raises(
        SpecError, match=r"export\.input_width: 256, but hiera_tiny_224 takes 224x224"
    ) as info:
        hiera_jobs.run_job(
            "mae",
            "export",
            parent_id=finetune.id,
            overrides=["export.input_width=256"],
            workspace=hiera_jobs.ws,
        )
    assert "\n" not in str(info.value)
    target = tmp_path / "hiera.onnx"
    exp = hiera_jobs.run_job(
        "mae",
        "export",
        parent_id=pretrain.id,
        overrides=[f"export.onnx_file={target}"],
        workspace=hiera_jobs.ws,
    )
    assert exp.kpis["onnx_max_abs_diff"] <= 1e-4
    from foveal.export import OnnxPredictor

    out = OnnxPredictor(target).run(_images(1).numpy())
    assert out["embedding"].shape == (1, 64) and out["feature_map"].shape == (1, 64, 14, 14)

    inference = hiera_jobs.run_job(
        "mae",
        "inference",
        parent_id=pretrain.id,
        overrides=[f"dataset.test_data_sources={hiera_jobs.data['images_train']}"],
        workspace=hiera_jobs.ws,
    )
    from PIL import Image
    from safetensors.torch import load_file

    assert load_file(inference.artifacts["embeddings"])["embedding"].shape == (16, 64)
    grid = Image.open(inference.artifacts["reconstruction"])  # 8 rows of original | masked | reconstruction
    assert grid.width > 3 * SIZE and grid.height > 8 * SIZE
