"""train.activation_checkpointing / channels_last / torch_compile (foveal.engine.speed): each
computes what the plain model computes (CPU, float32), and the schema options reach the model."""

from __future__ import annotations

import copy

import pytest
import torch

from foveal.engine.speed import (
    SpeedOptionsMixin,
    apply_speed_options,
    attach_compiled,
    enable_activation_checkpointing,
)
from foveal.errors import SpecError
from foveal.networks.classification import model as classification_model
from foveal.networks.classification.config import ClassificationConfig
from foveal.networks.classification.model import build_classifier
from foveal.networks.classification.resolve import resolve

pytestmark = pytest.mark.unit

# one of each backbone family the classification schema builds: name -> input side
FAMILIES = {
    "vit_large_patch14_dinov2_swiglu": 28,  # shrunk to 2 blocks
    "convnextv2_atto": 32,
    "resnet_18": 32,
    "fan_tiny_12_p16_224": 32,
    "mit_b0": 32,
    "hiera_tiny_224": 224,
}


def _classifier(name: str, size: int, monkeypatch) -> torch.nn.Module:
    real = classification_model.create_backbone
    if name.startswith("vit_"):
        monkeypatch.setattr(classification_model, "create_backbone", lambda n, **kw: real(n, **kw, depth=2))
    cfg = ClassificationConfig()
    cfg.model.backbone.type, cfg.dataset.img_size = name, size
    torch.manual_seed(0)
    return build_classifier(resolve(cfg, "train").model, num_classes=3, img_size=size)


def _loss_and_grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # stochastic depth draws the same paths; the checkpoint replays them
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 2]))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_activation_checkpointing_reaches_every_backbone_family(name, monkeypatch):
    size = FAMILIES[name]
    plain = _classifier(name, size, monkeypatch)
    checkpointed = copy.deepcopy(plain)
    assert enable_activation_checkpointing(checkpointed) >= 1
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    loss_a, grads_a = _loss_and_grads(plain, x)
    loss_b, grads_b = _loss_and_grads(checkpointed, x)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-6, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for key, grad in grads_a.items():
        torch.testing.assert_close(grads_b[key], grad, atol=1e-6, rtol=1e-5, msg=key)


def test_activation_checkpointing_on_a_model_without_backbones_is_a_spec_error():
    with pytest.raises(SpecError, match=r"train\.activation_checkpointing: Linear has no backbone that can"):
        enable_activation_checkpointing(torch.nn.Linear(2, 2))


class _Owner(SpeedOptionsMixin, torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model


def test_channels_last_convnext_computes_the_same(monkeypatch):
    """train.channels_last on ConvNeXt V2: NHWC weights and images, the same logits and gradients."""
    plain = _classifier("convnextv2_atto", 32, monkeypatch)
    owner = _Owner(copy.deepcopy(plain))
    apply_speed_options(owner, ClassificationConfig().train.__class__(channels_last=True))
    assert owner.channels_last_inputs
    conv = next(m for m in owner.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    loss_b = torch.nn.functional.cross_entropy(owner.train_step_forward(x), torch.tensor([0, 2]))
    loss_b.backward()
    loss_a, grads_a = _loss_and_grads(plain, x)
    torch.testing.assert_close(loss_b.detach(), loss_a, atol=1e-5, rtol=0)
    for key, param in owner.model.named_parameters():
        if key in grads_a:
            torch.testing.assert_close(param.grad, grads_a[key], atol=1e-5, rtol=1e-4, msg=key)
    vit = _Owner(torch.nn.Linear(2, 2))
    apply_speed_options(vit, ClassificationConfig().train.__class__(channels_last=True))
    assert not vit.channels_last_inputs  # nothing convolutional: left alone (with a warning)


@pytest.mark.slow
def test_torch_compile_keeps_the_eager_module_tree_and_computes_the_same():
    """train.torch_compile: the compiled forward shares the eager parameters; state_dict keys,
    deep copies (EMA) and the optimizer see the eager model; outputs match."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    owner = _Owner(model)
    keys = list(owner.state_dict())
    attach_compiled(owner, model)
    assert list(owner.state_dict()) == keys and "compiled_forward" not in dict(owner.named_modules())
    x = torch.randn(5, 8)
    torch.testing.assert_close(owner.train_step_forward(x), model(x), atol=1e-6, rtol=0)
    owner.train_step_forward(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())  # gradients reach the eager parameters
    twin = copy.deepcopy(owner.model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(twin[0].weight, model[0].weight)  # a deep copy is its own model
