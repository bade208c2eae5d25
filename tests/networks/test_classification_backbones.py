"""Every backbone name TAO's classification specs use builds through the classification schema
and trains: a real optimizer step on CPU for the small ones; the ViT-L/g ones build full-size on
the meta device (their parameter count) and take the step shrunk to two blocks (same block type:
SwiGLU, registers, LayerScale)."""

from __future__ import annotations

import pytest
import torch

from foveal.networks.classification import model as classification_model
from foveal.networks.classification.config import ClassificationConfig
from foveal.networks.classification.model import build_classifier
from foveal.networks.classification.resolve import resolve

pytestmark = pytest.mark.unit

SPECS_BACKBONES = {  # name -> (input side for the step, feature width TAO's head reads)
    "fan_tiny_12_p16_224": (32, 192),
    "fan_small_12_p4_hybrid": (32, 384),
    "resnet_34": (32, 512),
    "resnet_101": (32, 2048),
    "mit_b0": (32, 256),
    "vit_l_14_siglip_clipa_224": (28, 768),
    "vit_large_patch14_dinov2_swiglu": (28, 1024),
    "vit_giant_patch14_reg4_dinov2_swiglu": (28, 1536),
}
LARGE = {  # built shrunk for the step; full-size on meta: parameters (millions, backbone only)
    "vit_l_14_siglip_clipa_224": 303,
    "vit_large_patch14_dinov2_swiglu": 304,
    "vit_giant_patch14_reg4_dinov2_swiglu": 1136,
}


def _model_cfg(name: str, size: int):
    cfg = ClassificationConfig()
    cfg.model.backbone.type, cfg.dataset.img_size = name, size
    return resolve(cfg, "train").model


@pytest.mark.parametrize("name", sorted(LARGE))
def test_large_corpus_backbones_build_full_size(name):
    with torch.device("meta"):
        model = build_classifier(_model_cfg(name, 224), num_classes=10, img_size=224)
    count = sum(p.numel() for p in model.backbone.parameters())
    assert abs(count / 1e6 - LARGE[name]) < 0.01 * LARGE[name], count


@pytest.mark.parametrize("name", sorted(SPECS_BACKBONES))
def test_corpus_backbone_trains_one_step(name, monkeypatch):
    size, width = SPECS_BACKBONES[name]
    if name in LARGE:
        real = classification_model.create_backbone
        monkeypatch.setattr(classification_model, "create_backbone", lambda n, **kw: real(n, **kw, depth=2))
    torch.manual_seed(0)
    model = build_classifier(_model_cfg(name, size), num_classes=3, img_size=size)
    assert model.backbone.embed_dim == width
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 2])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    head_before = model.head.weight.detach().clone() if hasattr(model.head, "weight") else None
    opt.step()
    # the loss reaches every trainable parameter but the masked-image-modelling token (ResNet's
    # zero-initialised last BN of each block makes some gradients exactly 0 on step 1, as the
    # reference's do)
    missed = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert [n for n in missed if not n.endswith("mask_token")] == []
    if head_before is not None:
        assert not torch.equal(head_before, model.head.weight)
