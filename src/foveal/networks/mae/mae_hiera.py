"""Masked autoencoder on a Hiera encoder (Ryali et al., "Hiera: A Hierarchical Vision Transformer
without the Bells-and-Whistles", ICML 2023, arXiv:2306.00989; MAE, He et al., arXiv:2111.06377).

The pieces are Hugging Face ``transformers``' ``HieraForPreTraining`` ones (multi-scale fusion
heads, ``encoder_norm``, ``HieraDecoder``), initialised by its own ``_init_weights``; the forward is
split into MAE's named stages and matches ``HieraForPreTraining``'s for the same weights and noise:

* :meth:`random_masking` masks whole **mask units** (8x8 tokens = 32x32 px, 7x7 = 49 units at
  224 px) and keeps ``int(49 * (1 - mask_ratio))`` of them (12 at TAO's 0.75);
* :meth:`forward_encoder` runs the encoder on the visible units only (the input of masked units
  is zeroed before the overlapping patch conv), then sums the stage outputs before each query
  pooling (mapped by conv heads to the final width and unit size) with the last stage's, and
  normalises;
* :meth:`forward_decoder` puts a mask token in the masked units, restores raster order (14x14
  tokens), adds a learned position table and runs global-attention blocks; each token predicts
  a 16x16 RGB patch (``pred_stride`` = 4 * 2**2);
* :meth:`forward_loss`: MSE on masked patches against per-patch-normalised pixels. Hiera-MAE
  always normalises (TAO ignores ``train.norm_pix_loss`` for Hiera; so does Foveal).

The encoder is the :class:`~foveal.nn.hiera.Hiera` backbone built with ``num_query_pool=2`` (final
grid 14x14) as in TAO's and HF's MAE configs; its ``encoder`` state dict loads as is into the
fine-tuning backbone (``num_query_pool=3``: query pooling has no parameters). Patch pixels are laid
out ``(c, p, q)`` (channel, row, column), HF's ``decoder_pred`` layout.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from foveal.networks.mae.mae_vit import decoder_heads
from foveal.nn.hiera import Hiera, modeling_hiera


class MaskedAutoencoderHiera(nn.Module):
    """Hiera-MAE: sparse Hiera encoder on visible mask units + multi-scale fusion + light decoder.

    Args:
        encoder: the Hiera backbone, built with ``num_query_pool=2`` (TAO's and HF's MAE).
        decoder_embed_dim: decoder width (Hiera paper and TAO: 512).
        decoder_depth: decoder blocks (Hiera paper and TAO: 8).
        decoder_num_heads: decoder heads (default: width / 32, 16 at 512 as the paper).
        mask_ratio: default fraction of mask units removed.
    """

    def __init__(
        self,
        encoder: Hiera,
        *,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int | None = None,
        mask_ratio: float = 0.6,
    ) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        hf = modeling_hiera()
        config = copy.deepcopy(encoder.config)
        config.decoder_hidden_size = decoder_embed_dim
        config.decoder_depth = decoder_depth
        config.decoder_num_heads = decoder_num_heads or decoder_heads(decoder_embed_dim)
        config.mask_ratio = mask_ratio
        config.normalize_pixel_loss = True
        self.config = config
        self.encoder = encoder
        # The loss never reads the encoder's pooled feature: its LayerNorm gets no gradient here;
        # frozen, it does not trip DDP's unused-parameter check (fine-tuning trains it).
        encoder.norm.requires_grad_(False)
        self.encoder_norm = nn.LayerNorm(encoder.embed_dim, eps=config.layer_norm_eps)
        self.multiscale_fusion = hf.HieraMultiScaleHead(config)
        self.decoder = hf.HieraDecoder(config)
        for module in (self.encoder_norm, *self.multiscale_fusion.modules(), *self.decoder.modules()):
            encoder.hiera._init_weights(module)  # HieraPreTrainedModel's rule (HieraDecoder's tokens too)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = True  # read by the reconstruction grid
        self.patch_size = int(self.decoder.pred_stride)  # each decoder token predicts a 16x16 patch
        self.in_chans = config.num_channels
        self.grid = tuple(self.decoder.tokens_spatial_shape_final)  # (14, 14) at 224 px
        self.num_mask_units = math.prod(encoder.hiera.embeddings.mask_spatial_shape)  # 49 at 224 px

    # ----------------------------------------------------------------------------- pixels

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, C*p*p), each patch laid out (c, p, q) as HF's targets."""
        b, c, h, w = imgs.shape
        p = self.patch_size
        x = imgs.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, L, C*p*p) -> (B, C, H, W); ``grid`` (h, w) in patches, (14, 14) by default."""
        gh, gw = grid or self.grid
        p, c = self.patch_size, self.in_chans
        x = x.reshape(x.shape[0], gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(x.shape[0], c, gh * p, gw * p)

    # ----------------------------------------------------------------------------- stages

    def random_masking(
        self,
        batch_size: int,
        mask_ratio: float,
        noise: torch.Tensor | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """Per-sample random mask units: the ``int(U * (1 - mask_ratio))`` lowest-noise stay visible.

        Args:
            batch_size: B.
            mask_ratio: fraction of mask units removed.
            noise: optional (B, U) scores (uniform if None), U = 49 at 224 px, for reproducible masks.
            device: where to draw the noise when none is given.

        Returns:
            (B, U) bool, True = visible (HF's ``bool_masked_pos`` convention), units in raster order.
        """
        units = self.num_mask_units
        if noise is None:
            noise = torch.rand(batch_size, units, device=device)
        if noise.shape != (batch_size, units):
            raise ValueError(f"noise must have shape {(batch_size, units)}, got {tuple(noise.shape)}")
        len_keep = int(units * (1 - mask_ratio))
        ranks = noise.argsort(dim=1).argsort(dim=1)  # rank of each unit's noise within its sample
        return ranks < len_keep

    def forward_encoder(self, imgs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Encode the visible units and fuse the scales: -> (B, units kept, 2, 2, D), normalised."""
        maps = self.encoder.forward_stages(imgs, keep)  # embedding, then one map per stage
        pools = self.config.num_query_pool
        fused = self.multiscale_fusion([*maps[1 : pools + 1], maps[-1]])
        return self.encoder_norm(fused)

    def forward_decoder(self, latent: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict every patch: -> pred (B, L, C*p*p) and mask (B, L) float, 1 = masked, in raster order."""
        pred, visible = self.decoder(latent, bool_masked_pos=keep)
        return pred, (~visible.bool()).float()

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on masked patches against per-patch-normalised pixels (float32).

        Args:
            imgs: (B, C, H, W).
            pred: (B, L, C*p*p).
            mask: (B, L), 1 = masked.
        """
        target = self.patchify(imgs).float()
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = (pred.float() - target).pow(2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, C, 224, 224) -> (loss, {"pred": (B, L, C*p*p), "mask": (B, L), "visible_units": (B, U)}).

        Args:
            imgs: images.
            mask_ratio: overrides the model's default for this call.
            noise: optional (B, U) masking noise for reproducible runs.
        """
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        keep = self.random_masking(imgs.shape[0], ratio, noise, device=imgs.device)
        latent = self.forward_encoder(imgs, keep)
        pred, mask = self.forward_decoder(latent, keep)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, {"pred": pred, "mask": mask, "visible_units": keep}

    # ----------------------------------------------------------------------------- training

    def no_weight_decay(self) -> set[str]:
        """The decoder's mask token and position table (the encoder declares its own)."""
        return {"decoder.mask_token", "decoder.decoder_position_embeddings"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
