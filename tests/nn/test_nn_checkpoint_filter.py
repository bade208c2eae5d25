"""checkpoint_filter_fn: prefixes, nesting, teacher/student, HF layout, position-table resampling."""

from __future__ import annotations

import logging

import pytest
import torch

from foveal.nn import checkpoint_filter_fn, create_backbone
from foveal.nn.checkpoint_filter import COMMON_PREFIXES
from foveal.nn.convert_hf import convert_hf_state_dict

pytestmark = pytest.mark.unit


def tiny(**overrides):
    torch.manual_seed(0)
    kwargs = {"depth": 2, "embed_dim": 48, "num_heads": 3, "img_size": 28}
    kwargs.update(overrides)
    return create_backbone("vit_t", **kwargs).eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("prefix", ["", *COMMON_PREFIXES, "module.backbone."])
def test_prefixes_are_stripped(prefix: str) -> None:
    source, target = tiny(), tiny()
    torch.nn.init.normal_(source.cls_token)
    state = {prefix + k: v for k, v in source.state_dict().items()}
    state[prefix.split(".")[0] + ".head_not_ours.weight" if prefix else "dino_head.weight"] = torch.zeros(3)
    target.load_state_dict(checkpoint_filter_fn(state, target))
    assert same_weights(source, target)


def test_teacher_preferred_and_training_checkpoint_unwrapped() -> None:
    teacher, student, target = tiny(), tiny(), tiny()
    torch.nn.init.normal_(teacher.cls_token)
    torch.nn.init.normal_(student.cls_token)
    weights = {f"student.backbone.{k}": v for k, v in student.state_dict().items()}
    weights.update({f"teacher.backbone.{k}": v for k, v in teacher.state_dict().items()})
    checkpoint = {"model": weights, "optimizer": {"state": {}}, "iteration": 10}
    target.load_state_dict(checkpoint_filter_fn(checkpoint, target))
    assert same_weights(teacher, target)


def test_pos_embed_resampled_to_the_model_grid() -> None:
    source, target = tiny(img_size=28), tiny(img_size=56)
    filtered = checkpoint_filter_fn(source.state_dict(), target)
    assert filtered["pos_embed"].shape == target.pos_embed.shape
    torch.testing.assert_close(filtered["pos_embed"][:, :1], source.pos_embed[:, :1])
    torch.testing.assert_close(filtered["pos_embed"][:, 1:], source.patch_pos_embed(4, 4))
    target.load_state_dict(filtered)
    # Without a class entry (timm no_embed_class): the class position becomes zero.
    no_cls = {**source.state_dict(), "pos_embed": source.pos_embed[:, 1:]}
    assert torch.all(checkpoint_filter_fn(no_cls, target)["pos_embed"][:, 0] == 0)


def test_mae_pretraining_checkpoint(caplog: pytest.LogCaptureFixture) -> None:
    """MAE's decoder (including its (1, 1, D_dec) mask token) is dropped; the encoder loads."""
    source, target = tiny(), tiny()
    state = {k: v for k, v in source.state_dict().items() if k != "mask_token"}
    state.update({"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.zeros(16, 48)})
    with caplog.at_level(logging.DEBUG, logger="foveal.nn"):
        filtered = checkpoint_filter_fn({"model": state, "epoch": 3}, target)
    # a key the model lacks (the decoder) is expected: debug; one of another shape is a warning
    (absent,) = [r for r in caplog.records if "does not have" in r.message]
    (misfit,) = [r for r in caplog.records if "of another shape" in r.message]
    assert absent.levelno == logging.DEBUG and "decoder_embed.weight" in absent.message
    assert misfit.levelno == logging.WARNING and "mask_token" in misfit.message
    result = target.load_state_dict(filtered, strict=False)
    assert result.missing_keys == ["mask_token"] and not result.unexpected_keys


def test_hf_layout_and_dinov2_block_chunks() -> None:
    source, target = tiny(), tiny()
    chunked = {
        (
            k.replace("blocks.", "blocks.0.", 1)
            if k.startswith("blocks.0.")
            else k.replace("blocks.1.", "blocks.1.1.", 1)
        ): v
        for k, v in source.state_dict().items()
    }
    target.load_state_dict(checkpoint_filter_fn(chunked, target))
    assert same_weights(source, target)

    hf_state = {
        "embeddings.cls_token": source.cls_token.detach(),
        "embeddings.position_embeddings": source.pos_embed.detach(),
    }
    hf_state["embeddings.patch_embeddings.projection.weight"] = source.patch_embed.proj.weight.detach()
    filtered = checkpoint_filter_fn({f"backbone.{k}": v for k, v in hf_state.items()}, target)
    assert (
        filtered.keys()
        == convert_hf_state_dict(hf_state, "dinov2").keys()
        == {"cls_token", "pos_embed", "patch_embed.proj.weight"}
    )


def test_no_vit_in_checkpoint_is_an_error() -> None:
    with pytest.raises(ValueError, match="patch embedding"):
        checkpoint_filter_fn({"conv1.weight": torch.zeros(1)}, tiny())
