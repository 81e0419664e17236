"""ST-PAD's upstream stage: VQ reconstruction with temporal evolution.

Frames ``(B, T, C, H, W)`` are encoded one by one by :class:`Encoder` (ConvNormReLU
blocks, two of them halving the grid, beside a Fourier branch of spectral convolutions
for global structure) into latents ``(B, T, D, h, w)``, quantized by the shared code bank
(:class:`~physforecast.beamvq.codebank.Quantizer`: EMA codebook, commitment loss,
dead-code restart), evolved by :class:`Propagator` from the ``T_in`` history latents to
``T_out`` future ones (FiLM-conditioned residual blocks over the time-stacked latents),
and decoded by :class:`Decoder`. :func:`upstream_loss` is reconstruction + prediction +
commitment + the physical constraints of :mod:`physforecast.stpad.physics` on the
decoded forecast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from physforecast.beamvq.codebank import CodeBankConfig, Quantizer
from physforecast.layers import ResBlock, group_norm

from .physics import PhysicsConstraints

__all__ = [
    "SpectralConv2d",
    "ConvNormReLU",
    "Encoder",
    "Decoder",
    "Propagator",
    "STPADUpstream",
    "upstream_loss",
]


class SpectralConv2d(nn.Module):
    """A Fourier layer: keep the lowest ``modes`` wavenumbers, mix channels per mode.

    ``(B, C_in, H, W) -> (B, C_out, H, W)``; the kept modes are ``|k_y| < modes`` and
    ``0 <= k_x < modes`` of the real FFT (fewer on a small grid).
    """

    def __init__(self, in_channels: int, out_channels: int, modes: int) -> None:
        super().__init__()
        self.modes = int(modes)
        scale = 1.0 / (in_channels * out_channels)
        shape = (2, in_channels, out_channels, self.modes, self.modes)
        self.weight = nn.Parameter(scale * torch.randn(*shape, dtype=torch.cfloat))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x_hat = torch.fft.rfft2(x.float())
        out = torch.zeros(
            x.shape[0], self.weight.shape[2], h, w // 2 + 1, dtype=torch.cfloat, device=x.device
        )
        my, mx = min(self.modes, (h + 1) // 2), min(self.modes, w // 2 + 1)
        mix = "bixy,ioxy->boxy"
        out[..., :my, :mx] = torch.einsum(mix, x_hat[..., :my, :mx], self.weight[0, :, :, :my, :mx])
        out[..., h - my :, :mx] = torch.einsum(
            mix, x_hat[..., h - my :, :mx], self.weight[1, :, :, :my, :mx]
        )
        return torch.fft.irfft2(out, s=(h, w)).to(x.dtype)


class ConvNormReLU(nn.Module):
    """``ReLU(GroupNorm(Conv2d(x)))``, a 3x3 convolution (stride 2 halves the grid)."""

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int = 1, padding_mode: str = "zeros"
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, 3, stride=stride, padding=1, padding_mode=padding_mode
        )
        self.norm = group_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class Encoder(nn.Module):
    """Frames ``(N, C, H, W)`` -> latents ``(N, D, H / 2**down, W / 2**down)``.

    A local path of ConvNormReLU blocks (``down`` of them with stride 2) and a global
    path (a spectral convolution of the stem's features, average-pooled to the latent
    grid), summed and mapped to ``D`` channels.
    """

    def __init__(
        self,
        channels: int,
        hidden: int,
        dim: int,
        *,
        down: int = 2,
        modes: int = 8,
        fourier: bool = True,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        self.down = int(down)
        self.stem = ConvNormReLU(channels, hidden, padding_mode=padding_mode)
        blocks = []
        for _ in range(self.down):
            blocks += [
                ConvNormReLU(hidden, hidden, stride=2, padding_mode=padding_mode),
                ConvNormReLU(hidden, hidden, padding_mode=padding_mode),
            ]
        self.local = nn.Sequential(*blocks)
        self.fourier = SpectralConv2d(hidden, hidden, modes) if fourier else None
        self.out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        z = self.local(h)
        if self.fourier is not None:
            g = F.gelu(self.fourier(h))
            z = z + F.adaptive_avg_pool2d(g, z.shape[-2:])
        return self.out(z)


class Decoder(nn.Module):
    """Latents ``(N, D, h, w)`` -> frames ``(N, C, h * 2**up, w * 2**up)``."""

    def __init__(
        self, dim: int, hidden: int, channels: int, *, up: int = 2, padding_mode: str = "zeros"
    ) -> None:
        super().__init__()
        self.inp = ConvNormReLU(dim, hidden, padding_mode=padding_mode)
        blocks: list[nn.Module] = []
        for _ in range(int(up)):
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                ConvNormReLU(hidden, hidden, padding_mode=padding_mode),
            ]
        self.body = nn.Sequential(*blocks)
        self.out = nn.Conv2d(hidden, channels, 3, padding=1, padding_mode=padding_mode)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.inp(z)))


class Propagator(nn.Module):
    """History latents ``(B, T_in, D, h, w)`` -> future latents ``(B, T_out, D, h, w)``.

    The history is stacked along channels, passed through ``depth`` residual blocks
    FiLM-modulated by ``cond`` (B, P), and the last frame's latent is added to every
    output frame (the propagator learns the change).
    """

    def __init__(
        self,
        in_steps: int,
        out_steps: int,
        dim: int,
        hidden: int,
        *,
        depth: int = 2,
        cond_dim: int = 0,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        self.in_steps, self.out_steps, self.dim = int(in_steps), int(out_steps), int(dim)
        self.inp = nn.Conv2d(in_steps * dim, hidden, 1)
        self.blocks = nn.ModuleList(
            ResBlock(hidden, hidden, cond_dim, padding_mode=padding_mode) for _ in range(depth)
        )
        self.out = nn.Conv2d(hidden, out_steps * dim, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d, h, w = z.shape
        x = self.inp(z.reshape(b, t * d, h, w))
        for block in self.blocks:
            x = block(x, cond)
        delta = self.out(x).reshape(b, self.out_steps, d, h, w)
        return z[:, -1:] + delta


class STPADUpstream(nn.Module):
    """Encoder, code bank, propagator and decoder; ``forward`` is the deterministic forecast.

    Parameters
    ----------
    in_steps, out_steps, channels : int
        ``T_in``, ``T_out`` and ``C``.
    cond_dim : int
        Parameters ``P`` the propagator is FiLM-conditioned on (0: none).
    hidden, dim : int
        Feature channels of encoder/decoder and latent dimension ``D``.
    down : int
        Halvings of the grid (``H`` and ``W`` must be divisible by ``2**down``).
    modes : int
        Fourier modes of the spectral branch; ``fourier=False`` leaves the branch out.
    num_codes, commitment, decay, dead_threshold : int, float
        Code bank options (:class:`~physforecast.beamvq.codebank.CodeBankConfig`).
    prop_hidden, prop_depth : int
        Width and depth of the propagator.
    padding_mode : str
        ``circular`` on periodic domains.
    """

    def __init__(
        self,
        in_steps: int,
        out_steps: int,
        channels: int,
        *,
        cond_dim: int = 0,
        hidden: int = 32,
        dim: int = 16,
        down: int = 2,
        modes: int = 8,
        fourier: bool = True,
        num_codes: int = 256,
        commitment: float = 0.25,
        decay: float = 0.99,
        dead_threshold: float = 1e-3,
        prop_hidden: int = 64,
        prop_depth: int = 2,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        self.in_steps, self.out_steps = int(in_steps), int(out_steps)
        self.in_channels = int(channels)
        self.cond_dim = int(cond_dim)
        self.dim, self.down = int(dim), int(down)
        self.encoder = Encoder(
            channels,
            hidden,
            dim,
            down=down,
            modes=modes,
            fourier=fourier,
            padding_mode=padding_mode,
        )
        bank = CodeBankConfig(
            num_codes=num_codes,
            dim=dim,
            decay=decay,
            commitment=commitment,
            dead_threshold=dead_threshold,
        )
        self.quantizer = Quantizer(dim, bank)
        self.propagator = Propagator(
            in_steps,
            out_steps,
            dim,
            prop_hidden,
            depth=prop_depth,
            cond_dim=cond_dim,
            padding_mode=padding_mode,
        )
        self.decoder = Decoder(dim, hidden, channels, up=down, padding_mode=padding_mode)

    def check_grid(self, h: int, w: int) -> None:
        """Refuse a grid the encoder cannot halve ``down`` times."""
        f = 2**self.down
        if h % f or w % f:
            raise ValueError(
                f"ST-PAD's encoder halves the grid {self.down} times: {h}x{w} "
                f"must be divisible by {f} (set stpad.down lower)"
            )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Frames ``(B, T, C, H, W)`` -> continuous latents ``(B, T, D, h, w)``."""
        b, t = x.shape[:2]
        self.check_grid(*x.shape[-2:])
        z = self.encoder(x.reshape(b * t, *x.shape[2:]))
        return z.reshape(b, t, *z.shape[1:])

    def quantize(
        self, z: torch.Tensor, *, update: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents ``(B, T, D, h, w)`` -> (quantized latents, code indices (B, T, h, w),
        commitment loss); ``update`` as :meth:`Quantizer.forward`."""
        out = self.quantizer(z.movedim(2, -1), update=update)
        return out.quantized.movedim(-1, 2), out.indices, out.loss

    def decode(self, q: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, T, D, h, w)`` -> frames ``(B, T, C, H, W)``."""
        b, t = q.shape[:2]
        x = self.decoder(q.reshape(b * t, *q.shape[2:]))
        return x.reshape(b, t, *x.shape[1:])

    def propagate(self, q: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """History latents ``(B, T_in, D, h, w)`` -> future latents ``(B, T_out, D, h, w)``."""
        return self.propagator(q, cond if self.cond_dim else None)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """The deterministic forecast ``(B, T_out, C, H, W)`` of ``x`` ``(B, T_in, C, H, W)``.

        With ``target`` (B, T_out, C, H, W) the training pass instead (through
        ``forward`` so that a DDP wrapper sees it): a dict with ``frames`` (history and
        target), ``recon`` (their decoded quantized latents), ``pred`` (the decoded
        propagated latents), ``z_next`` and ``z_future`` (propagated and encoded future
        latents), ``indices`` and ``commit`` (the commitment loss). Training mode updates
        the code bank.
        """
        if target is None:
            q, _, _ = self.quantize(self.encode(x), update=False)
            q_next, _, _ = self.quantize(self.propagate(q, cond), update=False)
            return self.decode(q_next)
        frames = torch.cat([x, target], 1)
        z = self.encode(frames)
        q, idx, commit = self.quantize(z)
        t_in = x.shape[1]
        z_next = self.propagate(q[:, :t_in], cond)
        q_next, _, _ = self.quantize(z_next, update=False)
        return {
            "frames": frames,
            "recon": self.decode(q),
            "pred": self.decode(q_next),
            "z_next": z_next,
            "z_future": z[:, t_in:],
            "indices": idx,
            "commit": commit,
        }


def _masked_mse(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    if mask is None:
        return F.mse_loss(pred, target)
    m = mask[:, None].to(pred.dtype).expand_as(pred)
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp_min(1.0)


def upstream_loss(
    up: STPADUpstream,
    batch: dict[str, torch.Tensor],
    constraints: PhysicsConstraints | None = None,
    *,
    latent_weight: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction + prediction + commitment + physics of one batch.

    ``rec``: MSE of the decoded quantized latents of every frame (history and future);
    ``pred``: MSE of the decoded propagated latents against the future frames, plus
    ``latent_weight`` times the MSE of the propagated latents against the future frames'
    (detached) encodings; ``commit``: the code bank's commitment loss; ``phys_*``: the
    weighted constraints on the decoded forecast (with the truth's residual as reference).

    Parameters
    ----------
    up : STPADUpstream
        The upstream model, or a DDP wrapper of it (training mode updates its code bank).
    batch : dict
        ``x`` (B, T_in, C, H, W), ``y`` (B, T_out, C, H, W), optional ``params`` (B, P)
        and ``mask`` (B, C, H, W).
    constraints : PhysicsConstraints, optional
        The physics terms; None leaves them out.
    """
    x, y = batch["x"], batch["y"]
    params, mask = batch.get("params"), batch.get("mask")
    inner = up.module if hasattr(up, "module") else up
    out = up(x, params if inner.cond_dim else None, y)
    rec = _masked_mse(out["recon"], out["frames"], mask)
    pred = out["pred"]
    pred_loss = _masked_mse(pred, y, mask)
    latent = F.mse_loss(out["z_next"], out["z_future"].detach())
    commit, idx = out["commit"], out["indices"]
    loss = rec + pred_loss + latent_weight * latent + commit
    logs = {
        "rec": float(rec.detach()),
        "pred": float(pred_loss.detach()),
        "latent": float(latent.detach()),
        "commit": float(commit.detach()),
        "perplexity": float(math.exp(_entropy(idx, inner.quantizer.cfg.num_codes))),
    }
    if constraints is not None:
        phys, phys_logs = constraints(pred, x, params, target=y, mask=mask)
        loss = loss + phys
        logs.update(phys_logs)
    return loss, logs


def _entropy(idx: torch.Tensor, m: int) -> float:
    p = torch.bincount(idx.flatten(), minlength=m).float()
    p = p / p.sum().clamp_min(1.0)
    return float(-(p * torch.log(p.clamp_min(1e-12))).sum())
