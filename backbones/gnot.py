"""General Neural Operator Transformer (Hao, Wang, Su, Ying, Dong, Liu, Cheng, Song and Zhu
2023, "GNOT: A General Neural Operator Transformer for Operator Learning", ICML).

GNOT treats every grid point as a token and mixes them with *heterogeneous normalized
attention*, a linear attention whose queries and keys are softmax-normalized along the
feature axis, so the weights are positive and each row is normalized exactly::

    q~ = softmax(q), k~ = softmax(k)                     (per head, over features)
    out_t = sum_s (q~_t . k~_s) v_s / sum_s (q~_t . k~_s)  = q~_t (K~^T V) / (q~_t . sum_s k~_s)

which costs O(N D^2) instead of O(N^2 D). Several input functions each get their own
encoder; cross-attention averages over them (the *heterogeneous* part). The feed-forward
layers are a mixture of experts whose weights come from a gating network of the point
coordinates (*geometric gating*), so different regions of the domain can use different
experts.

Grid adaptation: the query points are the ``H*W`` grid points. A query token embeds the
point coordinates and the 3x3 stencil of the ``T_in`` input frames around the point (zero
padding at the edges), so the pointwise layers see local differences (advection by a
cell, a Laplacian) that a global low-rank attention cannot resolve; each input variable
is one input function, embedded pointwise from its ``T_in`` values and the coordinates.

Shapes: x (B, T_in, C, H, W) -> tokens (B, N=H*W, D) -> (B, T_out, C_out, H, W). The
latent is the token sequence after the last block, (B, N, D), with the grid size
``(H, W)`` in ``Latent.skips``. Any grid size works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from torch import nn

from physforecast.layers import (
    FiLM,
    film_tokens,
    grid_coordinates,
    grid_to_tokens,
    stack_time,
    tokens_to_grid,
    unstack_time,
)

from .base import Backbone, Latent, register_backbone

__all__ = [
    "normalized_linear_attention",
    "HeterogeneousNormalizedAttention",
    "GeometricMoEMlp",
    "GNOTBlock",
    "GNOTBackbone",
]


def normalized_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """GNOT's normalized linear attention on (B, heads, N, d) queries and (B, heads, S, d) keys/values.

    Returns (B, heads, N, d): ``softmax(q) (softmax(k)^T v)`` divided row-wise by
    ``softmax(q) . sum_s softmax(k)_s``. Runs in fp32.
    """
    dtype = q.dtype
    q = q.float().softmax(dim=-1)
    k = k.float().softmax(dim=-1)
    context = k.transpose(-1, -2) @ v.float()  # (B, h, d, d)
    norm = (q * k.sum(dim=-2, keepdim=True)).sum(dim=-1, keepdim=True)  # (B, h, N, 1)
    return ((q @ context) / norm.clamp_min(eps)).to(dtype)


class HeterogeneousNormalizedAttention(nn.Module):
    """Multi-head normalized linear attention of tokens (B, N, D) to one or more contexts.

    With ``contexts=None`` it is self-attention; with a list of context token sets
    (each (B, S_f, D)) the outputs of attending to each set are averaged.

    Parameters
    ----------
    dim : int
        Token width ``D``, divisible by ``heads``.
    heads : int
        Number of attention heads.
    """

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"GNOT width {dim} must be divisible by heads={heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        return t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, contexts: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """(B, N, D) queries, optional list of (B, S_f, D) contexts -> (B, N, D)."""
        q = self._split(self.q(x))
        contexts = [x] if contexts is None else list(contexts)
        out = sum(
            normalized_linear_attention(q, self._split(self.k(c)), self._split(self.v(c)))
            for c in contexts
        ) / len(contexts)
        b, _, n, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class GeometricMoEMlp(nn.Module):
    """Mixture of expert MLPs weighted by a gating network of the point coordinates.

    ``out = sum_e g_e(pos) Mlp_e(x)`` with ``g = softmax(gate(pos))`` over experts.

    Parameters
    ----------
    dim : int
        Token width ``D``.
    experts : int
        Number of expert MLPs ``E``.
    mlp_ratio : float
        Hidden width of each expert as a multiple of ``D``.
    coord_dim : int
        Size of the coordinate vector (2 on a plane).
    """

    def __init__(self, dim: int, experts: int = 2, mlp_ratio: float = 2.0, coord_dim: int = 2):
        super().__init__()
        self.experts = nn.ModuleList(Mlp(dim, int(dim * mlp_ratio)) for _ in range(experts))
        self.gate = Mlp(coord_dim, dim, experts)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x (B, N, D), pos (B or 1, N, coord_dim) -> (B, N, D)."""
        weights = self.gate(pos).softmax(dim=-1)  # (., N, E)
        out = weights[..., :1] * self.experts[0](x)
        for e, expert in enumerate(self.experts[1:], start=1):
            out = out + weights[..., e : e + 1] * expert(x)
        return out


class GNOTBlock(nn.Module):
    """Cross-attention to the input functions, gated MoE MLP, self-attention, gated MoE MLP.

    Each sub-layer is pre-norm and residual; ``cond`` modulates the residual stream at the
    start of the block (FiLM on tokens).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        experts: int,
        mlp_ratio: float,
        cond_dim: int = 0,
    ) -> None:
        super().__init__()
        self.film = FiLM(cond_dim, dim) if cond_dim else None
        self.norm_query = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.cross = HeterogeneousNormalizedAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn1 = GeometricMoEMlp(dim, experts, mlp_ratio)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = HeterogeneousNormalizedAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn2 = GeometricMoEMlp(dim, experts, mlp_ratio)

    def forward(
        self,
        x: torch.Tensor,
        contexts: Sequence[torch.Tensor],
        pos: torch.Tensor,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, N, D), contexts [(B, S, D)], pos (1, N, 2), cond (B, P) -> (B, N, D)."""
        x = film_tokens(self.film, x, cond)
        x = x + self.cross(self.norm_query(x), [self.norm_context(c) for c in contexts])
        x = x + self.ffn1(self.norm1(x), pos)
        x = x + self.self_attn(self.norm_self(x))
        return x + self.ffn2(self.norm2(x), pos)


class GNOTBackbone(Backbone):
    """GNOT behind the backbone contract.

    Parameters
    ----------
    in_steps, out_steps, in_channels, out_channels, cond_dim
        See :class:`~physforecast.backbones.base.Backbone`.
    hidden : int
        Token width ``D``.
    n_layers : int
        Number of GNOT blocks (each is two attention and two feed-forward layers). The
        defaults are sized for CPU training; raise ``n_layers`` and ``hidden`` to scale up.
    heads : int
        Attention heads.
    experts : int
        Experts of each geometric-gated feed-forward layer.
    mlp_ratio : float
        Hidden width of the experts and embeddings as a multiple of ``D``.
    """

    paper = (
        "Hao et al. 2023, GNOT: A General Neural Operator Transformer for Operator Learning (ICML)"
    )

    def __init__(
        self,
        in_steps: int,
        out_steps: int,
        in_channels: int,
        out_channels: int | None = None,
        cond_dim: int = 0,
        hidden: int = 32,
        n_layers: int = 1,
        heads: int = 4,
        experts: int = 2,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__(in_steps, out_steps, in_channels, out_channels, cond_dim)
        width = int(hidden * mlp_ratio)
        stencil = 9 * self.in_steps * self.in_channels
        self.query_embed = Mlp(stencil + 2, width, hidden)
        self.input_embeds = nn.ModuleList(
            Mlp(self.in_steps + 2, width, hidden) for _ in range(self.in_channels)
        )
        self.blocks = nn.ModuleList(
            GNOTBlock(hidden, heads, experts, mlp_ratio, cond_dim) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(hidden)
        self.film = FiLM(cond_dim, hidden) if cond_dim else None
        self.head = Mlp(hidden, width, self.out_steps * self.out_channels)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Latent:
        """(B, T_in, C, H, W) -> Latent(z=(B, H*W, D), skips=((H, W),))."""
        self.check_input(x, cond)
        b, t, c, height, width = x.shape
        pos = grid_to_tokens(grid_coordinates(height, width, device=x.device, dtype=x.dtype)[None])
        stencil = F.unfold(stack_time(x), kernel_size=3, padding=1).transpose(1, 2)  # (B, N, 9TC)
        tokens = self.query_embed(torch.cat([stencil, pos.expand(b, -1, -1)], dim=-1))
        frames = x.reshape(b, t, c, height * width).permute(0, 2, 3, 1)  # (B, C, N, T)
        contexts = [
            embed(torch.cat([frames[:, i], pos.expand(b, -1, -1)], dim=-1))
            for i, embed in enumerate(self.input_embeds)
        ]
        for block in self.blocks:
            tokens = block(tokens, contexts, pos, cond)
        return Latent(tokens, ((height, width),))

    def decode(self, latent: Latent, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Latent -> (B, T_out, C_out, H, W) by a pointwise head on the normalized tokens."""
        (size,) = latent.skips
        h = film_tokens(self.film, self.norm(latent.z), cond)
        return unstack_time(tokens_to_grid(self.head(h), size), self.out_steps)


@register_backbone("gnot", paper=GNOTBackbone.paper, source="physforecast")
def gnot(**kwargs) -> GNOTBackbone:
    """Build a :class:`GNOTBackbone`; see its parameters."""
    return GNOTBackbone(**kwargs)
