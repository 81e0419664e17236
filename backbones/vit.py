"""Vision Transformer encoder-decoder over patches (Dosovitskiy et al. 2021, "An Image is
Worth 16x16 Words: Transformers for Image Recognition at Scale", ICLR), built from timm's
``PatchEmbed``, ``Block`` (attention + MLP) and ``trunc_normal_``; no pretrained weights.

The ``T_in`` frames are stacked as channels, (B, T_in*C, H, W), and cut into ``p x p``
patches, embedded to tokens (B, N, D) with ``N = (H/p) * (W/p)`` plus fixed 2-D sin-cos
position embeddings (so any grid of whole patches works). ``depth`` encoder blocks give
the latent tokens (B, N, D), with the patch grid ``(H/p, W/p)`` in ``Latent.skips``;
``decoder_depth`` more blocks and a linear head map every token back to its ``p x p``
patch of the ``T_out`` output frames, (B, T_out, C_out, H, W). This is the
spatio-temporal ViT used as a forecasting baseline in OpenSTL and as the example encoder
of BeamVQ. ``cond`` modulates the token stream before every block (FiLM), in the encoder
and the decoder. H and W must be divisible by ``p``.
"""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed, build_sincos2d_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from physforecast.layers import FiLM, film_tokens, stack_time, unstack_time

from .base import Backbone, Latent, check_divisible, register_backbone

__all__ = ["ViTBackbone"]


class ViTBackbone(Backbone):
    """ViT encoder-decoder behind the backbone contract.

    Parameters
    ----------
    in_steps, out_steps, in_channels, out_channels, cond_dim
        See :class:`~physforecast.backbones.base.Backbone`.
    patch : int
        Patch side ``p``; H and W must be divisible by it.
    hidden : int
        Token width ``D`` (divisible by 4 for the 2-D sin-cos position embedding).
    depth, decoder_depth : int
        Transformer blocks of the encoder and of the decoder.
    heads : int
        Attention heads.
    mlp_ratio : float
        MLP width of each block as a multiple of ``D``.
    drop_path : float
        Stochastic depth rate, growing linearly to this value over the blocks.
    """

    paper = "Dosovitskiy et al. 2021, An Image is Worth 16x16 Words (ICLR)"

    def __init__(
        self,
        in_steps: int,
        out_steps: int,
        in_channels: int,
        out_channels: int | None = None,
        cond_dim: int = 0,
        patch: int = 4,
        hidden: int = 64,
        depth: int = 3,
        decoder_depth: int = 1,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(in_steps, out_steps, in_channels, out_channels, cond_dim)
        if hidden % 4:
            raise ValueError(
                f"ViT hidden must be divisible by 4 (2-D sin-cos embedding); got {hidden}"
            )
        self.patch, self.hidden = int(patch), int(hidden)
        self.embed = PatchEmbed(
            img_size=None,
            patch_size=self.patch,
            in_chans=self.in_steps * self.in_channels,
            embed_dim=hidden,
            strict_img_size=False,
        )
        n_blocks = depth + decoder_depth
        rates = [drop_path * i / max(1, n_blocks - 1) for i in range(n_blocks)]
        blocks = [
            Block(hidden, heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=r) for r in rates
        ]
        self.encoder = nn.ModuleList(blocks[:depth])
        self.decoder = nn.ModuleList(blocks[depth:])
        self.films = (
            nn.ModuleList(FiLM(cond_dim, hidden) for _ in range(n_blocks)) if cond_dim else None
        )
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, self.patch**2 * self.out_steps * self.out_channels)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def _film(self, i: int, tokens: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return film_tokens(self.films[i] if self.films is not None else None, tokens, cond)

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Latent:
        """(B, T_in, C, H, W) -> Latent(z=(B, N, D), skips=((H/p, W/p),))."""
        self.check_input(x, cond)
        height, width = x.shape[-2:]
        check_divisible("ViT", (height, width), self.patch)
        grid = (height // self.patch, width // self.patch)
        tokens = self.embed(stack_time(x))  # (B, N, D)
        pos = build_sincos2d_pos_embed(list(grid), self.hidden, device=x.device, dtype=tokens.dtype)
        tokens = tokens + pos
        for i, block in enumerate(self.encoder):
            tokens = block(self._film(i, tokens, cond))
        return Latent(tokens, (grid,))

    def decode(self, latent: Latent, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Latent -> (B, T_out, C_out, H, W): decoder blocks, then each token to its patch."""
        tokens, ((gh, gw),) = latent.z, latent.skips
        for i, block in enumerate(self.decoder, start=len(self.encoder)):
            tokens = block(self._film(i, tokens, cond))
        patches = self.head(self.norm(tokens))  # (B, N, p*p*T_out*C_out)
        b, p = patches.shape[0], self.patch
        out = patches.reshape(b, gh, gw, p, p, -1).permute(0, 5, 1, 3, 2, 4)
        return unstack_time(out.reshape(b, -1, gh * p, gw * p), self.out_steps)


@register_backbone("vit", paper=ViTBackbone.paper, source="timm")
def vit(**kwargs) -> ViTBackbone:
    """Build a :class:`ViTBackbone`; see its parameters."""
    return ViTBackbone(**kwargs)
