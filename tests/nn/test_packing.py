"""Crop packing (foveal.nn.packing): global and local crops through ONE ViT pass with
block-diagonal attention give the outputs, losses and gradients of separate passes.

Tolerance: 1e-5 absolute on outputs and losses, 1e-5 relative (to each gradient's largest entry)
on gradients, in float32 on the CPU: the packed pass runs the same per-token arithmetic in larger
matrix products, so only the summation order differs."""

from __future__ import annotations

import pytest
import torch

from foveal.nn.packing import BACKENDS, PackedLayout, pack, unpack
from foveal.nn.registry import create_backbone

pytestmark = pytest.mark.unit
ATOL = 1e-5
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": 8, "num_register_tokens": 1}


def _crops(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    global_crops, local_crops = torch.randn(4, 3, 32, 32, generator=g), torch.randn(6, 3, 16, 16, generator=g)
    masks = torch.rand(4, 16, generator=g) < 0.3
    return global_crops, local_crops, masks


def test_pack_and_unpack_round_trip_and_token_image_ids():
    a, b = torch.randn(2, 5, 4), torch.randn(3, 2, 4)
    packed, layout = pack([a, b])
    assert packed.shape == (1, 16, 4) and layout.groups == [(2, 5), (3, 2)] and layout.num_images == 5
    back = unpack(packed, layout)
    assert torch.equal(back[0], a) and torch.equal(back[1], b)
    assert layout.image_ids(torch.device("cpu")).tolist() == [0] * 5 + [1] * 5 + [2] * 2 + [3] * 2 + [4] * 2
    with pytest.raises(ValueError, match="packing backend must be one of"):
        PackedLayout([(1, 1)], backend="xformers")


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_forward_matches_separate_forwards(backend):
    torch.manual_seed(0)
    vit = create_backbone("vit_t", init_values=1e-1, **TINY).eval()
    global_crops, local_crops, masks = _crops()
    with torch.no_grad():
        expected = [vit.forward_features(global_crops, masks=masks), vit.forward_features(local_crops)]
        got = vit.forward_features_list([global_crops, local_crops], [masks, None], backend=backend)
    for want, have in zip(expected, got, strict=True):
        for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
            torch.testing.assert_close(have[key], want[key], atol=ATOL, rtol=0)
    assert got[1]["x_norm_patchtokens"].shape == (6, 4, 32)


def test_attention_really_stays_within_each_image():
    """Changing one local crop changes no other image's outputs (no leak across blocks)."""
    vit = create_backbone("vit_t", **TINY).eval()
    global_crops, local_crops, _ = _crops()
    changed = local_crops.clone()
    changed[2] += 5.0
    with torch.no_grad():
        before = vit.forward_features_list([global_crops, local_crops])
        after = vit.forward_features_list([global_crops, changed])
    torch.testing.assert_close(after[0]["x_prenorm"], before[0]["x_prenorm"], atol=0, rtol=0)
    keep = [0, 1, 3, 4, 5]
    torch.testing.assert_close(after[1]["x_prenorm"][keep], before[1]["x_prenorm"][keep], atol=0, rtol=0)
    assert not torch.allclose(after[1]["x_prenorm"][2], before[1]["x_prenorm"][2])
