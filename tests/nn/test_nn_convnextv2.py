"""ConvNeXt V2 backbones: every registered size at capped size, FCMAE masking, export, checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from foveal.nn import ConvNeXtV2, convnextv2_checkpoint_filter_fn, create_backbone, list_backbones
from foveal.nn.convnextv2 import CONVNEXTV2_SIZES

pytestmark = pytest.mark.unit

NAMES = list_backbones("convnextv2_*")
# Paper (Woo et al., arXiv:2301.00808) parameter counts in millions, with a 1000-class head.
PAPER_PARAMS_M = {
    "atto": 3.7,
    "femto": 5.2,
    "pico": 9.1,
    "nano": 15.6,
    "tiny": 28.6,
    "base": 89.0,
    "large": 198.0,
    "huge": 660.0,
}
_CACHE: dict[str, ConvNeXtV2] = {}


def capped(name: str) -> ConvNeXtV2:
    """One block per stage and the registered widths divided by 8 (their ratios kept).

    GRN's gamma and beta are randomised: they start at zero, which would hide GRN from the tests.
    Built once per session; tests restore what they change.
    """
    if name not in _CACHE:
        _, dims = CONVNEXTV2_SIZES[name.removeprefix("convnextv2_")]
        torch.manual_seed(0)
        model = create_backbone(name, depths=(1, 1, 1, 1), dims=tuple(d // 8 for d in dims), img_size=64)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if ".grn." in param_name:
                    param.normal_(0, 0.5)
        _CACHE[name] = model.eval()
    return _CACHE[name]


def images(batch: int = 2, height: int = 96, width: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# A (3, 2) grid: sample 0 keeps the left column, sample 1 keeps the top-left 2x2 block.
MASKS = torch.tensor([[False, True, False, True, False, True], [False, False, False, False, True, True]])


def test_every_size_is_registered() -> None:
    assert NAMES == sorted(f"convnextv2_{size}" for size in PAPER_PARAMS_M)


@pytest.mark.parametrize("size", sorted(PAPER_PARAMS_M))
def test_full_size_parameter_counts_match_the_paper(size: str) -> None:
    with torch.device("meta"):
        model = create_backbone(f"convnextv2_{size}", num_classes=1000)
    depths, dims = CONVNEXTV2_SIZES[size]
    assert model.depths == depths and model.dims == dims and model.embed_dim == dims[-1]
    assert model.patch_size == 32
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(PAPER_PARAMS_M[size], rel=0.02)


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes(name: str) -> None:
    model = capped(name)
    x = images()
    with torch.no_grad():
        out = model.forward_features(x)
        pooled = model(x)
    dim = model.embed_dim
    assert set(out) == {"x_norm_clstoken", "x_norm_patchtokens", "x_prenorm"}
    assert out["x_norm_clstoken"].shape == (2, dim)
    assert out["x_norm_patchtokens"].shape == (2, 3 * 2, dim)
    assert out["x_prenorm"].shape == (2, dim, 3, 2)
    # The "cls token" is the normalised global average of the last stage.
    torch.testing.assert_close(out["x_norm_clstoken"], model.norm(out["x_prenorm"].mean(dim=(2, 3))))
    torch.testing.assert_close(out["x_norm_patchtokens"], model.norm(out["x_prenorm"].flatten(2).mT))
    torch.testing.assert_close(pooled, out["x_norm_clstoken"])
    assert torch.isfinite(out["x_prenorm"]).all()
    with pytest.raises(ValueError, match="multiple of patch size"):
        model.forward_features(torch.randn(1, 3, 48, 64))


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name: str) -> None:
    model = capped(name)
    try:
        out = model.forward_features(images(), masks=MASKS)
        (out["x_norm_clstoken"].pow(2).mean() + out["x_norm_patchtokens"].pow(2).mean()).backward()
        for param_name, param in model.named_parameters():
            assert param.grad is not None, param_name
            assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, param_name
    finally:
        model.zero_grad(set_to_none=True)


def test_channels_last_gives_the_same_result() -> None:
    model = capped("convnextv2_atto")
    x = images()
    with torch.no_grad():
        expected = model.forward_features(x)["x_prenorm"]
        model.to(memory_format=torch.channels_last)
        try:
            got = model.forward_features(x.to(memory_format=torch.channels_last))["x_prenorm"]
        finally:
            model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ masked dense convolution


def _keep_map(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 1, H, W) 1 on visible pixels from (B, h*w) masks on the stride-32 grid."""
    keep = (~masks).float().reshape(-1, 1, height // 32, width // 32)
    return keep.repeat_interleave(32, dim=2).repeat_interleave(32, dim=3)


@pytest.mark.parametrize("name", ["convnextv2_atto", "convnextv2_huge"])
def test_masked_pixels_are_never_read(name: str) -> None:
    """Pixels inside masked patches do not change any output (what the decoder sees is clean)."""
    model = capped(name)
    x = images()
    keep = _keep_map(MASKS, 96, 64)
    scrambled = x * keep + 100 * torch.randn_like(x) * (1 - keep)
    with torch.no_grad():
        out = model.forward_features(x, masks=MASKS)
        other = model.forward_features(scrambled, masks=MASKS)
    for key in out:
        assert torch.equal(out[key], other[key]), key
    # Masked positions of the final map are empty (zero), as a sparse encoder leaves them.
    assert (out["x_prenorm"].flatten(2).mT[MASKS] == 0).all()


def test_masked_forward_equals_a_forward_on_the_visible_crop() -> None:
    """Sparse-conv semantics: when the visible patches form a rectangle, the masked full-image
    forward equals an unmasked forward on that rectangle alone, because zeroing masked positions
    before every depthwise conv is zero padding at the crop's border, and GRN and the pooled
    feature only sum over visible positions. Dense conv without per-block masking fails this."""
    model = capped("convnextv2_pico")
    x = images(batch=1, height=128, width=128)
    masks = torch.ones(1, 4, 4, dtype=torch.bool)
    masks[:, 1:3, 0:3] = False  # visible: rows 1-2, columns 0-2
    with torch.no_grad():
        full = model.forward_features(x, masks=masks.flatten(1))
        crop = model.forward_features(x[:, :, 32:96, 0:96])
    visible = full["x_prenorm"][:, :, 1:3, 0:3]
    torch.testing.assert_close(visible, crop["x_prenorm"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(full["x_norm_clstoken"], crop["x_norm_clstoken"], rtol=1e-4, atol=1e-5)


def test_values_at_masked_positions_are_never_read_by_any_layer() -> None:
    """Noise written into masked positions after the stem, every downsampler and every block
    leaves the visible outputs unchanged; the same noise without masks does change them."""
    model = capped("convnextv2_nano")
    x = images()
    keeps = model.stage_keep_masks(MASKS, (3, 2), torch.float32)
    generator = torch.Generator().manual_seed(3)

    def inject(keep: torch.Tensor):
        def hook(module, args, output):
            return output + 10 * torch.randn(output.shape, generator=generator) * (1 - keep)

        return hook

    modules = [(model.stem, keeps[0])]
    for stage, keep in zip(model.stages, keeps, strict=True):
        modules += [(stage.downsample, keep)] + [(block, keep) for block in stage.blocks]
    with torch.no_grad():
        clean = model.forward_features(x, masks=MASKS)
        plain = model.forward_features(x)
        handles = [module.register_forward_hook(inject(keep)) for module, keep in modules]
        try:
            noisy = model.forward_features(x, masks=MASKS)
            noisy_plain = model.forward_features(x)
        finally:
            for handle in handles:
                handle.remove()
    visible = ~MASKS
    torch.testing.assert_close(noisy["x_norm_patchtokens"][visible], clean["x_norm_patchtokens"][visible])
    torch.testing.assert_close(noisy["x_norm_clstoken"], clean["x_norm_clstoken"])
    assert not torch.allclose(
        noisy_plain["x_norm_patchtokens"][visible], plain["x_norm_patchtokens"][visible]
    )


def test_an_empty_mask_changes_nothing() -> None:
    model = capped("convnextv2_atto")
    x = images()
    with torch.no_grad():
        plain = model.forward_features(x)
        masked = model.forward_features(x, masks=torch.zeros(2, 6, dtype=torch.bool))
    for key in plain:
        torch.testing.assert_close(masked[key], plain[key])
    with pytest.raises(ValueError, match="positions"):
        model.forward_features(x, masks=torch.zeros(2, 4, dtype=torch.bool))


# ------------------------------------------------------------------------------------ training


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = create_backbone("convnextv2_atto", depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), drop_path_rate=0.0)
    x = images()

    def grads(enable: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(enable)
        out = model.forward_features(x, masks=MASKS)
        (out["x_norm_clstoken"].sum() + out["x_prenorm"].pow(2).mean()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    assert model.grad_checkpointing
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)


def test_drop_path_grows_linearly_to_the_rate() -> None:
    model = create_backbone("convnextv2_atto", dims=(8, 16, 24, 32), drop_path_rate=0.3)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in model.stages for b in s.blocks]
    assert len(rates) == 12 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert all(b > a for a, b in zip(rates, rates[1:], strict=False))


def test_no_weight_decay_group_matcher_and_layer_ids() -> None:
    model = create_backbone("convnextv2_atto", dims=(8, 16, 24, 32), num_classes=3)
    names = [name for name, _ in model.named_parameters()]
    no_decay = model.no_weight_decay()
    assert no_decay == {n for n in names if ".grn." in n} and len(no_decay) == 2 * 12
    groups = model.group_matcher()
    assert all(re.match(groups["stem"], n) for n in names if n.startswith("stem."))
    for name in names:
        matched = re.match(groups["stem"], name) or any(re.match(p, name) for p, _ in groups["blocks"])
        assert matched, name
    coarse = model.group_matcher(coarse=True)
    assert re.match(coarse["blocks"], "stages.2.blocks.5.dwconv.weight").group(1) == "2"
    assert model.layer_id_for_param("stem.0.weight") == 0
    assert model.layer_id_for_param("stages.0.blocks.0.dwconv.weight") == 1
    assert model.layer_id_for_param("backbone.stages.2.downsample.1.weight") == 2 + 2 + 1
    assert model.layer_id_for_param("stages.3.blocks.1.pwconv2.bias") == 2 + 2 + 6 + 1 + 1
    assert model.layer_id_for_param("head.weight") == model.n_blocks + 1 == 13


# ------------------------------------------------------------------------------- checkpoints


def _to_reference_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys as the reference's dense model names them (GRN parameters as (1, 1, 1, C))."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^stem\.", "downsample_layers.0.", key)
        key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        out[key] = value.reshape(1, 1, 1, -1) if ".grn." in key else value
    return out


def test_reference_checkpoints_convert() -> None:
    source = capped("convnextv2_atto")
    target = create_backbone("convnextv2_atto", depths=(1, 1, 1, 1), dims=(5, 10, 20, 40)).eval()
    reference = _to_reference_names(source.state_dict())
    # A reference FCMAE checkpoint: prefixed encoder, a decoder the backbone must not take.
    wrapped = {"model": {**{f"encoder.{k}": v for k, v in reference.items()}, "pred.weight": torch.zeros(1)}}
    filtered = convnextv2_checkpoint_filter_fn(wrapped, target)
    assert set(filtered) == set(target.state_dict())
    target.load_state_dict(filtered)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def test_sparse_kernels_convert_to_conv_weights() -> None:
    """Minkowski kernels (K*K, C) / (K*K, C_in, C_out) map onto the matching Conv2d weights."""
    model = create_backbone("convnextv2_atto", depths=(1, 1, 1, 1), dims=(4, 8, 12, 16))
    dw = torch.arange(49 * 4, dtype=torch.float32).reshape(49, 4)
    down = torch.arange(4 * 4 * 8, dtype=torch.float32).reshape(4, 4, 8)
    sparse = {
        "encoder.stages.0.0.dwconv.kernel": dw,
        "encoder.stages.0.0.pwconv1.linear.weight": torch.ones(16, 4),
        "encoder.stages.0.0.norm.ln.weight": torch.ones(4),
        "encoder.stages.0.0.grn.gamma": torch.ones(1, 16),
        "encoder.downsample_layers.1.1.kernel": down,
        "encoder.downsample_layers.1.1.bias": torch.ones(1, 8),
    }
    out = convnextv2_checkpoint_filter_fn(sparse, model)
    weight = out["stages.0.blocks.0.dwconv.weight"]
    assert weight.shape == (4, 1, 7, 7)
    # Offset index k = kw * 7 + kh (the reference's remapping), channel c.
    assert weight[2, 0, 3, 5] == dw[5 * 7 + 3, 2]
    conv = out["stages.1.downsample.1.weight"]
    assert conv.shape == (8, 4, 2, 2) and conv[6, 1, 0, 1] == down[1 * 2 + 0, 1, 6]
    assert out["stages.1.downsample.1.bias"].shape == (8,)
    assert out["stages.0.blocks.0.grn.gamma"].shape == (16,)
    assert {"stages.0.blocks.0.pwconv1.weight", "stages.0.blocks.0.norm.weight"} <= set(out)


# ------------------------------------------------------------------------------------- export


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_onnx_export_matches_pytorch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from foveal.export.onnx import export_onnx

    class Features(torch.nn.Module):
        def __init__(self, backbone: ConvNeXtV2) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> dict:
            return self.backbone.forward_features(x)

    report = export_onnx(Features(capped("convnextv2_femto")), images(), tmp_path / "convnextv2.onnx")
    assert report.passed
    assert report.output_names == ["x_norm_clstoken", "x_norm_patchtokens", "x_prenorm"]
    assert max(report.max_abs_diff.values()) <= 1e-4
    assert report.verified_batch_sizes == [2, 3]
