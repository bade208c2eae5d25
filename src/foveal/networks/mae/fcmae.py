"""FCMAE: fully convolutional masked autoencoder pre-training for ConvNeXt V2.

Woo et al., "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders" (CVPR 2023,
arXiv:2301.00808), following MAE (He et al., arXiv:2111.06377) in its stages and loss: random
masking of 60% of the 32x32 patches, an encoder that sees only the visible ones, a light decoder
that fills masked positions with a learned token, and a pixel loss on the masked patches only.

The encoder is the ``ConvNeXtV2`` backbone run with masked dense convolution (see
``foveal.nn.convnextv2``), so no sparse-conv library is needed and the pre-trained
``encoder`` state dict loads as is into ``create_backbone(arch)`` for fine-tuning. The decoder is
a 1x1 projection, ``decoder_depth`` ConvNeXt V2 blocks and a 1x1 prediction of each patch's
pixels. Masks follow MAE: (B, L) floats, 0 = visible, 1 = masked, L = (H/32) * (W/32), row-major.
"""

from __future__ import annotations

import torch
from torch import nn

from foveal.nn import ConvNeXtV2, create_backbone
from foveal.nn.convnextv2 import Block


class FCMAE(nn.Module):
    """ConvNeXt V2 encoder + convolutional decoder predicting the pixels of masked patches.

    Args:
        encoder: the backbone; its stride (32) is the masking patch size.
        img_size: training image size; sets the default mask grid.
        decoder_depth: ConvNeXt V2 blocks in the decoder.
        decoder_embed_dim: decoder width.
        mask_ratio: default fraction of patches masked.
        norm_pix_loss: regress per-patch normalised pixels (mean 0, variance 1), as MAE.
        in_chans: image channels.
    """

    def __init__(
        self,
        encoder: ConvNeXtV2,
        *,
        img_size: int,
        decoder_depth: int = 1,
        decoder_embed_dim: int = 512,
        mask_ratio: float = 0.6,
        norm_pix_loss: bool = True,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.encoder = encoder
        self.patch_size = encoder.patch_size
        if img_size % self.patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of the patch size {self.patch_size}")
        self.grid = (img_size // self.patch_size, img_size // self.patch_size)
        self.in_chans = in_chans
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        # The decoder reads the encoder's pre-norm map, so the final norm gets no gradient here;
        # frozen, it does not trip DDP's unused-parameter check. Fine-tuning trains it.
        encoder.norm.requires_grad_(False)

        self.proj = nn.Conv2d(encoder.embed_dim, decoder_embed_dim, kernel_size=1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_embed_dim, 1, 1))
        self.decoder = nn.Sequential(*(Block(decoder_embed_dim) for _ in range(decoder_depth)))
        self.pred = nn.Conv2d(decoder_embed_dim, self.patch_size**2 * in_chans, kernel_size=1)
        self._init_decoder()

    @torch.no_grad()
    def _init_decoder(self) -> None:
        for module in (self.proj, *self.decoder.modules(), self.pred):
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """The mask token (the encoder declares its own names; biases and norms go by shape)."""
        return {"mask_token"}

    # ----------------------------------------------------------------------------- patches

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, h*p, w*p) -> (B, h*w, p*p*C), each patch flattened as (row, column, channel)."""
        b, c, height, width = imgs.shape
        p = self.patch_size
        h, w = height // p, width // p
        x = imgs.reshape(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, h * w, p * p * c)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, h*w, p*p*C) -> (B, C, h*p, w*p); ``grid`` (h, w) defaults to the training grid."""
        h, w = grid or self.grid
        p, c = self.patch_size, self.in_chans
        x = x.reshape(x.shape[0], h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], c, h * p, w * p)

    # ----------------------------------------------------------------------------- stages

    def random_masking(
        self,
        batch_size: int,
        mask_ratio: float,
        noise: torch.Tensor | None = None,
        *,
        grid: tuple[int, int] | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """Per-sample random mask: the ``int(L * (1 - mask_ratio))`` lowest-noise patches stay visible.

        Args:
            batch_size: B.
            mask_ratio: fraction of patches to mask.
            noise: optional (B, L) scores (uniform [0, 1) if None) for reproducible masks.
            grid: (h, w) patch grid; the training grid by default.
            device: where to draw the noise when none is given.

        Returns:
            (B, L) float mask, 0 = visible, 1 = masked.
        """
        h, w = grid or self.grid
        length = h * w
        if noise is None:
            noise = torch.rand(batch_size, length, device=device)
        if noise.shape != (batch_size, length):
            raise ValueError(f"noise must have shape {(batch_size, length)}, got {tuple(noise.shape)}")
        len_keep = int(length * (1 - mask_ratio))
        ranks = noise.argsort(dim=1).argsort(dim=1)  # rank of each patch's noise within its sample
        return (ranks >= len_keep).float()

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask and encode: (B, C, H, W) -> latent (B, D, h, w) (zero where masked), mask (B, L)."""
        grid = (imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size)
        mask = self.random_masking(imgs.shape[0], mask_ratio, noise, grid=grid, device=imgs.device)
        return self.encoder.forward_stages(imgs, masks=mask.bool()), mask

    def forward_decoder(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Fill masked positions with the mask token and decode: -> pred (B, L, p*p*C)."""
        x = self.proj(latent)
        b, _, h, w = x.shape
        masked = mask.reshape(b, 1, h, w).to(x.dtype)
        x = x * (1.0 - masked) + self.mask_token.to(x.dtype) * masked
        x = self.pred(self.decoder(x))  # (B, p*p*C, h, w)
        return x.flatten(2).transpose(1, 2)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over masked patches only (float32).

        Args:
            imgs: (B, C, H, W).
            pred: (B, L, p*p*C).
            mask: (B, L), 1 = masked.
        """
        target = self.patchify(imgs).float()
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        loss = (pred.float() - target).pow(2).mean(dim=-1)  # (B, L)
        mask = mask.float()
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(
        self, imgs: torch.Tensor, noise: torch.Tensor | None = None, mask_ratio: float | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, C, H, W) -> (loss, {"pred": (B, L, p*p*C), "mask": (B, L)}).

        Args:
            imgs: images, H and W multiples of 32.
            noise: optional (B, L) masking noise for reproducible runs.
            mask_ratio: overrides the model's default for this call.
        """
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask = self.forward_encoder(imgs, ratio, noise)
        pred = self.forward_decoder(latent, mask)
        return self.forward_loss(imgs, pred, mask), {"pred": pred, "mask": mask}


def build_fcmae(
    arch: str,
    *,
    img_size: int,
    decoder_depth: int = 1,
    decoder_embed_dim: int = 512,
    mask_ratio: float = 0.6,
    norm_pix_loss: bool = True,
    drop_path_rate: float = 0.0,
    **backbone_overrides: object,
) -> FCMAE:
    """FCMAE around the registered ConvNeXt V2 ``arch`` (``convnextv2_atto`` ... ``convnextv2_huge``).

    ``backbone_overrides`` (e.g. ``depths``, ``dims`` for tests) go to ``create_backbone``.

    Raises:
        ValueError: ``arch`` is not a ConvNeXt V2, or ``img_size`` is not a multiple of 32.
    """
    encoder = create_backbone(arch, img_size=img_size, drop_path_rate=drop_path_rate, **backbone_overrides)
    if not isinstance(encoder, ConvNeXtV2):
        raise ValueError(f"FCMAE needs a ConvNeXt V2 arch (convnextv2_*), got {arch!r}")
    return FCMAE(
        encoder,
        img_size=img_size,
        decoder_depth=decoder_depth,
        decoder_embed_dim=decoder_embed_dim,
        mask_ratio=mask_ratio,
        norm_pix_loss=norm_pix_loss,
    )
