"""MAE on ViT: equality with Hugging Face ViTMAEForPreTraining, masking, HF folders as starting weights."""

from __future__ import annotations

import pytest
import torch

from foveal.engine.checkpoint import CheckpointError
from foveal.networks.mae.checkpoints import load_finetune_start, load_pretrain_start
from foveal.networks.mae.convert_hf import mae_vit_from_hf_pretraining
from foveal.networks.mae.mae_vit import MaskedAutoencoderViT
from foveal.networks.mae.models import MAEClassifier
from foveal.nn import VisionTransformer
from foveal.nn.convert_hf import vit_kwargs_from_hf_config

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.unit

IMG, PATCH = 32, 8
N = (IMG // PATCH) ** 2


def _hf_model(norm_pix_loss: bool = True, mask_ratio: float = 0.75, perturb: bool = True):
    config = transformers.ViTMAEConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=IMG,
        patch_size=PATCH,
        decoder_hidden_size=24,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=48,
        mask_ratio=mask_ratio,
        norm_pix_loss=norm_pix_loss,
    )
    torch.manual_seed(0)
    model = transformers.ViTMAEForPreTraining(config).eval()
    if perturb:
        # A fresh HF ViTMAE has all-zero position tables and class/mask tokens: give every
        # tensor distinct values so that a wrong mapping cannot hide.
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.1)
    return model


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_pred_and_mask_equal_hf(norm_pix_loss):
    hf = _hf_model(norm_pix_loss)
    ours = mae_vit_from_hf_pretraining(hf.state_dict(), hf.config.to_dict()).eval()
    images = torch.randn(3, 3, IMG, IMG)
    noise = torch.rand(3, N)
    with torch.no_grad():
        expected = hf(pixel_values=images, noise=noise)
        loss, out = ours(images, noise=noise)
    assert abs(loss.item() - expected.loss.item()) <= 1e-5
    torch.testing.assert_close(out["pred"], expected.logits, atol=1e-5, rtol=0)
    assert torch.equal(out["mask"], expected.mask)
    assert torch.equal(out["ids_restore"], expected.ids_restore)


def test_sincos_tables_equal_hf_initialisation():
    from transformers.models.vit_mae import modeling_vit_mae as m

    if not hasattr(m, "build_2d_sinusoidal_position_embedding"):
        pytest.skip("this transformers version builds its table with numpy")
    grid, dim, dec = IMG // PATCH, 32, 24

    def hf_table(width: int) -> torch.Tensor:
        table = m.build_2d_sinusoidal_position_embedding(grid, grid, width, cls_token=True)
        half = width // 2  # HF rotates the halves to match the released MAE weights
        return torch.cat([table[..., half:], table[..., :half]], dim=-1).unsqueeze(0)

    encoder = VisionTransformer(
        img_size=IMG, patch_size=PATCH, embed_dim=dim, depth=1, num_heads=2, pos_embed_type="sincos"
    )
    model = MaskedAutoencoderViT(encoder, decoder_embed_dim=dec, decoder_depth=1)
    torch.testing.assert_close(model.encoder.pos_embed.data, hf_table(dim), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.decoder_pos_embed.data, hf_table(dec), atol=1e-6, rtol=0)
    assert not model.encoder.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad


def _tiny_mae(mask_ratio: float = 0.75) -> MaskedAutoencoderViT:
    encoder = VisionTransformer(
        img_size=IMG, patch_size=PATCH, embed_dim=32, depth=2, num_heads=2, pos_embed_type="sincos"
    )
    return MaskedAutoencoderViT(encoder, decoder_embed_dim=16, decoder_depth=1, mask_ratio=mask_ratio)


def test_random_masking_is_per_sample_and_invertible():
    model = _tiny_mae()
    x = torch.randn(4, N, 8)
    noise = torch.rand(4, N)
    visible, mask, ids_restore = model.random_masking(x, 0.75, noise)
    keep = int(N * 0.25)
    assert visible.shape == (4, keep, 8)
    assert mask.shape == (4, N) and torch.all(mask.sum(dim=1) == N - keep)
    ids_shuffle = torch.argsort(noise, dim=1)
    # Kept tokens are the lowest-noise ones, in ascending-noise order; mask marks the others.
    assert torch.equal(visible, torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, 8)))
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(N).expand(4, -1))
    assert torch.equal(mask.bool(), noise > noise.sort(dim=1).values[:, keep - 1 : keep])
    again = model.random_masking(x, 0.75, noise)
    assert all(torch.equal(a, b) for a, b in zip((visible, mask, ids_restore), again, strict=True))
    torch.manual_seed(1)
    _, random_mask, _ = model.random_masking(torch.randn(64, N, 8), 0.75)
    assert len({tuple(row.tolist()) for row in random_mask}) > 1  # not one mask for the batch


def test_encoder_processes_only_visible_tokens_and_is_deterministic():
    model = _tiny_mae(mask_ratio=0.75).eval()
    seen = []
    model.encoder.blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    images, noise = torch.randn(2, 3, IMG, IMG), torch.rand(2, N)
    with torch.no_grad():
        loss_a, out_a = model(images, noise=noise)
        loss_b, out_b = model(images, noise=noise)
    assert seen[0] == (2, 1 + int(N * 0.25), 32)
    assert out_a["pred"].shape == (2, N, PATCH * PATCH * 3)
    assert torch.equal(loss_a, loss_b) and torch.equal(out_a["pred"], out_b["pred"])
    with torch.no_grad():
        loss_c, _ = model(images, noise=torch.rand(2, N))
    assert not torch.equal(loss_a, loss_c)


def test_patchify_roundtrip_and_pixel_order():
    model = _tiny_mae()
    images = torch.randn(2, 3, IMG, 2 * IMG)
    patches = model.patchify(images)
    assert patches.shape == (2, 2 * N, PATCH * PATCH * 3)
    # Patch 0 holds the top-left block, (row, column, channel)-ordered.
    assert torch.equal(patches[0, 0], images[0, :, :PATCH, :PATCH].permute(1, 2, 0).reshape(-1))
    assert torch.equal(model.unpatchify(patches, (IMG // PATCH, 2 * IMG // PATCH)), images)


def test_backward_reaches_every_trainable_parameter():
    model = _tiny_mae()
    loss, _ = model(torch.randn(2, 3, IMG, IMG))
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused  # DDP needs no find_unused_parameters


def test_hf_folder_starts_pretraining_with_its_decoder(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    config = hf.config.to_dict()
    encoder = VisionTransformer(**{**vit_kwargs_from_hf_config(config), "norm_eps": 1e-12})
    model = MaskedAutoencoderViT(
        encoder,
        decoder_embed_dim=24,
        decoder_depth=2,
        decoder_num_heads=2,
        decoder_mlp_hidden_dim=48,
        norm_eps=1e-12,
    ).eval()
    message = load_pretrain_start(model, tmp_path / "hf", "vit_tiny_patch16")
    assert "ViTMAEForPreTraining folder" in message
    images, noise = torch.randn(2, 3, IMG, IMG), torch.rand(2, N)
    with torch.no_grad():
        assert (
            abs(model(images, noise=noise)[0].item() - hf(pixel_values=images, noise=noise).loss.item())
            <= 1e-5
        )


def test_hf_folder_starts_finetuning_at_another_resolution(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    kwargs = {
        **vit_kwargs_from_hf_config(hf.config.to_dict()),
        "img_size": 2 * IMG,
        "pos_embed_type": "learned",
    }
    classifier = MAEClassifier(VisionTransformer(**kwargs), 3)
    message = load_finetune_start(classifier, tmp_path / "hf", "vit_tiny_patch16")
    assert "Hugging Face vit_mae folder" in message
    torch.testing.assert_close(
        classifier.backbone.patch_embed.proj.weight, hf.vit.embeddings.patch_embeddings.projection.weight
    )
    assert classifier.backbone.pos_embed.shape == (1, 1 + 4 * N, 32)  # resampled to the 8x8 grid
    assert classifier(torch.randn(2, 3, 2 * IMG, 2 * IMG)).shape == (2, 3)


def _fake_checkpoint(path, stage: str, tensors: dict) -> None:
    torch.save(
        {"network": "mae", "stage": stage, "config": {"train": {"stage": stage}}, "state_dict": tensors}, path
    )


def test_wrong_checkpoint_kind_is_one_line(tmp_path):
    classifier = MAEClassifier(
        VisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=32, depth=1, num_heads=2), 2
    )
    finetuned = {f"model.{k}": v for k, v in classifier.state_dict().items()}
    _fake_checkpoint(tmp_path / "ft.pth", "finetune", finetuned)
    with pytest.raises(
        CheckpointError, match=r"is a mae finetune checkpoint; fine-tuning starts from a mae pretrain"
    ) as err:
        load_finetune_start(classifier, tmp_path / "ft.pth", "vit_tiny_patch16")
    assert "\n" not in str(err.value) and "train.resume_training_checkpoint_path" in str(err.value)
    with pytest.raises(
        CheckpointError, match=r"is a mae finetune checkpoint; pretraining continues.*train.stage=finetune"
    ):
        load_pretrain_start(_tiny_mae(), tmp_path / "ft.pth", "vit_tiny_patch16")
