"""nvdinov2 method and training module: forward, EMA, optimizer groups, last-layer freeze, crops."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from foveal.networks.nvdinov2.config import NVDINOv2Config, resolve
from foveal.networks.nvdinov2.heads import DINOHead
from foveal.networks.nvdinov2.method import NVDINOv2Method, settings_from_config
from foveal.networks.nvdinov2.module import NVDINOv2Module, param_groups
from foveal.networks.nvdinov2.multicrop import MultiCropAugmentation, MultiCropCollate
from foveal.nn.registry import create_backbone

TINY = {"embed_dim": 32, "depth": 3, "num_heads": 2, "img_size": 32, "patch_size": 16}


def _cfg(**changes) -> NVDINOv2Config:
    cfg = NVDINOv2Config()
    cfg.model.backbone.student_type = cfg.model.backbone.teacher_type = "vit_t"
    cfg.model.backbone.patch_size, cfg.model.backbone.img_size = 16, 32
    cfg.model.head.hidden_dim, cfg.model.head.bottleneck_dim = 64, 32
    cfg.train.num_prototypes = 128
    t = cfg.dataset.transform
    t.global_crops_size, t.local_crops_size, t.n_local_crops = 32, 16, 2
    for key, value in changes.items():
        section, name = key.rsplit(".", 1)
        obj = cfg
        for part in section.split("."):
            obj = getattr(obj, part)
        setattr(obj, name, value)
    return resolve(cfg)


def _method(cfg=None, **backbone) -> NVDINOv2Method:
    cfg = cfg or _cfg()
    kw = {**TINY, **backbone}
    return NVDINOv2Method(
        create_backbone("vit_t", drop_path_rate=0.1, **kw),
        create_backbone("vit_t", **kw),
        settings_from_config(cfg),
    )


def _batch(images: int, n_local: int = 2, masked: bool = True) -> dict[str, torch.Tensor]:
    masks = torch.zeros(2 * images, 4, dtype=torch.bool)
    if masked:
        masks[0, :2] = True
    return {
        "global_crops": torch.randn(2 * images, 3, 32, 32),
        "local_crops": torch.randn(n_local * images, 3, 16, 16),
        "masks": masks,
    }


def test_forward_gives_finite_losses_and_student_only_gradients():
    torch.manual_seed(0)
    method = _method().train()
    loss, parts = method(_batch(4), teacher_temp=0.04)
    losses = {"dino_loss", "ibot_loss", "koleo_loss"}
    assert set(parts) == losses | {"teacher_entropy", "feature_std", "effective_rank"}  # + monitors
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
    assert 0 < parts["teacher_entropy"] <= math.log(method.settings.num_prototypes) + 1e-6
    assert not any(parts[k].requires_grad for k in ("teacher_entropy", "feature_std", "effective_rank"))
    assert parts["ibot_loss"] > 0 and parts["koleo_loss"] != 0
    loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert method.student["backbone"].patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.student["backbone"].mask_token.grad.abs().sum() > 0  # masked patches were used


@pytest.mark.parametrize("disable_masking", [False, True])
def test_every_student_parameter_gets_a_gradient_without_masked_patches(disable_masking):
    # DDP (find_unused_parameters=False) needs the same parameters in the graph on every rank and
    # step: a rank whose batch has no masked patch, or distillation without masking, must still
    # route the mask token through the backbone (with an all-False mask).
    changes = {"model.distill.enable": True, "model.distill.pretrained_non_distill_pl_model_path": "x"}
    cfg = _cfg(**changes, **{"model.distill.disable_masking": True}) if disable_masking else _cfg()
    torch.manual_seed(0)
    method = _method(cfg).train()
    loss, _ = method(_batch(2, masked=disable_masking), teacher_temp=0.04)
    loss.backward()
    missing = [name for name, p in method.student.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert method.student["backbone"].mask_token.grad.abs().sum() == 0  # in the graph, nothing masked


def test_batch_of_one_image_is_finite_and_skips_koleo():
    method = _method().train()
    loss, parts = method(_batch(1), teacher_temp=0.04)
    assert torch.isfinite(loss) and parts["koleo_loss"] == 0


def test_teacher_starts_as_the_student_and_ema_follows_the_formula():
    method = _method()
    for s, t in zip(method.student.parameters(), method.teacher.parameters(), strict=True):
        assert torch.equal(s, t)
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.teacher.parameters()]
    method.update_ema(0.9)
    for old, new, s in zip(before, method.teacher.parameters(), method.student.parameters(), strict=True):
        assert torch.allclose(new, 0.9 * old + 0.1 * s)


def test_distillation_keeps_the_teacher_and_averages_the_student():
    cfg = _cfg(**{"model.distill.enable": True, "model.distill.pretrained_non_distill_pl_model_path": "x"})
    method = _method(cfg)
    assert method.student_ema is not None
    teacher = [p.clone() for p in method.teacher.parameters()]
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    ema_before = [p.clone() for p in method.student_ema.parameters()]
    method.update_ema(0.5)
    assert all(torch.equal(a, b) for a, b in zip(teacher, method.teacher.parameters(), strict=True))
    for old, new, s in zip(
        ema_before, method.student_ema.parameters(), method.student.parameters(), strict=True
    ):
        assert torch.allclose(new, 0.5 * old + 0.5 * s)


def test_head_outputs_are_cosine_scores_of_unit_prototypes():
    head = DINOHead(32, 16, num_layers=3, hidden_dim=64, bottleneck_dim=8)
    out = head(torch.randn(5, 32))
    assert out.shape == (5, 16) and out.abs().max() <= 1 + 1e-5


def test_no_weight_decay_groups_and_layer_decay_multipliers():
    method = _method()
    groups = param_groups(method.student, layerwise_decay=0.5, patch_embed_lr_mult=0.2)
    names = {id(p): n for n, p in method.student.named_parameters()}
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    assert len(by_name) == sum(1 for p in method.student.parameters() if p.requires_grad)
    for name in (
        "backbone.blocks.0.attn.qkv.bias",
        "backbone.blocks.1.norm1.weight",
        "backbone.blocks.2.ls1.gamma",
        "backbone.pos_embed",
        "backbone.cls_token",
        "backbone.norm.weight",
        "dino_head.mlp.0.bias",
    ):
        assert by_name[name]["wd_scale"] == 0.0, name
    for name in (
        "backbone.blocks.0.attn.qkv.weight",
        "dino_head.mlp.0.weight",
        "dino_head.last_layer.weight",
    ):
        assert by_name[name]["wd_scale"] == 1.0, name
    n = 3  # blocks
    assert by_name["backbone.blocks.0.mlp.fc1.weight"]["lr_scale"] == pytest.approx(0.5**n)
    assert by_name["backbone.blocks.2.mlp.fc1.weight"]["lr_scale"] == pytest.approx(0.5)
    assert by_name["backbone.patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.5 ** (n + 1) * 0.2)
    assert by_name["backbone.pos_embed"]["lr_scale"] == pytest.approx(0.5 ** (n + 1))
    assert by_name["backbone.norm.weight"]["lr_scale"] == 1.0
    assert by_name["dino_head.mlp.0.weight"]["lr_scale"] == 1.0
    assert [g["tag"] == "last_layer" for g in groups].count(True) == 1
    assert by_name["dino_head.last_layer.weight"]["tag"] == "last_layer"


def _module(freeze_steps: int, step: int) -> NVDINOv2Module:
    cfg = _cfg(
        **{
            "train.schedulers.last_layer_learning_rate.freeze_steps": freeze_steps,
            "train.clip_grad_norm": 0.0,
        }
    )
    module = NVDINOv2Module(_method(cfg), cfg.train)
    module._trainer = SimpleNamespace(global_step=step)
    return module


@pytest.mark.parametrize(("step", "frozen"), [(0, True), (9, True), (10, False)])
def test_last_layer_gets_no_gradient_while_frozen(step, frozen):
    module = _module(freeze_steps=10, step=step)
    loss, _ = module.method(_batch(2), teacher_temp=0.04)
    loss.backward()
    module.on_before_optimizer_step(None)
    last = module.student["dino_head"].last_layer.weight
    assert (last.grad is None) == frozen
    assert module.student["dino_head"].mlp[0].weight.grad is not None


def test_schedules_set_group_lr_and_weight_decay():
    module = _module(freeze_steps=0, step=0)
    groups = param_groups(module.student, 0.5, 0.2)
    opt = torch.optim.AdamW(groups, lr=0.0)
    values = SimpleNamespace(lr=1e-3, last_layer_lr=5e-4, weight_decay=0.04)
    module.apply_schedules(opt, values)
    for g in opt.param_groups:
        lr = 5e-4 if g["tag"] == "last_layer" else 1e-3
        assert g["lr"] == pytest.approx(lr * g["lr_scale"])
        assert g["weight_decay"] == pytest.approx(0.04 * g["wd_scale"])


def test_state_dict_keys_name_student_and_teacher_backbones():
    module = NVDINOv2Module(_method(), _cfg().train)
    keys = set(module.state_dict())
    assert "student.backbone.patch_embed.proj.weight" in keys and "teacher.backbone.pos_embed" in keys
    assert "student.dino_head.last_layer.weight" in keys and "dino_centering.center" in keys
    assert not any(k.startswith("method.") for k in keys)


def test_multicrop_shapes_and_crop_major_collate():
    cfg = _cfg()
    augment = MultiCropAugmentation(cfg.dataset.transform)
    image = Image.new("RGB", (48, 40), (120, 30, 200))
    sample = augment(image)
    assert [c.shape for c in sample["global_crops"]] == [(3, 32, 32)] * 2
    assert [c.shape for c in sample["local_crops"]] == [(3, 16, 16)] * 2
    samples = [augment(image) for _ in range(3)]
    batch = MultiCropCollate((2, 2), cfg.train.masking)(samples)
    assert batch["global_crops"].shape == (6, 3, 32, 32) and batch["local_crops"].shape == (6, 3, 16, 16)
    assert torch.equal(batch["global_crops"][1], samples[1]["global_crops"][0])  # crop-major
    assert torch.equal(batch["global_crops"][4], samples[1]["global_crops"][1])
    assert batch["masks"].shape == (6, 4) and int((batch["masks"].sum(1) > 0).sum()) == 3


def test_multicrop_colour_settings_come_from_the_spec():
    cfg = _cfg()
    t = cfg.dataset.transform
    t.n_local_crops, t.global_crops_scale = 0, [1.0, 1.0]
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    t.color_jitter, t.color_jitter_prob, t.grayscale_prob = [0.0, 0.0, 0.0, 0.0], 0.0, 1.0
    gray = MultiCropAugmentation(t)(image)["global_crops"][1]
    assert torch.allclose(gray[0] * 0.229 + 0.485, gray[1] * 0.224 + 0.456, atol=1e-2)  # R == G
    t.color_jitter, t.color_jitter_prob, t.grayscale_prob = [0.0, 0.0, 0.0, 0.5], 1.0, 0.0
    hues = {
        tuple(MultiCropAugmentation(t)(image)["global_crops"][1][:, 16, 16].round(decimals=1).tolist())
        for _ in range(8)
    }
    assert len(hues) > 2  # a hue of up to half a turn moves a saturated red around the wheel


def test_teacher_sees_unmasked_global_crops_only():
    torch.manual_seed(0)
    method = _method().eval()  # eval: centering state unchanged between the calls
    batch = _batch(2)
    masks = batch["masks"]
    first = method.teacher_targets(batch["global_crops"], masks, 0.04)["dino"]
    second = method.teacher_targets(batch["global_crops"], torch.ones_like(masks), 0.04)["dino"]
    assert all(torch.allclose(a, b) for a, b in zip(first, second, strict=True))


def test_one_global_crop_without_local_crops_is_a_spec_error():
    from foveal.spec import SpecError

    with pytest.raises(SpecError, match="dataset.transform.n_global_crops"):
        _cfg(**{"dataset.transform.n_global_crops": 1, "dataset.transform.n_local_crops": 0})


@pytest.mark.slow
def test_torch_compile_compiles_the_backbones_without_changing_keys_or_outputs():
    from torch._dynamo.utils import counters

    from foveal.networks.nvdinov2.train import compile_backbones

    torch.manual_seed(0)
    method = _method().eval()
    keys = list(method.state_dict())
    batch = _batch(2, n_local=0)
    with torch.no_grad():
        eager = method.teacher_targets(batch["global_crops"], batch["masks"], teacher_temp=0.04)["dino"]
    torch._dynamo.reset()
    counters.clear()
    compile_backbones(method)
    with torch.no_grad():
        compiled = method.teacher_targets(batch["global_crops"], batch["masks"], teacher_temp=0.04)["dino"]
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really compiled forward_features
    assert list(method.state_dict()) == keys  # checkpoints keep the eager names
    for a, b in zip(eager, compiled, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    torch._dynamo.reset()


def test_torch_compile_without_a_cpu_compiler_is_one_spec_error(monkeypatch):
    import shutil

    from foveal.networks.nvdinov2 import train
    from foveal.spec import SpecError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SpecError, match="train.torch_compile.*C\\+\\+ compiler"):
        train.compile_backbones(_method())


@pytest.mark.parametrize("custom", [True, False])
def test_use_custom_attention_switches_the_kernel_not_the_function(custom):
    from foveal.networks.nvdinov2.backbones import build_backbone
    from foveal.nn.layers import Attention, set_fused_attention

    cfg = NVDINOv2Config()
    cfg.model.backbone.student_type = cfg.model.backbone.teacher_type = "vit_t"
    cfg.model.backbone.img_size, cfg.model.backbone.patch_size = 32, 8
    cfg.dataset.transform.global_crops_size, cfg.dataset.transform.local_crops_size = 32, 16
    cfg.train.use_custom_attention = custom
    torch.manual_seed(0)
    model = build_backbone(resolve(cfg), "student").eval()
    assert {m.fused for m in model.modules() if isinstance(m, Attention)} == {custom}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.forward_features(x)["x_norm_patchtokens"]
        set_fused_attention(model, not custom)
        other = model.forward_features(x)["x_norm_patchtokens"]
    torch.testing.assert_close(ours, other, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_crops_give_the_same_losses_and_gradients(checkpointing):
    """train.pack_crops: the student's global and local crops in one packed pass (block-diagonal
    attention, foveal.nn.packing) give the same DINO / iBOT / KoLeo losses (1e-5 absolute) and the
    same gradient on every student parameter (1e-5 relative to its largest entry) as the two
    separate passes, on CPU in float32; drop path is 0 (its per-image draws differ in order)."""
    import copy

    torch.manual_seed(0)
    kw = {**TINY, "init_values": 0.1, "num_register_tokens": 1}
    separate = NVDINOv2Method(create_backbone("vit_t", **kw), create_backbone("vit_t", **kw), settings_from_config(_cfg()))
    packed = copy.deepcopy(separate)
    packed.settings = settings_from_config(_cfg(**{"train.pack_crops": True}))
    assert packed.settings.pack_crops and not separate.settings.pack_crops
    for method in (separate, packed):
        method.student["backbone"].set_grad_checkpointing(checkpointing)
    batch = _batch(3)
    batch["masks"][1, 1:3] = True
    results = []
    for method in (separate, packed):
        loss, parts = method(batch, teacher_temp=0.07)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in method.student.named_parameters() if p.grad is not None}
        results.append((loss.detach(), parts, grads))
    (loss_a, parts_a, grads_a), (loss_b, parts_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=0)
    for key in ("dino_loss", "ibot_loss", "koleo_loss"):
        torch.testing.assert_close(parts_b[key], parts_a[key], atol=1e-5, rtol=0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name, grad in grads_a.items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert (grads_b[name] - grad).abs().max() / scale <= 1e-5, name
