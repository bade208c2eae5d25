"""MiT (SegFormer encoder) backbones: sizes, TAO keys, forward, Hugging Face numerics, TAO checkpoints."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from backbone_checks import key_digest, loss_and_grads
from torch import nn

import foveal.nn.mit  # noqa: F401  (registers the backbones)
from foveal.nn.backbone import Backbone
from foveal.nn.mit import MIT_SIZES, MixTransformer, mit_checkpoint_filter_fn
from foveal.nn.registry import create_backbone, list_backbones

pytestmark = pytest.mark.unit

NAMES = [f"mit_b{i}" for i in range(6)]
# Parameters with a 1000-class head. Exact: ``reference_param_count`` below applied to the configs of
# NVlabs/SegFormer mmseg/models/backbones/mix_transformer.py (= TAO 6.25.10 cv/backbone_v2/mit.py); the
# same integers come out of TAO's own mit_b0..b5 (built off-line with timm 1.0.14), whose state-dict keys
# and shapes hash to TAO_KEYS.
WITH_HEAD = {
    "mit_b0": 3_576_392,
    "mit_b1": 13_664_424,
    "mit_b2": 24_709_288,
    "mit_b3": 44_585_128,
    "mit_b4": 61_355_688,
    "mit_b5": 81_956_008,
}
# Encoder parameters (no head) in the SegFormer paper (arXiv:2105.15203, Table 1), rounded to 0.1 M.
# B0's 3.4 is 0.08 M above the code's 3.32 M; the others agree to the rounding.
PAPER_ENCODER_M = {
    "mit_b0": 3.4,
    "mit_b1": 13.1,
    "mit_b2": 24.2,
    "mit_b3": 44.0,
    "mit_b4": 60.8,
    "mit_b5": 81.4,
}
# (number of state-dict entries, sha256[:16] of the sorted "key:shape" lines) of TAO's models with a head.
TAO_KEYS = {
    "mit_b0": (178, "f863b16d13df7c50"),
    "mit_b1": (178, "d9a5d93d6aa7a2ec"),
    "mit_b2": (334, "2f5315b6a6028136"),
    "mit_b3": (574, "8071ec324aa7f057"),
    "mit_b4": (834, "a01db5a4d09894f5"),
    "mit_b5": (1054, "ac61b1ac96673a52"),
}
_CACHE: dict[str, MixTransformer] = {}


def reference_param_count(embed_dims: tuple[int, ...], depths: tuple[int, ...], num_classes: int) -> int:
    """Parameters of the reference MiT, written out from its modules (mlp ratio 4, sr 8/4/2/1)."""
    total, c_in = 0, 3
    for c, depth, sr, kernel in zip(embed_dims, depths, (8, 4, 2, 1), (7, 3, 3, 3), strict=True):
        total += c_in * c * kernel * kernel + c + 2 * c  # patch_embed: conv, LayerNorm
        attn = (c * c + c) + (2 * c * c + 2 * c) + (c * c + c)  # q, kv, proj
        if sr > 1:
            attn += c * c * sr * sr + c + 2 * c  # sr conv, its LayerNorm
        mlp = (c * 4 * c + 4 * c) + (4 * c * 9 + 4 * c) + (4 * c * c + c)  # fc1, 3x3 depthwise, fc2
        total += depth * (2 * c + attn + 2 * c + mlp) + 2 * c  # blocks (norm1, norm2), stage norm
        c_in = c
    return total + (embed_dims[-1] * num_classes + num_classes if num_classes else 0)


def randomised(name: str = "mit_b0", **overrides) -> MixTransformer:
    """The registered model (shared), with random LayerNorm weights and biases so tests see them."""
    key = name + repr(sorted(overrides.items()))
    if key not in _CACHE:
        torch.manual_seed(0)
        model = create_backbone(name, **overrides)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if param_name.endswith("bias") or re.search(r"norm\d?\.weight$", param_name):
                    param.normal_(1.0 if param_name.endswith("weight") else 0.0, 0.2)
        _CACHE[key] = model.eval()
    return _CACHE[key]


def images(batch: int = 2, height: int = 64, width: int | None = None, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width or height, generator=torch.Generator().manual_seed(seed))


def test_every_tao_name_is_registered() -> None:
    assert list_backbones("mit_*") == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_and_keys_match_the_references(name: str) -> None:
    embed_dims, depths = MIT_SIZES[name.removeprefix("mit_")]
    with torch.device("meta"):
        with_head = create_backbone(name, num_classes=1000)
        backbone = create_backbone(name)
    count = sum(p.numel() for p in with_head.parameters())
    assert count == WITH_HEAD[name] == reference_param_count(embed_dims, depths, 1000)
    encoder = sum(p.numel() for p in backbone.parameters())
    head = 1000 * embed_dims[-1] + 1000
    assert encoder == reference_param_count(embed_dims, depths, 0) == count - head
    assert encoder / 1e6 == pytest.approx(PAPER_ENCODER_M[name], abs=0.1)
    assert key_digest(with_head.state_dict()) == TAO_KEYS[name]
    assert backbone.embed_dim == backbone.num_features == embed_dims[-1] == (256 if name == "mit_b0" else 512)
    assert backbone.n_blocks == sum(depths)
    assert isinstance(backbone.head, nn.Identity) and isinstance(backbone, Backbone)


def test_tao_key_names_shapes_and_norm_eps() -> None:
    model = create_backbone("mit_b0", num_classes=10)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["patch_embed1.proj.weight"] == (32, 3, 7, 7)
    assert shapes["patch_embed2.proj.weight"] == (64, 32, 3, 3)
    assert shapes["block1.0.attn.q.weight"] == (32, 32)
    assert shapes["block1.0.attn.kv.weight"] == (64, 32)
    assert shapes["block1.0.attn.sr.weight"] == (32, 32, 8, 8)
    assert shapes["block3.1.attn.sr.weight"] == (160, 160, 2, 2)
    assert shapes["block1.1.mlp.dwconv.dwconv.weight"] == (128, 1, 3, 3)
    assert shapes["block4.1.mlp.fc2.weight"] == (256, 1024)
    assert {"block1.0.attn.norm.bias", "patch_embed4.norm.weight", "norm4.bias", "head.bias"} <= set(shapes)
    assert not any(k.startswith("block4.") and ".attn.sr" in k for k in shapes)  # sr ratio 1: no reduction
    assert shapes["head.weight"] == (10, 256)
    # Blocks and stage norms 1e-6; patch-embedding and reduction norms keep PyTorch's 1e-5.
    assert model.block2[0].norm1.eps == model.block2[0].norm2.eps == model.norm3.eps == 1e-6
    assert model.patch_embed2.norm.eps == model.block1[0].attn.norm.eps == 1e-5


def test_forward_shapes_pooling_and_feature_pyramid() -> None:
    model = randomised()
    x = images()
    with torch.no_grad():
        out = model.forward_features(x)
        pooled = model(x)
        pyramid = model.forward_feature_pyramid(x)
    assert set(out) == {"x_norm_clstoken", "x_norm_patchtokens"}
    assert out["x_norm_clstoken"].shape == (2, 256)
    assert out["x_norm_patchtokens"].shape == (2, 2 * 2, 256)  # 64 / 32
    assert [tuple(m.shape[1:]) for m in pyramid] == [(32, 16, 16), (64, 8, 8), (160, 4, 4), (256, 2, 2)]
    # TAO's pre-logits: the mean over H*W of stage 4 after norm4.
    torch.testing.assert_close(out["x_norm_clstoken"], pyramid[-1].mean(dim=(2, 3)))
    torch.testing.assert_close(out["x_norm_patchtokens"], pyramid[-1].flatten(2).mT)
    torch.testing.assert_close(pooled, out["x_norm_clstoken"])
    with torch.no_grad():  # any size: the padded convs round up, 70x50 -> 18x13 -> 9x7 -> 5x4 -> 3x2
        assert model.forward_features(images(1, 70, 50))["x_norm_patchtokens"].shape == (1, 6, 256)
    with pytest.raises(ValueError, match="does not support masks"):
        model.forward_features(x, masks=torch.zeros(2, 4, dtype=torch.bool))
    assert create_backbone("mit_b0", num_classes=5)(x).shape == (2, 5)
    with pytest.raises(TypeError):
        create_backbone("mit_b0", not_an_argument=1)


def test_backward_reaches_every_parameter() -> None:
    model = randomised(num_classes=3).train()
    try:
        model(images()).logsumexp(dim=1).mean().backward()
        for name, param in model.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def _to_hf_segformer(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (NVlabs/TAO) names as transformers 5.x's SegformerModel names them; ``kv`` splits into k, v."""
    out = {}
    for key, value in state.items():
        match = re.match(r"^(patch_embed|block|norm)(\d)\.(.*)$", key)
        assert match, key
        kind, stage, rest = match.group(1), int(match.group(2)) - 1, match.group(3)
        if kind == "patch_embed":
            out[f"stages.{stage}.patch_embeddings.{rest.replace('norm.', 'layer_norm.')}"] = value
            continue
        if kind == "norm":
            out[f"stages.{stage}.layer_norm.{rest}"] = value
            continue
        index, rest = rest.split(".", 1)
        prefix = f"stages.{stage}.blocks.{index}."
        if rest.startswith("attn.kv."):
            key_part, value_part = value.chunk(2, dim=0)
            out[prefix + rest.replace("attn.kv.", "attention.k_proj.")] = key_part
            out[prefix + rest.replace("attn.kv.", "attention.v_proj.")] = value_part
            continue
        for ours, theirs in (
            ("norm1.", "layernorm_before."),
            ("norm2.", "layernorm_after."),
            ("attn.q.", "attention.q_proj."),
            ("attn.proj.", "attention.o_proj."),
            ("attn.sr.", "attention.sequence_reduction.sequence_reduction."),
            ("attn.norm.", "attention.sequence_reduction.layer_norm."),
        ):
            rest = rest.replace(ours, theirs) if rest.startswith(ours) else rest
        out[prefix + rest] = value
    return out


def test_matches_hugging_face_segformer_encoder() -> None:
    """An independent implementation (transformers' SegformerModel) with our weights computes the same
    stage-4 map: the same overlapping embeddings, spatial reduction, Mix-FFN and norms."""
    transformers = pytest.importorskip("transformers")
    ours = randomised()
    config = transformers.SegformerConfig(
        depths=list(ours.depths),
        hidden_sizes=list(ours.embed_dims),
        num_attention_heads=[1, 2, 5, 8],
        sr_ratios=[8, 4, 2, 1],
        mlp_ratios=[4, 4, 4, 4],
        drop_path_rate=0.0,
    )
    hf = transformers.SegformerModel(config).eval()
    converted = _to_hf_segformer(ours.state_dict())
    if set(converted) != set(hf.state_dict()):
        pytest.skip(f"transformers {transformers.__version__} names Segformer weights differently")
    hf.load_state_dict(converted)
    for name, module in hf.named_modules():  # HF uses 1e-5 throughout; the reference 1e-6 in blocks/stages
        if isinstance(module, nn.LayerNorm) and not re.search("patch_embeddings|sequence_reduction", name):
            module.eps = 1e-6
    for x in (images(), images(1, 70, 50)):
        with torch.no_grad():
            expected = hf(pixel_values=x).last_hidden_state
            got = ours.forward_feature_pyramid(x)[-1]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("prefix", ["model.", "model.backbone.", "backbone.", ""])
def test_tao_checkpoint_round_trip(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """TAO 6.25 (``model.``), 6.0 (``model.backbone.``), 5.x/mmseg (``backbone.``) and plain SegFormer
    state dicts load through the filter and give identical outputs; decode heads are dropped."""
    source = randomised(num_classes=5)
    state = {prefix + k: v for k, v in source.state_dict().items()}
    state["decode_head.conv_seg.weight"] = torch.zeros(5, 256, 1, 1)  # an mmseg segmentor's head
    checkpoint = {"state_dict": state, "epoch": 3, "tao_model": "classification"}
    target = create_backbone("mit_b0", num_classes=5).eval()
    with caplog.at_level(logging.DEBUG, logger="foveal"):
        target.load_state_dict(mit_checkpoint_filter_fn(checkpoint, target))  # strict
    assert "decode_head.conv_seg.weight" in caplog.text
    headless = create_backbone("mit_b0").eval()
    filtered = mit_checkpoint_filter_fn(checkpoint, headless)
    assert not any(k.startswith("head.") for k in filtered)
    headless.load_state_dict(filtered)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
        torch.testing.assert_close(headless(x), source.forward_features(x)["x_norm_clstoken"], rtol=0, atol=0)


def test_filter_drops_a_head_of_another_size() -> None:
    saved = {f"model.{k}": v for k, v in randomised(num_classes=7).state_dict().items()}
    target = create_backbone("mit_b0", num_classes=3)
    missing, unexpected = target.load_state_dict(mit_checkpoint_filter_fn(saved, target), strict=False)
    assert set(missing) == {"head.weight", "head.bias"} and not unexpected


# -------------------------------------------------------------------------------------- training


def test_layer_ids_cover_every_parameter() -> None:
    model = create_backbone("mit_b2", num_classes=10)  # depths 3, 4, 6, 3
    ids = {name: model.layer_id_for_param(name) for name, _ in model.named_parameters()}
    assert set(ids.values()) == set(range(model.n_blocks + 2)) and model.n_blocks == 16
    assert ids["patch_embed1.proj.weight"] == ids["patch_embed1.norm.bias"] == 0
    assert ids["block1.0.attn.q.weight"] == 1 and ids["block1.2.mlp.fc2.bias"] == 3
    assert ids["norm1.weight"] == 3  # a stage norm shares its stage's last block id
    assert ids["patch_embed2.proj.weight"] == ids["block2.0.norm1.weight"] == 4  # downsampler: next block
    assert ids["block4.2.attn.kv.weight"] == 16
    assert ids["norm4.weight"] == ids["head.weight"] == model.n_blocks + 1
    assert model.layer_id_for_param("backbone.block3.5.mlp.fc1.weight") == 3 + 4 + 5 + 1
    assert model.layer_id_for_param("backbone.patch_embed1.proj.bias") == 0
    assert model.no_weight_decay() == set()  # no tokens or tables


def test_drop_path_grows_linearly_over_all_blocks() -> None:
    model = create_backbone("mit_b0")  # 8 blocks, reference default 0.1
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in range(1, 5) for b in getattr(model, f"block{s}")]
    assert rates == pytest.approx([0.1 * i / 7 for i in range(8)])
    assert isinstance(model.block1[0].drop_path, nn.Identity)


def test_grad_checkpointing_gives_the_same_loss_and_gradients() -> None:
    model = randomised(drop_path_rate=0.2).train()
    x = images()

    try:
        plain_loss, plain = loss_and_grads(model, x, False, "x_norm_patchtokens")
        loss, grads = loss_and_grads(model, x, True, "x_norm_patchtokens")
    finally:
        model.set_grad_checkpointing(False)
        model.zero_grad(set_to_none=True)
        model.eval()
    torch.testing.assert_close(loss, plain_loss)
    assert grads.keys() == plain.keys() == {n for n, _ in model.named_parameters()}
    for name, grad in plain.items():
        torch.testing.assert_close(grads[name], grad, msg=name)
