"""Diffusion transformers (DiT) that denoise physical fields or latent clips.

Two denoisers with one call signature (the *denoiser protocol* that the flow-matching and
DDPM processes, the samplers and guidance use)::

    out = denoiser(x, timestep, params=None, history=None, drop_params=None, guidance=None)

- ``x`` (B, C, T, H, W) noisy clip (or (B, C, H, W), one frame); ``out`` has its shape
  with ``out_channels`` channels;
- ``timestep`` (B,) or a scalar: the noise level in scheduler units (flow matching:
  ``1000 * sigma``; DDPM / DDIM: the integer step);
- ``params`` (B, P) physical parameters (normalized), or None: the unconditioned branch;
- ``history`` (B, C_h, H, W) or (B, C_h, T_h, H, W): what the sample is conditioned on
  besides the parameters (past frames or latents on the same grid);
- ``drop_params`` (B,) bool: samples whose parameters are replaced by the learned null
  embedding (condition dropout; the unconditional branch of classifier-free guidance);
- ``guidance`` (B,) or scalar: the guidance scale, for a guidance-distilled student
  (built with ``guidance_embed=True``).

:class:`DiTDenoiser` stacks :class:`DiTBlock` (Hunyuan-DiT): AdaLN modulation by
``noise level + parameter embedding + pooled history [+ guidance]``, QK-norm, float32
LayerNorms, U-ViT long skips (concat -> float32 LayerNorm -> Linear) from the first half to
the second, RoPE on q/k; the history is also concatenated to every frame's channels.
:class:`MMDiTDenoiser` is HunyuanVideo's dual-stream -> single-stream design: the second
stream carries condition tokens (one parameter token, the history's patch tokens), the
two streams attend jointly in :class:`DualStreamBlock` and are merged into one sequence
for :class:`SingleStreamBlock`. Attention goes through
:func:`torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .embeddings import FP32LayerNorm, ParamEmbedder, TimestepEmbedder
from .rope import apply_rope, centered_positions, default_split, grid_positions, rope_angles

__all__ = [
    "Attention",
    "DiTBlock",
    "DiTDenoiser",
    "DualStreamBlock",
    "FinalLayer",
    "MMDiTDenoiser",
    "SingleStreamBlock",
    "modulate",
]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation of tokens (B, N, D) by per-sample ``shift, scale`` (B, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _gelu_mlp(dim: int, mlp_ratio: float) -> nn.Sequential:
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
    )


class Attention(nn.Module):
    """Multi-head self-attention with QK-norm and RoPE, through SDPA.

    Parameters
    ----------
    dim : int
        Token width ``D``.
    heads : int
        Number of heads (``D`` divisible by it).
    qk_norm : bool
        Float32 LayerNorm over each head's queries and keys before the dot product
        (bounds the logits whatever the projection weights grow to).
    """

    def __init__(self, dim: int, heads: int, *, qk_norm: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = FP32LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = FP32LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, 3D) -> q, k, v (B, heads, N, head_dim), q and k normalized."""
        b, n, _ = qkv.shape
        q, k, v = qkv.reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return self.q_norm(q), self.k_norm(k), v

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        angles: torch.Tensor | None,
    ) -> torch.Tensor:
        """SDPA of (B, heads, N, head_dim) with RoPE ``angles`` (N, head_dim // 2) -> (B, N, D)."""
        if angles is not None:
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d)

    def logits(self, x: torch.Tensor, angles: torch.Tensor | None = None) -> torch.Tensor:
        """The pre-softmax attention logits (B, heads, N, N) (for tests and diagnostics)."""
        q, k, _ = self.split_heads(self.qkv(x))
        if angles is not None:
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        return q @ k.transpose(-1, -2) / self.head_dim**0.5

    def forward(self, x: torch.Tensor, angles: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        return self.proj(self.attend(*self.split_heads(self.qkv(x)), angles))


class DiTBlock(nn.Module):
    """Hunyuan-DiT block with AdaLN-zero conditioning and an optional long skip.

    ``x = Linear(LN32(cat(x, skip)))`` (skip blocks only), then
    ``x += gate1 * Attn(modulate(LN32(x)), rope)`` and ``x += gate2 * MLP(modulate(LN32(x)))``
    with ``shift, scale, gate`` from the conditioning vector; the modulation is
    zero-initialized, so a fresh block is the identity.

    Parameters
    ----------
    dim, heads : int
        Token width and number of heads.
    mlp_ratio : float
        MLP hidden width over ``dim``.
    qk_norm : bool
        QK-norm in the attention.
    skip : bool
        Whether the block takes a long skip from the first half of the network.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        mlp_ratio: float = 4.0,
        qk_norm: bool = True,
        skip: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(dim, heads, qk_norm=qk_norm)
        self.norm2 = FP32LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.mlp = _gelu_mlp(dim, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)
        if skip:
            self.skip_norm = FP32LayerNorm(2 * dim, eps=1e-6)
            self.skip_linear = nn.Linear(2 * dim, dim)
        else:
            self.skip_norm = None
            self.skip_linear = None

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        angles: torch.Tensor | None = None,
        skip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokens (B, N, D), conditioning (B, D), RoPE angles (N, head_dim // 2), skip
        (B, N, D) -> (B, N, D)."""
        if self.skip_linear is not None:
            if skip is None:
                raise ValueError("this DiTBlock was built with skip=True and needs a skip")
            x = self.skip_linear(self.skip_norm(torch.cat([x, skip], dim=-1)))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1), angles)
        x = x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class DualStreamBlock(nn.Module):
    """HunyuanVideo's double-stream block: field and condition tokens with separate
    weights and modulation, one joint attention over both sequences.

    Parameters
    ----------
    dim, heads : int
        Token width and number of heads.
    mlp_ratio : float
        MLP hidden width over ``dim``.
    qk_norm : bool
        QK-norm in both streams.
    """

    def __init__(
        self, dim: int, heads: int, *, mlp_ratio: float = 4.0, qk_norm: bool = True
    ) -> None:
        super().__init__()
        self.streams = nn.ModuleList()
        for _ in range(2):
            stream = nn.Module()
            stream.norm1 = FP32LayerNorm(dim, eps=1e-6, elementwise_affine=False)
            stream.attn = Attention(dim, heads, qk_norm=qk_norm)
            stream.norm2 = FP32LayerNorm(dim, eps=1e-6, elementwise_affine=False)
            stream.mlp = _gelu_mlp(dim, mlp_ratio)
            stream.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
            nn.init.zeros_(stream.ada[1].weight)
            nn.init.zeros_(stream.ada[1].bias)
            self.streams.append(stream)

    def forward(
        self,
        x: torch.Tensor,
        cond_tokens: torch.Tensor,
        c: torch.Tensor,
        angles: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Field tokens (B, N, D), condition tokens (B, M, D), conditioning (B, D), RoPE
        angles of all N + M tokens -> updated (field, condition) tokens."""
        sequences = (x, cond_tokens)
        mods, qs, ks, vs = [], [], [], []
        for stream, tokens in zip(self.streams, sequences):
            mod = stream.ada(c).chunk(6, dim=-1)
            mods.append(mod)
            q, k, v = stream.attn.split_heads(
                stream.attn.qkv(modulate(stream.norm1(tokens), *mod[:2]))
            )
            qs.append(q)
            ks.append(k)
            vs.append(v)
        joint = self.streams[0].attn.attend(
            torch.cat(qs, dim=2), torch.cat(ks, dim=2), torch.cat(vs, dim=2), angles
        )
        outs = joint.split([x.shape[1], cond_tokens.shape[1]], dim=1)
        updated = []
        for stream, tokens, mod, attn_out in zip(self.streams, sequences, mods, outs):
            shift1, scale1, gate1, shift2, scale2, gate2 = mod
            tokens = tokens + gate1.unsqueeze(1) * stream.attn.proj(attn_out)
            h = modulate(stream.norm2(tokens), shift2, scale2)
            updated.append(tokens + gate2.unsqueeze(1) * stream.mlp(h))
        return updated[0], updated[1]


class SingleStreamBlock(nn.Module):
    """HunyuanVideo's single-stream block: one ``linear1`` gives ``qkv`` and the MLP's
    hidden layer (attention and MLP in parallel), ``linear2(cat(attn, gelu(mlp)))`` a
    gated residual.

    Parameters
    ----------
    dim, heads : int
        Token width and number of heads.
    mlp_ratio : float
        MLP hidden width over ``dim``.
    qk_norm : bool
        QK-norm.
    """

    def __init__(
        self, dim: int, heads: int, *, mlp_ratio: float = 4.0, qk_norm: bool = True
    ) -> None:
        super().__init__()
        self.dim, self.mlp_hidden = dim, int(dim * mlp_ratio)
        self.norm = FP32LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(dim, heads, qk_norm=qk_norm)
        self.attn.qkv = nn.Linear(dim, 3 * dim + self.mlp_hidden)  # qkv || mlp hidden
        self.attn.proj = nn.Identity()
        self.linear2 = nn.Linear(dim + self.mlp_hidden, dim)
        self.act = nn.GELU(approximate="tanh")
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, angles: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tokens (B, N, D), conditioning (B, D), RoPE angles (N, head_dim // 2) -> (B, N, D)."""
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)
        h = self.attn.qkv(modulate(self.norm(x), shift, scale))
        qkv, mlp = h.split([3 * self.dim, self.mlp_hidden], dim=-1)
        attn_out = self.attn.attend(*self.attn.split_heads(qkv), angles)
        return x + gate.unsqueeze(1) * self.linear2(torch.cat([attn_out, self.act(mlp)], dim=-1))


class FinalLayer(nn.Module):
    """AdaLN (shift, scale) then a linear map of each token to its patch's values; both
    zero-initialized, so a fresh denoiser outputs zeros."""

    def __init__(self, dim: int, out_features: int) -> None:
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_features)
        for layer in (self.ada[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(B, N, D), (B, D) -> (B, N, out_features)."""
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class _PatchDenoiser(nn.Module):
    """What both denoisers share: input checks, patching, the conditioning vector, RoPE
    angles and unpatching."""

    def __init__(
        self,
        in_channels: int,
        *,
        out_channels: int | None,
        cond_dim: int,
        history_channels: int,
        hidden: int,
        heads: int,
        patch: Sequence[int],
        rope: str | None,
        rope_theta: float,
        rope_base: int | None,
        guidance_embed: bool,
        embed_in_channels: int,
    ) -> None:
        super().__init__()
        patch = tuple(int(p) for p in patch)
        if len(patch) != 3:
            raise ValueError(f"patch must be (pt, ph, pw); got {patch}")
        if rope not in (None, "3d", "centered"):
            raise ValueError(f"rope must be '3d', 'centered' or None; got {rope!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.cond_dim = cond_dim
        self.history_channels = history_channels
        self.hidden, self.heads, self.patch = hidden, heads, patch
        self.head_dim = hidden // heads
        self.rope, self.rope_theta, self.rope_base = rope, float(rope_theta), rope_base
        self.rope_split = default_split(self.head_dim) if rope else None
        self.guidance_embed = guidance_embed
        self.x_embed = nn.Conv3d(embed_in_channels, hidden, kernel_size=patch, stride=patch)
        self.t_embed = TimestepEmbedder(hidden)
        self.p_embed = ParamEmbedder(cond_dim, hidden) if cond_dim else None
        self.g_embed = TimestepEmbedder(hidden) if guidance_embed else None
        self.final = FinalLayer(hidden, self.out_channels * patch[0] * patch[1] * patch[2])

    # -- inputs -------------------------------------------------------------------------
    def _check(
        self, x: torch.Tensor, history: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        single = x.ndim == 4
        if single:
            x = x.unsqueeze(2)
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must be (B, {self.in_channels}, T, H, W) or (B, {self.in_channels}, H, W); "
                f"got {tuple(x.shape)}"
            )
        for n, p, axis in zip(x.shape[2:], self.patch, "THW"):
            if n % p:
                raise ValueError(f"{axis}={n} is not divisible by the patch size {p}")
        if self.history_channels:
            if history is None:
                raise ValueError(
                    f"this denoiser is conditioned on history ({self.history_channels} channels); "
                    "pass history=(B, C_h, H, W)"
                )
            if history.ndim == 5:
                history = history.flatten(1, 2)
            if (
                history.ndim != 4
                or history.shape[1] != self.history_channels
                or history.shape[0] != x.shape[0]
                or history.shape[-2:] != x.shape[-2:]
            ):
                raise ValueError(
                    f"history must be (B, {self.history_channels}, H, W) on x's grid "
                    f"{tuple(x.shape[-2:])}; got {tuple(history.shape)}"
                )
        elif history is not None:
            raise ValueError("this denoiser was built with history_channels=0 and takes no history")
        return x, history, single

    def _vector(
        self,
        timestep: torch.Tensor | float,
        params: torch.Tensor | None,
        drop_params: torch.Tensor | None,
        guidance: torch.Tensor | float | None,
        batch: int,
        device: torch.device,
    ) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float32, device=device).reshape(-1)
        c = self.t_embed(t.expand(batch) if t.numel() == 1 else t)
        if self.p_embed is not None:
            c = c + self.p_embed(params, drop_params, batch)
        elif params is not None:
            raise ValueError("this denoiser was built with cond_dim=0 and takes no params")
        if self.g_embed is not None:
            if guidance is None:
                raise ValueError("this guidance-distilled denoiser needs guidance=<scale>")
            g = torch.as_tensor(guidance, dtype=torch.float32, device=device).reshape(-1)
            c = c + self.g_embed(1000.0 * (g.expand(batch) if g.numel() == 1 else g))
        return c

    def _angles(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor | None:
        if self.rope is None:
            return None
        t, h, w = grid
        if self.rope == "3d":
            positions = grid_positions(grid, device=device)
        else:
            base = self.rope_base or max(h, w)
            hw = centered_positions((h, w), base, device=device)
            times = torch.arange(t, dtype=torch.float32, device=device)
            positions = torch.cat(
                [times.repeat_interleave(h * w).reshape(-1, 1), hw.repeat(t, 1)], dim=1
            )
        return rope_angles(positions, self.rope_split, self.rope_theta)

    def _unpatch(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        b = tokens.shape[0]
        (t, h, w), (pt, ph, pw) = grid, self.patch
        out = tokens.reshape(b, t, h, w, self.out_channels, pt, ph, pw)
        out = out.permute(0, 4, 1, 5, 2, 6, 3, 7)
        return out.reshape(b, self.out_channels, t * pt, h * ph, w * pw)


class DiTDenoiser(_PatchDenoiser):
    """Hunyuan-DiT-style denoiser of (B, C, T, H, W) clips (see the module docstring).

    Parameters
    ----------
    in_channels : int
        Channels ``C`` of the noisy input.
    out_channels : int, optional
        Channels of the output (velocity, noise or ``v``); ``in_channels`` by default.
    cond_dim : int
        Number of physical parameters ``P`` (0: none).
    history_channels : int
        Channels of the history condition (``C_h * T_h`` for a 5-D history; 0: none).
    hidden, depth, heads : int
        Token width, number of blocks (even when ``long_skip``), attention heads.
    patch : tuple of int
        ``(pt, ph, pw)`` patch size; T, H, W must be divisible by it.
    mlp_ratio : float
        MLP width over ``hidden``.
    qk_norm, long_skip : bool
        QK-norm; U-ViT long skips from the first half to the second (Hunyuan-DiT).
    rope : {"3d", "centered", None}
        3-D RoPE on integer ``(t, h, w)`` token positions, or integer ``t`` with
        Hunyuan-DiT's centred interpolated ``(h, w)`` (on a ``rope_base`` square grid).
    rope_theta : float
        RoPE frequency base.
    rope_base : int, optional
        Base grid side of ``rope="centered"`` (the largest token-grid side by default).
    guidance_embed : bool
        Take the guidance scale as an input (guidance-distilled student).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        out_channels: int | None = None,
        cond_dim: int = 0,
        history_channels: int = 0,
        hidden: int = 128,
        depth: int = 6,
        heads: int = 4,
        patch: Sequence[int] = (1, 2, 2),
        mlp_ratio: float = 4.0,
        qk_norm: bool = True,
        long_skip: bool = True,
        rope: str | None = "3d",
        rope_theta: float = 256.0,
        rope_base: int | None = None,
        guidance_embed: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels=out_channels,
            cond_dim=cond_dim,
            history_channels=history_channels,
            hidden=hidden,
            heads=heads,
            patch=patch,
            rope=rope,
            rope_theta=rope_theta,
            rope_base=rope_base,
            guidance_embed=guidance_embed,
            embed_in_channels=in_channels + history_channels,
        )
        if long_skip and depth % 2:
            raise ValueError(f"long skips need an even depth; got {depth}")
        self.depth, self.long_skip = depth, long_skip
        half = depth // 2
        self.blocks = nn.ModuleList(
            DiTBlock(
                hidden,
                heads,
                mlp_ratio=mlp_ratio,
                qk_norm=qk_norm,
                skip=long_skip and layer > half,
            )
            for layer in range(depth)
        )
        if history_channels:
            self.h_embed = nn.Sequential(
                nn.Conv2d(
                    history_channels, hidden, kernel_size=self.patch[1:], stride=self.patch[1:]
                ),
                nn.GELU(approximate="tanh"),
            )
            self.h_pool = nn.Linear(hidden, hidden)
        else:
            self.h_embed = None
            self.h_pool = None

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor | float,
        params: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
        drop_params: torch.Tensor | None = None,
        guidance: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """Denoiser output of the shape of ``x`` with ``out_channels`` channels."""
        x, history, single = self._check(x, history)
        b = x.shape[0]
        c = self._vector(timestep, params, drop_params, guidance, b, x.device)
        inp = x
        if history is not None:
            inp = torch.cat([x, history.unsqueeze(2).expand(-1, -1, x.shape[2], -1, -1)], dim=1)
            pooled = self.h_embed(history.to(x.dtype)).flatten(2).mean(dim=-1)
            c = c + self.h_pool(pooled)
        h = self.x_embed(inp)
        grid = tuple(h.shape[2:])
        tokens = h.flatten(2).transpose(1, 2)
        angles = self._angles(grid, x.device)
        half = self.depth // 2
        skips: list[torch.Tensor] = []
        for layer, block in enumerate(self.blocks):
            skip = skips.pop() if self.long_skip and layer > half else None
            tokens = block(tokens, c, angles, skip)
            if self.long_skip and layer < half - 1:
                skips.append(tokens)
        out = self._unpatch(self.final(tokens, c), grid)
        return out[:, :, 0] if single else out


class MMDiTDenoiser(_PatchDenoiser):
    """HunyuanVideo-style dual-stream -> single-stream denoiser (see the module docstring).

    The condition stream holds one token for the physical parameters (the null embedding
    when they are dropped) and, with ``history_channels``, the history's patch tokens
    (RoPE time position ``-1``, the field's ``(h, w)`` positions); the parameter token is
    not rotated. The conditioning vector is ``noise level + parameters [+ guidance]``.

    Parameters
    ----------
    in_channels, out_channels, cond_dim, history_channels, hidden, heads, patch, mlp_ratio,
    qk_norm, rope, rope_theta, rope_base, guidance_embed
        As in :class:`DiTDenoiser`.
    double_depth, single_depth : int
        Number of dual-stream and single-stream blocks.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        out_channels: int | None = None,
        cond_dim: int = 0,
        history_channels: int = 0,
        hidden: int = 128,
        double_depth: int = 2,
        single_depth: int = 4,
        heads: int = 4,
        patch: Sequence[int] = (1, 2, 2),
        mlp_ratio: float = 4.0,
        qk_norm: bool = True,
        rope: str | None = "3d",
        rope_theta: float = 256.0,
        rope_base: int | None = None,
        guidance_embed: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels=out_channels,
            cond_dim=cond_dim,
            history_channels=history_channels,
            hidden=hidden,
            heads=heads,
            patch=patch,
            rope=rope,
            rope_theta=rope_theta,
            rope_base=rope_base,
            guidance_embed=guidance_embed,
            embed_in_channels=in_channels,
        )
        self.double_blocks = nn.ModuleList(
            DualStreamBlock(hidden, heads, mlp_ratio=mlp_ratio, qk_norm=qk_norm)
            for _ in range(double_depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(hidden, heads, mlp_ratio=mlp_ratio, qk_norm=qk_norm)
            for _ in range(single_depth)
        )
        self.param_token = nn.Linear(hidden, hidden)
        if history_channels:
            self.h_embed = nn.Conv2d(
                history_channels, hidden, kernel_size=self.patch[1:], stride=self.patch[1:]
            )
        else:
            self.h_embed = None

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor | float,
        params: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
        drop_params: torch.Tensor | None = None,
        guidance: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """Denoiser output of the shape of ``x`` with ``out_channels`` channels."""
        x, history, single = self._check(x, history)
        b = x.shape[0]
        c = self._vector(timestep, params, drop_params, guidance, b, x.device)
        h = self.x_embed(x)
        grid = tuple(h.shape[2:])
        tokens = h.flatten(2).transpose(1, 2)
        cond_parts = []
        if self.p_embed is not None:
            cond_parts.append(self.param_token(self.p_embed(params, drop_params, b)).unsqueeze(1))
        else:
            cond_parts.append(self.param_token(torch.zeros_like(c)).unsqueeze(1))
        angles = self._angles(grid, x.device)
        cond_angles = None
        if angles is not None:
            cond_angles = [torch.zeros(1, angles.shape[1], device=x.device)]
        if history is not None:
            hist = self.h_embed(history.to(x.dtype))
            cond_parts.append(hist.flatten(2).transpose(1, 2))
            if angles is not None:
                hh, hw = hist.shape[-2:]
                hist_angles = self._angles((1, hh, hw), x.device)
                back_one = torch.tensor([[-1.0, 0.0, 0.0]], device=x.device)
                shift = rope_angles(back_one, self.rope_split, self.rope_theta)
                cond_angles.append(hist_angles + shift)
        cond_tokens = torch.cat(cond_parts, dim=1)
        all_angles = None if angles is None else torch.cat([angles, *cond_angles], dim=0)
        for block in self.double_blocks:
            tokens, cond_tokens = block(tokens, cond_tokens, c, all_angles)
        n = tokens.shape[1]
        joint = torch.cat([tokens, cond_tokens], dim=1)
        for block in self.single_blocks:
            joint = block(joint, c, all_angles)
        out = self._unpatch(self.final(joint[:, :n], c), grid)
        return out[:, :, 0] if single else out
