"""Masked autoencoder on a ViT encoder (He et al., "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022, arXiv:2111.06377).

The encoder is :class:`foveal.nn.VisionTransformer` and sees only the visible patches plus the
class token: at mask ratio 0.75 it runs on a quarter of the tokens, which is where MAE's speed
comes from. A light decoder (``decoder_embed_dim`` wide, ``decoder_depth`` blocks) re-inserts a
shared mask token at the removed positions, adds a fixed 2-D sin-cos position table and predicts
the pixels of every patch; the loss is the MSE on the removed patches only, against
per-patch-normalised pixels when ``norm_pix_loss`` is on.

Stages follow the reference ``models_mae.py``: :meth:`random_masking`, :meth:`forward_encoder`,
:meth:`forward_decoder`, :meth:`forward_loss`. Patch pixels are laid out ``(p, q, c)`` (row in
the patch, column in the patch, channel), as in the reference and Hugging Face ``ViTMAE``.
"""

from __future__ import annotations

import torch
from torch import nn

from foveal.nn.layers import Block
from foveal.nn.pos_embed import build_2d_sincos_pos_embed, grid_from_num_patches, resample_patch_pos_embed
from foveal.nn.vit import VisionTransformer


def decoder_heads(dim: int, head_dim: int = 32) -> int:
    """Attention heads for a decoder of width ``dim``: MAE's 16 heads of 32 channels at 512."""
    heads = max(1, dim // head_dim)
    while dim % heads:
        heads -= 1
    return heads


class MaskedAutoencoderViT(nn.Module):
    """MAE pretraining model: ViT encoder on visible patches + light transformer decoder.

    Args:
        encoder: the ViT; built with ``pos_embed_type="sincos"`` for MAE's fixed table.
        decoder_embed_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_num_heads: decoder attention heads (default: width / 32).
        decoder_mlp_hidden_dim: decoder MLP width (default: 4 x width).
        mask_ratio: default fraction of patches removed per image.
        norm_pix_loss: normalise each target patch by its own mean and std.
        norm_eps: decoder LayerNorm epsilon (MAE 1e-6; HF ViTMAE 1e-12).
        act_layer: decoder MLP activation.
        init_mae: re-initialise all weights as the reference does (xavier-uniform Linear layers,
            N(0, 0.02) tokens); off when weights are loaded right after.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        *,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int | None = None,
        decoder_mlp_hidden_dim: int | None = None,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        norm_eps: float = 1e-6,
        act_layer: str = "gelu",
        init_mae: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.encoder = encoder
        # The iBOT mask token of the backbone is not part of MAE: keep it out of the optimiser
        # (and out of DDP's unused-parameter check).
        encoder.mask_token.requires_grad_(False)
        self.patch_size = encoder.patch_size
        self.in_chans = encoder.patch_embed.proj.in_channels
        self.patch_grid = encoder.patch_grid
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss

        num_patches = self.patch_grid[0] * self.patch_grid[1]
        heads = decoder_num_heads or decoder_heads(decoder_embed_dim)
        hidden = decoder_mlp_hidden_dim or 4 * decoder_embed_dim
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, 1 + num_patches, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, heads, hidden, True, "mlp", act_layer, None, 0.0, norm_eps)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=norm_eps)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.patch_size**2 * self.in_chans)
        with torch.no_grad():
            self.decoder_pos_embed.copy_(build_2d_sincos_pos_embed(*self.patch_grid, decoder_embed_dim))
        if init_mae:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The reference initialisation: xavier-uniform Linear layers (patch projection
        included), unit LayerNorms, N(0, 0.02) class and mask tokens; sin-cos tables kept."""
        enc = self.encoder
        nn.init.xavier_uniform_(enc.patch_embed.proj.weight.view(enc.embed_dim, -1))
        if enc.patch_embed.proj.bias is not None:
            nn.init.zeros_(enc.patch_embed.proj.bias)
        nn.init.normal_(enc.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------------------- pixels

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, p*p*C), pixels ordered (p, q, c)."""
        b, c, h, w = imgs.shape
        p = self.patch_size
        x = imgs.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W); ``grid`` (h, w) in patches, square by default."""
        b, n, _ = x.shape
        gh, gw = grid or grid_from_num_patches(n)
        p, c = self.patch_size, self.in_chans
        x = x.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, gh * p, gw * p)

    # ------------------------------------------------------------------------------- stages

    def random_masking(
        self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep a random ``1 - mask_ratio`` of the tokens of each sample.

        Args:
            x: (B, N, D) patch tokens.
            mask_ratio: fraction removed; ``int(N * (1 - mask_ratio))`` tokens are kept.
            noise: optional (B, N); the tokens with the smallest noise are kept (inject it for
                reproducible tests; uniform random otherwise).

        Returns:
            ``x_visible`` (B, N_keep, D) in ascending-noise order, ``mask`` (B, N) float with 1
            for removed patches (in the original order), ``ids_restore`` (B, N) that undoes the
            shuffle.
        """
        b, n, d = x.shape
        keep = int(n * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(b, n, device=x.device)
        ids_shuffle = torch.argsort(noise.to(x.device), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        return x_visible, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches: (B, C, H, W) -> latent (B, P + N_keep, D), mask, ids_restore.

        ``P`` is the number of prefix tokens (1: the class token). Position embeddings are added
        before masking, so each visible token keeps its place in the image.
        """
        tokens = self.encoder.prepare_tokens(imgs)
        visible, mask, ids_restore = self.random_masking(tokens, mask_ratio, noise)
        prefix = self.encoder.prefix_tokens(visible.shape[0]).to(visible.dtype)
        latent = self.encoder.forward_blocks(torch.cat([prefix, visible], dim=1))
        return self.encoder.norm(latent), mask, ids_restore

    def _decoder_pos(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.patch_grid:
            return self.decoder_pos_embed
        patch_pos = resample_patch_pos_embed(self.decoder_pos_embed[:, 1:], self.patch_grid, grid)
        return torch.cat([self.decoder_pos_embed[:, :1], patch_pos], dim=1)

    def forward_decoder(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Predict every patch: latent (B, P + N_keep, D) -> pixels (B, N, p*p*C).

        ``grid`` is the (h, w) patch grid of the images (default: the one built for).
        """
        x = self.decoder_embed(latent)
        b, length, dim = x.shape
        prefix = self.encoder.num_prefix_tokens
        n = ids_restore.shape[1]
        grid = grid or (self.patch_grid if n == self.patch_grid[0] * self.patch_grid[1] else None)
        grid = grid or grid_from_num_patches(n)
        mask_tokens = self.mask_token.to(x.dtype).expand(b, n + prefix - length, -1)
        patches = torch.cat([x[:, prefix:], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
        pos = self._decoder_pos(grid).to(x.dtype)
        x = torch.cat([x[:, :prefix] + pos[:, :1], patches + pos[:, 1:]], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        # The prefix tokens' predictions are discarded: project the patch tokens only.
        return self.decoder_pred(self.decoder_norm(x[:, prefix:]))

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on removed patches (float32 whatever the autocast dtype).

        Args:
            imgs: (B, C, H, W).
            pred: (B, N, p*p*C).
            mask: (B, N), 1 = removed.
        """
        target = self.patchify(imgs).float()
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = (pred.float() - target).pow(2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, C, H, W) -> (loss, {"pred": (B, N, p*p*C), "mask": (B, N), "ids_restore": (B, N)})."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, noise)
        grid = (imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size)
        pred = self.forward_decoder(latent, ids_restore, grid)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, {"pred": pred, "mask": mask, "ids_restore": ids_restore}

    # ------------------------------------------------------------------------------- training

    def no_weight_decay(self) -> set[str]:
        """Token and position-table names (biases and norms are excluded by shape)."""
        names = {f"encoder.{n}" for n in self.encoder.no_weight_decay()}
        return names | {"mask_token", "decoder_pos_embed"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
