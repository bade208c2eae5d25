"""FCMAE (ConvNeXt V2 masked autoencoder): masking, loss on masked patches, training, handoff."""

from __future__ import annotations

import pytest
import torch

from foveal.networks.mae.fcmae import FCMAE, build_fcmae
from foveal.nn import ConvNeXtV2, create_backbone

pytestmark = pytest.mark.unit

TINY = {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32), "decoder_embed_dim": 16}


def tiny_fcmae(img_size: int = 128, **kwargs) -> FCMAE:
    torch.manual_seed(0)
    return build_fcmae("convnextv2_atto", img_size=img_size, **{**TINY, **kwargs})


def images(batch: int = 2, size: int = 128, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def noise(batch: int = 2, length: int = 16, seed: int = 2) -> torch.Tensor:
    return torch.rand(batch, length, generator=torch.Generator().manual_seed(seed))


def test_build_shapes_and_encoder_handoff() -> None:
    model = tiny_fcmae()
    assert isinstance(model.encoder, ConvNeXtV2)
    assert model.patch_size == 32 and model.grid == (4, 4)
    loss, out = model(images(), noise=noise())
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert out["pred"].shape == (2, 16, 32 * 32 * 3)
    assert out["mask"].shape == (2, 16)
    # Fine-tuning builds the backbone by name and loads the encoder's weights as they are.
    backbone = create_backbone("convnextv2_atto", depths=TINY["depths"], dims=TINY["dims"])
    backbone.load_state_dict(model.encoder.state_dict())


def test_build_rejects_a_vit_arch_and_a_bad_size() -> None:
    with pytest.raises(ValueError, match="ConvNeXt V2"):
        build_fcmae("vit_tiny_patch16", img_size=64, depth=1)
    with pytest.raises(ValueError, match="multiple"):
        build_fcmae("convnextv2_atto", img_size=100, **TINY)


@pytest.mark.parametrize("ratio", [0.6, 0.75, 0.0])
def test_mask_ratio_is_respected_per_sample(ratio: float) -> None:
    model = tiny_fcmae()
    mask = model.random_masking(4, ratio)
    assert mask.shape == (4, 16) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask.sum(dim=1) == 16 - int(16 * (1 - ratio))).all()
    # The lowest-noise patches stay visible.
    fixed = noise(1)
    kept = model.random_masking(1, 0.75, fixed)[0] == 0
    assert set(fixed[0].argsort()[:4].tolist()) == set(kept.nonzero().flatten().tolist())


def test_fixed_noise_is_deterministic_and_other_noise_is_not() -> None:
    model = tiny_fcmae().eval()
    x = images()
    loss_a, out_a = model(x, noise=noise())
    loss_b, out_b = model(x, noise=noise())
    assert torch.equal(loss_a, loss_b) and torch.equal(out_a["pred"], out_b["pred"])
    assert torch.equal(out_a["mask"], out_b["mask"])
    _, out_c = model(x, noise=noise(seed=5))
    assert not torch.equal(out_a["mask"], out_c["mask"])
    _, out_d = model(x, noise=noise(), mask_ratio=0.25)
    assert (out_d["mask"].sum(dim=1) == 4).all()


def test_loss_counts_masked_patches_only() -> None:
    model = tiny_fcmae()
    x = images()
    with torch.no_grad():
        loss, out = model(x, noise=noise())
        pred, mask = out["pred"], out["mask"]
        visible = (mask == 0).unsqueeze(-1)
        changed_visible = torch.where(visible, pred + 5.0, pred)
        changed_masked = torch.where(visible, pred, pred + 5.0)
        torch.testing.assert_close(model.forward_loss(x, changed_visible, mask), loss)
        assert model.forward_loss(x, changed_masked, mask) > loss + 1.0


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_is_the_mean_squared_error_on_masked_patches(norm_pix_loss: bool) -> None:
    model = tiny_fcmae(norm_pix_loss=norm_pix_loss)
    x = images()
    pred = torch.randn(2, 16, 3072)
    mask = model.random_masking(2, 0.5, noise())
    target = model.patchify(x)
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(-1)
    expected = per_patch[mask.bool()].mean()
    torch.testing.assert_close(model.forward_loss(x, pred, mask), expected)


def test_patchify_round_trips() -> None:
    model = tiny_fcmae()
    x = images(size=128)
    patches = model.patchify(x)
    assert patches.shape == (2, 16, 3072)
    # Patch (row 1, column 2) holds pixels [32:64, 64:96], flattened (row, column, channel).
    torch.testing.assert_close(patches[:, 6], x[:, :, 32:64, 64:96].permute(0, 2, 3, 1).reshape(2, -1))
    torch.testing.assert_close(model.unpatchify(patches), x)


def test_decoder_sees_the_mask_token_at_masked_positions() -> None:
    """Whatever the encoder left at masked positions is replaced by the mask token."""
    model = tiny_fcmae().eval()
    latent = torch.randn(2, 32, 4, 4)
    mask = model.random_masking(2, 0.5, noise())
    garbage = latent + 50 * torch.randn_like(latent) * mask.reshape(2, 1, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_decoder(garbage, mask), model.forward_decoder(latent, mask))


def test_training_reduces_the_loss_and_trains_what_it_should() -> None:
    """A few AdamW steps on one batch of a tiled random patch (predictable, unlike pure noise)."""
    model = tiny_fcmae(img_size=64).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    generator = torch.Generator().manual_seed(7)
    patch = torch.randn(1, 3, 32, 32, generator=generator)
    x = patch.repeat(2, 1, 2, 2) + 0.1 * torch.randn(2, 3, 64, 64, generator=generator)
    fixed = noise(length=4, seed=8)
    losses = []
    for _ in range(6):
        loss, _ = model(x, noise=fixed)
        assert torch.isfinite(loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.8 * losses[0], losses
    # Everything that takes part in the loss is trained; only the unused final norm is frozen.
    for name, param in model.named_parameters():
        if name.startswith("encoder.norm."):
            assert not param.requires_grad and param.grad is None
        else:
            assert param.grad is not None, name
