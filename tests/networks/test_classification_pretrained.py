"""classification: starting from pretrained weights of every supported kind, and the mismatch errors."""

from __future__ import annotations

import logging

import pytest
import torch

from foveal.engine import CheckpointError, save_checkpoint_atomic, save_weights_only
from foveal.engine.pretrained import load_pretrained, read_pretrained
from foveal.nn import VisionTransformer
from foveal.nn.classifier import Classifier

pytestmark = pytest.mark.unit

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _vit(img_size: int = 32, **kw) -> VisionTransformer:
    return VisionTransformer(img_size=img_size, **{**TINY, **kw})


def _classifier(num_classes: int = 3) -> Classifier:
    torch.manual_seed(1)
    return Classifier(_vit(), num_classes)


def _same_blocks(model: Classifier, source: VisionTransformer) -> bool:
    return torch.equal(model.backbone.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)


def _load(path, model=None, **kw):
    model = model or _classifier()
    summary = load_pretrained(model, path, "vit_custom", key="model.backbone.pretrained_backbone_path", **kw)
    return model, summary


def test_foveal_nvdinov2_student_file(tmp_path, caplog):
    source = _vit(img_size=16)  # trained at another resolution: pos_embed is resampled
    path = save_weights_only(
        source.state_dict(),
        tmp_path / "student_epoch_003.pth",
        network="nvdinov2",
        config={"model": {"backbone": {"student_type": "vit_t"}}},
        kind="student",
        epoch=3,
    )
    with caplog.at_level(logging.INFO):
        model, summary = _load(path)
    assert "foveal nvdinov2 student backbone (vit_t)" in summary and summary in caplog.text
    assert _same_blocks(model, source) and model.backbone.pos_embed.shape == (1, 17, 32)
    assert "resampling pos_embed" in caplog.text


def test_foveal_nvdinov2_training_checkpoint_prefers_the_teacher(tmp_path):
    student, teacher = _vit(), _vit()
    state = {f"student.backbone.{k}": v for k, v in student.state_dict().items()}
    state |= {f"teacher.backbone.{k}": v for k, v in teacher.state_dict().items()}
    path = tmp_path / "model_epoch_001_step_00010.pth"
    save_checkpoint_atomic({"network": "nvdinov2", "kind": "full", "config": {}, "state_dict": state}, path)
    model, summary = _load(path)
    assert "foveal nvdinov2 training checkpoint" in summary and _same_blocks(model, teacher)


def test_foveal_mae_pretrain_checkpoint(tmp_path):
    encoder = _vit()
    state = {f"model.{k}": v for k, v in encoder.state_dict().items()}
    state["model.decoder_embed.weight"] = torch.zeros(16, 32)
    config = {"model": {"arch": "vit_tiny_patch16"}, "train": {"stage": "pretrain"}}
    path = tmp_path / "mae.pth"
    save_checkpoint_atomic({"network": "mae", "kind": "full", "config": config, "state_dict": state}, path)
    model, summary = _load(path)
    assert "foveal mae pretrain checkpoint (vit_tiny_patch16)" in summary and _same_blocks(model, encoder)


def _classification_ckpt(tmp_path, classes, *, ema: bool = False):
    trained = _classifier(len(classes))
    with torch.no_grad():
        trained.head[-1].weight.fill_(0.5)
    state = {f"model.{k}": v for k, v in trained.state_dict().items()}
    obj = {
        "network": "classification",
        "kind": "full",
        "config": {"model": {"backbone": {"type": "vit_tiny_patch16"}}},
        "state_dict": state,
        "classes": classes,
    }
    if ema:
        obj["ema_state_dict"] = {k: v + 1 for k, v in trained.state_dict().items()}
    path = tmp_path / "classifier.pth"
    save_checkpoint_atomic(obj, path)
    return path, trained


def test_foveal_classification_checkpoint_with_and_without_its_head(tmp_path):
    path, trained = _classification_ckpt(tmp_path, ["a", "b", "c"])
    model, summary = _load(path, with_head=True, classes=["a", "b", "c"])
    assert "foveal classification checkpoint" in summary and "and the head" in summary
    assert torch.equal(model.head[-1].weight, trained.head[-1].weight) and _same_blocks(
        model, trained.backbone
    )
    other, summary = _load(path, with_head=True, classes=["a", "b", "z"])  # other classes: fresh head
    assert "the head" not in summary and not torch.equal(other.head[-1].weight, trained.head[-1].weight)


def test_classification_checkpoint_with_ema_gives_the_ema_weights(tmp_path):
    path, trained = _classification_ckpt(tmp_path, ["a", "b"], ema=True)
    model, summary = _load(path, _classifier(2))
    assert "(EMA weights)" in summary
    torch.testing.assert_close(
        model.backbone.blocks[0].attn.qkv.weight, trained.backbone.blocks[0].attn.qkv.weight + 1
    )


def test_hugging_face_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    hf = transformers.ViTModel(config, add_pooling_layer=False)
    hf.save_pretrained(tmp_path / "hf-vit")
    model, summary = _load(tmp_path / "hf-vit")
    assert "Hugging Face vit folder" in summary
    (query,) = [k for k in hf.state_dict() if ".0." in k and ("query.weight" in k or "q_proj.weight" in k)]
    expected = hf.state_dict()[query]  # in-memory key names depend on the transformers version
    torch.testing.assert_close(model.backbone.blocks[0].attn.qkv.weight[:32], expected)


def test_safetensors_and_plain_state_dicts(tmp_path):
    from safetensors.torch import save_file

    source = _vit()
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    model, summary = _load(tmp_path / "w.safetensors")
    assert "safetensors file" in summary and _same_blocks(model, source)

    torch.save(source.state_dict(), tmp_path / "plain.pth")
    assert read_pretrained(tmp_path / "plain.pth").kind == "plain state dict"
    torch.save(
        {"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, tmp_path / "n.pth"
    )
    model, summary = _load(tmp_path / "n.pth")
    assert "plain state dict (under 'model')" in summary and _same_blocks(model, source)


def test_convnext_checkpoint_for_a_vit_is_a_one_line_error(tmp_path):
    convnext = {
        "downsample_layers.0.0.weight": torch.zeros(32, 3, 4, 4),
        "stages.0.0.dwconv.weight": torch.zeros(32, 1, 7, 7),
    }
    torch.save(convnext, tmp_path / "convnext.pth")
    with pytest.raises(CheckpointError, match="convnext checkpoint for a vit backbone") as err:
        _load(tmp_path / "convnext.pth")
    assert "\n" not in str(err.value) and "model.backbone.type=vit_custom" in str(err.value)

    save_checkpoint_atomic(
        {
            "network": "classification",
            "config": {"model": {"backbone": {"type": "convnextv2_atto"}}},
            "state_dict": {f"model.backbone.{k}": v for k, v in convnext.items()},
        },
        tmp_path / "cls_convnext.pth",
    )
    with pytest.raises(CheckpointError, match="with a convnextv2_atto backbone"):
        _load(tmp_path / "cls_convnext.pth")


def test_nothing_matching_is_a_one_line_error(tmp_path):
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no ViT patch embedding"):
        _load(tmp_path / "other.pth")
    torch.save(_vit(embed_dim=64).state_dict(), tmp_path / "wider.pth")  # another width
    with pytest.raises(CheckpointError, match=r"\d+ of \d+ tensors match"):
        _load(tmp_path / "wider.pth")
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(CheckpointError, match="without config.json"):
        _load(tmp_path / "empty-folder")
    with pytest.raises(CheckpointError, match="pretrained_backbone_path: pretrained weights .* not found"):
        _load(tmp_path / "missing.pth")


def test_convnext_backbone_loads_convnext_weights_and_refuses_a_vit(tmp_path):
    from foveal.nn import create_backbone

    torch.manual_seed(0)
    source = Classifier(create_backbone("convnextv2_atto"), 2, global_pool="avg")
    save_checkpoint_atomic(
        {
            "network": "classification",
            "config": {"model": {"backbone": {"type": "convnextv2_atto"}}},
            "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
            "classes": ["a", "b"],
        },
        tmp_path / "convnext_cls.pth",
    )
    torch.manual_seed(1)
    target = Classifier(create_backbone("convnextv2_atto"), 2, global_pool="avg")
    load_pretrained(target, tmp_path / "convnext_cls.pth", "convnextv2_atto", key="k")
    key = "stages.3.blocks.0.pwconv1.weight"
    assert torch.equal(target.backbone.state_dict()[key], source.backbone.state_dict()[key])
    torch.save(_vit().state_dict(), tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="a vit checkpoint for a convnext backbone"):
        load_pretrained(target, tmp_path / "vit.pth", "convnextv2_atto", key="k")
