"""nvdinov2 pretrained weights: HF Dinov2 folders, reference DINOv2 .pth layouts, foveal files,
and one-line errors for files of the wrong kind or size."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from foveal.engine import CheckpointError
from foveal.networks.nvdinov2.pretrained import load_backbone_weights
from foveal.nn import VisionTransformer
from foveal.nn.registry import create_backbone

TINY = {"img_size": 28, "patch_size": 14, "embed_dim": 32, "depth": 2, "num_heads": 2, "init_values": 1e-5}


def _tiny(**overrides) -> VisionTransformer:
    return VisionTransformer(**{**TINY, **overrides}).eval()


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every tensor random (zero-initialised mask token, LayerScale, biases included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def _images(batch: int = 2, size: int = 28) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _features(model: VisionTransformer, images: torch.Tensor) -> dict:
    with torch.no_grad():
        return model.forward_features(images)


# ------------------------------------------------------------------------------ Hugging Face


@pytest.mark.parametrize("registers", [0, 4])
def test_hf_dinov2_folder_gives_identical_features(tmp_path: Path, registers: int) -> None:
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    common = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 14,
        "layerscale_value": 0.5,
    }
    torch.manual_seed(0)
    if registers:
        hf = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**common, num_register_tokens=registers))
    else:
        hf = Dinov2Model(Dinov2Config(**common))
    hf = _randomise(hf).eval()
    hf.save_pretrained(tmp_path / "hf")

    ours = _tiny(num_register_tokens=registers)
    line = load_backbone_weights(ours, tmp_path / "hf")
    assert "Hugging Face" in line and "\n" not in line

    images = _images()
    with torch.no_grad():
        expected = hf(pixel_values=images)
    got = _features(ours, images)
    hidden = expected.last_hidden_state
    torch.testing.assert_close(got["x_norm_clstoken"], hidden[:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(got["x_norm_clstoken"], expected.pooler_output, atol=1e-4, rtol=0)
    torch.testing.assert_close(got["x_norm_regtokens"], hidden[:, 1 : 1 + registers], atol=1e-4, rtol=0)
    torch.testing.assert_close(got["x_norm_patchtokens"], hidden[:, 1 + registers :], atol=1e-4, rtol=0)


def test_hf_folder_of_another_model_type_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "vit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(CheckpointError, match="Hugging Face 'vit' folder.*Dinov2Model") as info:
        load_backbone_weights(_tiny(), folder)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ reference DINOv2


def _reference_layout(state: dict[str, torch.Tensor], chunks: int, depth: int) -> dict[str, torch.Tensor]:
    """Our keys renamed to facebookresearch/dinov2's ``block_chunks`` layout (blocks.C.N.*)."""
    if chunks == 0:
        return dict(state)
    per_chunk = depth // chunks
    out = {}
    for key, value in state.items():
        match = re.match(r"blocks\.(\d+)\.(.*)", key)
        if match:
            index = int(match.group(1))
            key = f"blocks.{index // per_chunk}.{index}.{match.group(2)}"
        out[key] = value
    return out


@pytest.mark.parametrize(
    ("chunks", "registers", "wrap"),
    [(0, 0, "bare"), (2, 0, "teacher"), (2, 4, "model"), (1, 4, "bare")],
)
def test_reference_dinov2_pth_gives_identical_features(tmp_path: Path, chunks, registers, wrap) -> None:
    source = _randomise(_tiny(num_register_tokens=registers))
    state = _reference_layout(source.state_dict(), chunks, TINY["depth"])
    if wrap == "teacher":  # DINOv2's eval checkpoints: {"teacher": {"backbone.*", "dino_head.*"}}
        obj = {"teacher": {**{f"backbone.{k}": v for k, v in state.items()}, "dino_head.w": torch.ones(3)}}
    elif wrap == "model":  # DINOv2's training checkpoints: student and teacher side by side
        noise = {f"student.backbone.{k}": torch.zeros_like(v) for k, v in state.items()}
        obj = {"model": {**noise, **{f"teacher.backbone.{k}": v for k, v in state.items()}}, "iteration": 5}
    else:
        obj = state
    path = tmp_path / "dinov2.pth"
    torch.save(obj, path)

    target = _tiny(num_register_tokens=registers)
    line = load_backbone_weights(target, path)
    assert "reference DINOv2" in line
    images = _images()
    for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_norm_regtokens"):
        torch.testing.assert_close(_features(target, images)[key], _features(source, images)[key])


def test_reference_pth_position_table_is_resampled(tmp_path: Path) -> None:
    source = _randomise(_tiny())  # 2 x 2 grid
    torch.save(source.state_dict(), tmp_path / "small.pth")
    target = _tiny(img_size=56)  # 4 x 4 grid
    load_backbone_weights(target, tmp_path / "small.pth")
    assert target.pos_embed.shape == (1, 1 + 16, 32)
    torch.testing.assert_close(target.pos_embed[:, :1], source.pos_embed[:, :1])
    # Same table at the source grid: the resampled one at 28 px equals the original's features.
    images = _images()
    torch.testing.assert_close(
        _features(target, images)["x_norm_clstoken"],
        _features(source, images)["x_norm_clstoken"],
        atol=1e-4,
        rtol=0,
    )


# ------------------------------------------------------------------------------ foveal files


def test_foveal_backbone_file_and_full_checkpoint(tmp_path: Path) -> None:
    student, teacher = _randomise(_tiny(), seed=1), _randomise(_tiny(), seed=2)
    header = {"network": "nvdinov2", "arch": "vit_t", "config": {}, "epoch": 1, "step": 4}
    torch.save({**header, "kind": "student", "state_dict": student.state_dict()}, tmp_path / "student.pth")
    full = {f"student.backbone.{k}": v for k, v in student.state_dict().items()}
    full |= {f"teacher.backbone.{k}": v for k, v in teacher.state_dict().items()}
    full["student.dino_head.last_layer.weight"] = torch.ones(4, 4)
    torch.save({**header, "kind": "full", "state_dict": full}, tmp_path / "model_epoch_001_step_00004.pth")
    images = _images()

    target = _tiny()
    assert "nvdinov2 student backbone" in load_backbone_weights(target, tmp_path / "student.pth")
    torch.testing.assert_close(
        _features(target, images)["x_norm_clstoken"], _features(student, images)["x_norm_clstoken"]
    )
    for which, source in (("student", student), ("teacher", teacher)):
        target = _tiny()
        line = load_backbone_weights(target, tmp_path / "model_epoch_001_step_00004.pth", which=which)
        assert f"({which} backbone)" in line
        torch.testing.assert_close(
            _features(target, images)["x_norm_patchtokens"], _features(source, images)["x_norm_patchtokens"]
        )


# ------------------------------------------------------------------------------ wrong kinds


def _fake_vit(dim: int, depth: int, patch: int = 14, registers: int = 0) -> dict[str, torch.Tensor]:
    state = {"patch_embed.proj.weight": torch.zeros(dim, 3, patch, patch)}
    state |= {f"blocks.{i}.norm1.weight": torch.zeros(dim) for i in range(depth)}
    if registers:
        state["register_tokens"] = torch.zeros(1, registers, dim)
    return state


@pytest.mark.parametrize(
    ("obj", "pattern"),
    [
        (
            {"network": "mae", "stage": "pretrain", "config": {}, "state_dict": {"x": torch.ones(1)}},
            "foveal mae pretrain",
        ),
        (
            {"network": "classification", "config": {}, "state_dict": {"x": torch.ones(1)}},
            "foveal classification",
        ),
        ({"fc.weight": torch.ones(2, 2)}, "holds no ViT backbone"),
        (_fake_vit(384, 12), "holds a vit_s/14 backbone but the model is vit_t/14; pass a vit_t file"),
        (_fake_vit(192, 12, patch=16), "patch size 16 but model.backbone.patch_size=14"),
        (_fake_vit(192, 12, registers=4), "4 register tokens.*num_register_tokens=4"),
        (
            {"network": "nvdinov2", "kind": "full", "config": {}, "state_dict": _fake_vit(192, 1)},
            "without a student backbone",
        ),
    ],
)
def test_wrong_files_are_one_line_errors(tmp_path: Path, obj, pattern) -> None:
    path = tmp_path / "weights.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_backbone_weights(create_backbone("vit_t", img_size=28), path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    assert str(path) in message


def test_missing_file_and_incomplete_backbone(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found; pass"):
        load_backbone_weights(_tiny(), tmp_path / "nope.pth")
    state = _randomise(_tiny()).state_dict()
    del state["blocks.1.attn.qkv.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="lacks 1 of .*blocks.1.attn.qkv.weight"):
        load_backbone_weights(_tiny(), tmp_path / "partial.pth")
