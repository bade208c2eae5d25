"""Hugging Face weights give the same features in our backbone (tiny random configs, no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from foveal.errors import CheckpointError
from foveal.nn import convert_hf_state_dict, load_hf_folder, vit_from_hf_config
from foveal.nn.pos_embed import build_2d_sincos_pos_embed

pytestmark = pytest.mark.unit

transformers = pytest.importorskip("transformers")

ATOL = 1e-4  # required agreement; observed differences are 0 to ~3e-7 in fp32

CASES = {
    "dinov2_swiglu": (
        "Dinov2Model",
        {
            "model_type": "dinov2",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 7,
            "use_swiglu_ffn": True,
            "layerscale_value": 0.5,
        },
    ),
    "dinov2_mlp": (
        "Dinov2Model",
        {
            "model_type": "dinov2",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
    ),
    "dinov2_registers": (
        "Dinov2WithRegistersModel",
        {
            "model_type": "dinov2_with_registers",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 4,
            "num_register_tokens": 4,
        },
    ),
    "vit_no_qkv_bias": (
        "ViTModel",
        {
            "model_type": "vit",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 48,
            "image_size": 32,
            "patch_size": 8,
            "qkv_bias": False,
        },
    ),
}


def hf_model(class_name: str, config: dict) -> torch.nn.Module:
    """A random HF model whose every parameter is perturbed (norms, LayerScale, tokens included)."""
    if not hasattr(transformers, class_name):
        pytest.skip(f"transformers {transformers.__version__} has no {class_name}")
    model_cls = getattr(transformers, class_name)
    config_cls = getattr(transformers, class_name.replace("Model", "Config"))
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    torch.manual_seed(0)
    model = model_cls(config_cls(**kwargs))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def saved(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def assert_same_features(ours, reference: torch.Tensor, x: torch.Tensor) -> None:
    with torch.no_grad():
        out = ours.forward_features(x)
    first_patch = 1 + ours.num_register_tokens
    assert (out["x_norm_clstoken"] - reference[:, 0]).abs().max() <= ATOL
    if ours.num_register_tokens:
        assert (out["x_norm_regtokens"] - reference[:, 1:first_patch]).abs().max() <= ATOL
    assert out["x_norm_patchtokens"].shape == reference[:, first_patch:].shape
    assert (out["x_norm_patchtokens"] - reference[:, first_patch:]).abs().max() <= ATOL


@pytest.mark.parametrize("case", sorted(CASES))
def test_native_size_matches_hf(case: str, tmp_path: Path) -> None:
    class_name, config = CASES[case]
    hf = hf_model(class_name, config)
    ours, info = load_hf_folder(saved(hf, tmp_path))
    assert info["model_type"] == config["model_type"]
    assert not ours.training
    size = config["image_size"]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = hf(pixel_values=x).last_hidden_state
    assert_same_features(ours, reference, x)


@pytest.mark.parametrize("case", sorted(CASES))
def test_other_size_matches_hf(case: str, tmp_path: Path) -> None:
    """Non-square input: both resample the position table bicubically (registers: anti-aliased)."""
    class_name, config = CASES[case]
    hf = hf_model(class_name, config)
    ours, _ = load_hf_folder(saved(hf, tmp_path))
    patch = config["patch_size"]
    x = torch.randn(2, 3, 6 * patch, 5 * patch)
    extra = {"interpolate_pos_encoding": True} if config["model_type"] == "vit" else {}
    with torch.no_grad():
        reference = hf(pixel_values=x, **extra).last_hidden_state
    assert_same_features(ours, reference, x)


MAE_CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "mask_ratio": 0.0,
}


def test_vit_mae_matches_hf_with_identity_shuffle(tmp_path: Path) -> None:
    """HF ViTMAE shuffles patches by argsort(noise); increasing noise keeps the order."""
    hf = hf_model("ViTMAEModel", {"model_type": "vit_mae", **MAE_CONFIG})
    ours, info = load_hf_folder(saved(hf, tmp_path))
    assert info["missing_keys"] == ["mask_token"]
    assert not ours.pos_embed.requires_grad
    x = torch.randn(2, 3, 32, 32)
    noise = torch.arange(16, dtype=torch.float32).expand(2, -1)
    with torch.no_grad():
        output = hf(pixel_values=x, noise=noise)
    assert torch.equal(output.ids_restore, torch.arange(16).expand(2, -1))
    assert_same_features(ours, output.last_hidden_state, x)


def test_vit_mae_matches_hf_after_unshuffling(tmp_path: Path) -> None:
    """With random noise, HF's tokens are a permutation of ours; ids_restore undoes it."""
    hf = hf_model("ViTMAEModel", {"model_type": "vit_mae", **MAE_CONFIG})
    ours, _ = load_hf_folder(saved(hf, tmp_path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        output = hf(pixel_values=x, noise=torch.rand(2, 16))
    shuffled = output.last_hidden_state
    index = output.ids_restore.unsqueeze(-1).expand(-1, -1, shuffled.shape[-1])
    unshuffled = torch.cat([shuffled[:, :1], torch.gather(shuffled[:, 1:], 1, index)], dim=1)
    assert not torch.allclose(unshuffled, shuffled)
    assert_same_features(ours, unshuffled, x)


def mae_reference_sincos(dim: int, grid: int) -> np.ndarray:
    """MAE's ``get_2d_sincos_pos_embed`` (util/pos_embed.py): numpy, w coordinate first."""

    def one_axis(half: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(half // 2, dtype=np.float64) / (half / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    coords = np.stack(np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)))
    table = np.concatenate([one_axis(dim // 2, coords[0]), one_axis(dim // 2, coords[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), table], axis=0)


def test_sincos_table_matches_mae() -> None:
    expected = torch.from_numpy(mae_reference_sincos(32, 4)).float().unsqueeze(0)
    torch.testing.assert_close(build_2d_sincos_pos_embed(4, 4, 32), expected, rtol=0, atol=1e-6)
    ours = vit_from_hf_config({"model_type": "vit_mae", **MAE_CONFIG})
    torch.testing.assert_close(ours.pos_embed.detach(), expected, rtol=0, atol=1e-6)


def test_in_memory_keys_and_pytorch_bin(tmp_path: Path) -> None:
    """transformers >= 5 renames keys in memory (q_proj, gate_proj/up_proj); a .bin holds them."""
    class_name, config = CASES["dinov2_swiglu"]
    hf = hf_model(class_name, config)
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours, info = load_hf_folder(tmp_path)
    assert info["weights_file"].endswith("pytorch_model.bin")
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        reference = hf(pixel_values=x).last_hidden_state
    assert_same_features(ours, reference, x)


def test_task_model_prefix_and_head_are_handled(tmp_path: Path) -> None:
    _, config = CASES["dinov2_mlp"]
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    torch.manual_seed(0)
    hf = transformers.Dinov2ForImageClassification(transformers.Dinov2Config(num_labels=3, **kwargs)).eval()
    ours, info = load_hf_folder(saved(hf, tmp_path))
    assert any(k.startswith("classifier.") for k in info["dropped_keys"])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        reference = hf.dinov2(pixel_values=x).last_hidden_state
    assert_same_features(ours, reference, x)


def test_config_translation() -> None:
    vit = vit_from_hf_config(
        {
            "model_type": "vit",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 40,
            "image_size": 16,
            "patch_size": 8,
        }
    )
    assert vit.blocks[0].norm1.eps == 1e-12  # HF ViT default
    assert vit.blocks[0].mlp.fc1.out_features == 40
    assert isinstance(vit.blocks[0].ls1, torch.nn.Identity)
    dinov2 = vit_from_hf_config(
        {
            "model_type": "dinov2",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 14,
            "patch_size": 7,
            "layerscale_value": 0.1,
        }
    )
    assert dinov2.blocks[0].norm1.eps == 1e-6
    assert torch.allclose(dinov2.blocks[0].ls2.gamma, torch.full((32,), 0.1))
    with pytest.raises(ValueError, match="unsupported"):
        vit_from_hf_config(
            {"model_type": "swin", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
        )


def test_unrecognised_keys_fail_loudly(tmp_path: Path) -> None:
    state = {
        "embeddings.cls_token": torch.zeros(1, 1, 8),
        "encoder.layer.0.attention.attention.rope.weight": torch.zeros(8),
    }
    with pytest.raises(ValueError, match="unrecognised"):
        convert_hf_state_dict(state, "dinov2")
    with pytest.raises(ValueError, match="unsupported"):
        convert_hf_state_dict(state, "beit")
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "vit", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2})
    )
    with pytest.raises(CheckpointError):
        load_hf_folder(tmp_path)
