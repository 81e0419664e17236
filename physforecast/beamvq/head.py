"""Top-K VQ head: turn any backbone's deterministic forecast into K candidate forecasts.

Two modes, one interface (:class:`TopKVQHead`):

``output`` (the authors' form)
    Each frame of the backbone forecast ``y0`` (B, T, C, H, W) is encoded by a small conv
    encoder (``downsample`` = 2 or 4), quantized, the T quantized frames are propagated
    jointly by a conv net over the stacked ``T*D`` channels, and decoded frame by frame.
    With ``residual=True`` (default) the decoder output is added to ``y0`` and its last
    layer starts at zero, so the head starts as the identity on the backbone forecast;
    ``residual=False`` decodes the forecast from the codes alone, as the public code.
``latent``
    The backbone's own ``encode()`` latent ``z`` is quantized and every candidate is
    decoded with the backbone's ``decode()``; ``skips`` are repeated for the K candidates.

Candidates come from :mod:`physforecast.beamvq.candidates` (K nearest codes, or
temperature sampling). Candidate 0 is always the nearest-code (top-1) forecast.
The candidate tensors keep the axis order of the latent (the public code reshapes a
channels-last tensor without permuting it back, scrambling channels and space).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from .candidates import candidate_indices
from .codebank import CodeBankConfig, IdentityQuantizer, Quantizer

__all__ = ["TopKVQHead", "HeadOutput", "head_loss"]


class HeadOutput(NamedTuple):
    """Output of :meth:`TopKVQHead.forward`.

    Attributes
    ----------
    candidates : Tensor
        K candidate forecasts ``(B, K, T, C, H, W)``; index 0 is the top-1 forecast.
    base : Tensor
        The backbone's deterministic forecast ``(B, T, C, H, W)``.
    indices : Tensor
        Code indices ``(K, B, *latent positions)``.
    vq_loss : Tensor
        Weighted commitment loss (scalar); part of the training loss.
    logs : dict
        ``commitment`` and ``perplexity`` of the nearest-code assignment.
    ranks : tuple of int, optional
        When only some of the K candidates were decoded: their ranks (0 first).
    k : int
        The number of candidates ``K`` they were drawn from.
    log_prob : Tensor, optional
        With ``log_prob=True`` and ``temperature > 0``: the log-probability ``(B, K)`` of
        each sampled candidate under the per-position sampling distribution (the sum over
        latent positions), differentiable with respect to the latent; 0 for candidate 0,
        which is not sampled.
    """

    candidates: torch.Tensor
    base: torch.Tensor
    indices: torch.Tensor
    vq_loss: torch.Tensor
    logs: dict[str, float]
    ranks: tuple[int, ...] | None = None
    k: int = 0
    log_prob: torch.Tensor | None = None


class _Residual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.GELU(), nn.Conv2d(ch, ch, 3, padding=1), nn.GELU(), nn.Conv2d(ch, ch, 1)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


def _group_norm(ch: int) -> nn.GroupNorm:
    groups = next(g for g in (8, 4, 2, 1) if ch % g == 0)
    return nn.GroupNorm(groups, ch)


class _Propagator(nn.Module):
    """Conv net over the T stacked quantized frames (B, T*D, h, w) -> same shape."""

    def __init__(self, ch: int, hidden: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(ch, hidden, 3, padding=1)]
        for _ in range(depth):
            layers += [_group_norm(hidden), nn.GELU(), nn.Conv2d(hidden, hidden, 3, padding=1)]
        layers += [nn.GELU(), nn.Conv2d(hidden, ch, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


def _up(cin: int, cout: int) -> nn.Sequential:
    """2x nearest upsampling + 3x3 conv (a transposed conv without its slow CPU kernel)."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1)
    )


def _repeat_batch(obj: Any, k: int, batch: int) -> Any:
    """Repeat every tensor with leading dim ``batch`` k times along dim 0 (candidate-major)."""
    if isinstance(obj, torch.Tensor):
        if obj.ndim >= 1 and obj.shape[0] == batch:
            return obj.repeat(k, *([1] * (obj.ndim - 1)))
        return obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_repeat_batch(o, k, batch) for o in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(_repeat_batch(o, k, batch) for o in obj)
    if isinstance(obj, dict):
        return {key: _repeat_batch(v, k, batch) for key, v in obj.items()}
    return obj


class TopKVQHead(nn.Module):
    """A top-K VQ head around a backbone.

    Parameters
    ----------
    backbone : nn.Module
        A backbone (``forward(x, cond)``, ``encode``/``decode``, ``out_steps``, ``out_channels``).
    mode : {"output", "latent"}
        Where the code bank sits (see the module docstring).
    num_codes, code_dim : int
        Code bank size ``M`` and code dimension ``D``.
    commitment, decay : float
        Commitment-loss weight and EMA decay.
    hidden : int
        Channels of the output-mode encoder/decoder.
    downsample : {2, 4}
        Spatial downsampling of the output-mode encoder.
    prop_hidden, prop_depth : int
        Width and depth of the output-mode propagator.
    residual : bool
        Output mode: decode a correction added to the backbone forecast.
    kmeans_init : bool
        Initialise the codes by k-means on the first training batch.
    quantizer : {"vq", "identity"}
        ``vq``: the code bank; ``identity``: the no-VQ control (:class:`IdentityQuantizer`,
        every candidate is the top-1 forecast).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        mode: str = "output",
        num_codes: int = 512,
        code_dim: int = 64,
        commitment: float = 0.25,
        decay: float = 0.99,
        hidden: int = 32,
        downsample: int = 4,
        prop_hidden: int = 64,
        prop_depth: int = 2,
        residual: bool = True,
        kmeans_init: bool = True,
        quantizer: str = "vq",
    ) -> None:
        super().__init__()
        if quantizer not in ("vq", "identity"):
            raise ValueError(f"TopKVQHead quantizer must be 'vq' or 'identity'; got {quantizer!r}")
        self.quantizer_kind = quantizer
        if mode not in ("output", "latent"):
            raise ValueError(f"TopKVQHead mode must be 'output' or 'latent'; got {mode!r}")
        if downsample not in (2, 4):
            raise ValueError(f"TopKVQHead downsample must be 2 or 4; got {downsample}")
        self.backbone = backbone
        self.mode = mode
        self.residual = bool(residual)
        self.downsample = int(downsample)
        self.steps = int(backbone.out_steps)
        self.channels = int(backbone.out_channels)
        bank_cfg = CodeBankConfig(
            num_codes=num_codes,
            dim=code_dim,
            decay=decay,
            commitment=commitment,
            kmeans_init=kmeans_init,
        )
        if mode == "output":
            c, d = self.channels, code_dim
            enc: list[nn.Module] = [nn.Conv2d(c, hidden, 4, stride=2, padding=1)]
            dec_up: list[nn.Module] = []
            if downsample == 4:
                enc += [nn.GELU(), nn.Conv2d(hidden, hidden, 4, stride=2, padding=1)]
                dec_up += [_up(hidden, hidden), nn.GELU()]
            enc += [_Residual(hidden), nn.GELU(), nn.Conv2d(hidden, d, 1)]
            self.encoder = nn.Sequential(*enc)
            self.propagator = _Propagator(self.steps * d, prop_hidden, prop_depth)
            last = nn.Conv2d(hidden, c, 3, padding=1)
            if self.residual:
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
            self.decoder = nn.Sequential(
                nn.Conv2d(d, hidden, 3, padding=1),
                _Residual(hidden),
                nn.GELU(),
                *dec_up,
                nn.Upsample(scale_factor=2, mode="nearest"),
                last,
            )
            self.quantizer = (
                Quantizer(code_dim, bank_cfg) if quantizer == "vq" else IdentityQuantizer(code_dim)
            )
        else:
            self.encoder = self.propagator = self.decoder = None
            self._latent_dim: int | None = None
            self._bank_cfg = bank_cfg
            self.quantizer = None  # built lazily: the latent size is known at the first call

    # -- helpers -----------------------------------------------------------------------
    def _latent_quantizer(self, dim: int, device: torch.device) -> Quantizer:
        if self.quantizer is None:
            self._latent_dim = dim
            self.quantizer = (
                Quantizer(dim, self._bank_cfg).to(device)
                if self.quantizer_kind == "vq"
                else IdentityQuantizer(dim)
            )
            self.quantizer.train(self.training)
        elif dim != self._latent_dim:
            raise ValueError(f"latent dim changed from {self._latent_dim} to {dim}")
        return self.quantizer

    def materialize(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> None:
        """Build the lazily sized parts (latent mode) with one input ``x`` (B, T_in, C, H, W)."""
        if self.mode == "latent" and self.quantizer is None:
            with torch.no_grad():
                z = self.backbone.encode(x[:1], None if cond is None else cond[:1]).z
            dim = z.shape[1] if z.ndim == 4 else z.shape[-1]
            self._latent_quantizer(dim, z.device)

    def _select(
        self,
        quantizer: Quantizer,
        z_last: torch.Tensor,
        k: int,
        temperature: float,
        generator: torch.Generator | None,
        ranks: tuple[int, ...] | None = None,
        log_prob: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float], torch.Tensor | None]:
        """Quantize channels-last ``z_last`` (..., D): candidates (K', ..., D), indices, loss,
        logs and (with ``log_prob``) the candidates' log-probabilities (K', *z_last.shape[:1]).

        ``K' = K``, or ``len(ranks)`` when only the candidates of those ranks are wanted.
        """
        out = quantizer(z_last, update=False)
        logs = {key: float(v) for key, v in out.breakdown.items()}
        logp = None
        if isinstance(quantizer, IdentityQuantizer):
            n = len(ranks) if ranks is not None else k
            cand_idx = out.indices.unsqueeze(0).expand(n, *out.indices.shape)
            q = quantizer.candidates(out.quantized, cand_idx)
        elif k == 1:
            q, cand_idx = out.quantized.unsqueeze(0), out.indices.unsqueeze(0)
        else:
            pool = min(quantizer.cfg.num_codes, 2 * k if temperature > 0 else k)
            dist, idx = quantizer.retrieve(z_last, pool)
            cand_idx = candidate_indices(dist, idx, k, temperature, generator)
            cand_idx[0] = out.indices  # candidate 0 is the top-1 forecast, exactly
            if ranks is not None:
                cand_idx = cand_idx[list(ranks)]
            if log_prob and temperature > 0:
                logp = _sampling_log_prob(quantizer, z_last, dist, idx, cand_idx, temperature)
            q = quantizer.candidates(z_last, cand_idx)
        if quantizer.training and isinstance(quantizer, Quantizer):
            quantizer.update_(z_last, out.indices)  # after reading the candidates
        return q, cand_idx, out.loss, logs, logp

    # -- forward -------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        k: int = 1,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        base: torch.Tensor | None = None,
        ranks: tuple[int, ...] | None = None,
        log_prob: bool = False,
    ) -> HeadOutput:
        """K candidate forecasts of ``x`` (B, T_in, C, H, W).

        Parameters
        ----------
        x : Tensor
            History ``(B, T_in, C, H, W)``.
        cond : Tensor, optional
            Physical parameters ``(B, P)``.
        k : int
            Number of candidates ``K``.
        temperature : float
            0 for the K nearest codes, > 0 for sampling (see :mod:`.candidates`).
        generator : torch.Generator, optional
            Randomness of the sampling.
        base : Tensor, optional
            Output mode: a precomputed backbone forecast ``(B, T, C, H, W)`` (e.g. computed
            under ``no_grad`` when the backbone is frozen).
        ranks : tuple of int, optional
            Decode only the candidates of these ranks (starting with 0), e.g. ``(0, r)``
            with a random ``r`` to train on a cheap unbiased sample of the K candidates.
        log_prob : bool
            Also return the sampled candidates' log-probabilities (``temperature > 0``),
            differentiable: the policy-gradient stage of BeamVQ.
        """
        if ranks is not None:
            ranks = tuple(int(r) for r in ranks)
            if not ranks or ranks[0] != 0 or max(ranks) >= k or len(set(ranks)) != len(ranks):
                raise ValueError(
                    f"ranks must start with 0 and be distinct ranks below k={k}; got {ranks}"
                )
            if k == 1:
                ranks = None
        if self.mode == "output":
            out = self._forward_output(x, cond, k, temperature, generator, base, ranks, log_prob)
        else:
            out = self._forward_latent(x, cond, k, temperature, generator, ranks, log_prob)
        return out._replace(ranks=ranks, k=k)

    def _forward_output(
        self, x, cond, k, temperature, generator, base, ranks, log_prob=False
    ) -> HeadOutput:
        y0 = self.backbone(x, cond) if base is None else base
        b, t, c, h, w = y0.shape
        if h % self.downsample or w % self.downsample:
            raise ValueError(
                f"TopKVQHead(output, downsample={self.downsample}) needs H and W divisible by "
                f"{self.downsample}; got H={h}, W={w}"
            )
        feat = self.encoder(y0.reshape(b * t, c, h, w))  # (B*T, D, h', w')
        d, hh, ww = feat.shape[1:]
        z_last = feat.reshape(b, t, d, hh, ww).permute(0, 1, 3, 4, 2)  # (B, T, h', w', D)
        q, idx, vq_loss, logs, logp = self._select(
            self.quantizer, z_last, k, temperature, generator, ranks, log_prob
        )
        k = q.shape[0]
        q = q.permute(0, 1, 2, 5, 3, 4).reshape(k * b, t * d, hh, ww)  # (K*B, T*D, h', w')
        q = self.propagator(q).reshape(k * b * t, d, hh, ww)
        dec = self.decoder(q).reshape(k, b, t, c, h, w)
        if self.residual:
            dec = dec + y0.unsqueeze(0)
        lp = None if logp is None else logp.t()
        return HeadOutput(dec.transpose(0, 1), y0, idx, vq_loss, logs, log_prob=lp)

    def _forward_latent(
        self, x, cond, k, temperature, generator, ranks, log_prob=False
    ) -> HeadOutput:
        latent = self.backbone.encode(x, cond)
        z = latent.z
        b = z.shape[0]
        if z.ndim == 4:  # (B, D, h, w) -> channels last
            z_last = z.permute(0, 2, 3, 1)
        elif z.ndim == 3:  # (B, N, D)
            z_last = z
        else:
            raise ValueError(f"latent z must be (B, D, h, w) or (B, N, D); got {tuple(z.shape)}")
        quantizer = self._latent_quantizer(z_last.shape[-1], z.device)
        q, idx, vq_loss, logs, logp = self._select(
            quantizer, z_last, k, temperature, generator, ranks, log_prob
        )
        k = q.shape[0]
        q = q.reshape(k * b, *z_last.shape[1:])
        if z.ndim == 4:
            q = q.permute(0, 3, 1, 2)
        skips = _repeat_batch(latent.skips, k, b)
        cond_k = None if cond is None else cond.repeat(k, 1)
        y = self.backbone.decode(latent._replace(z=q.contiguous(), skips=skips), cond_k)
        y = y.reshape(k, b, *y.shape[1:]).transpose(0, 1)
        with torch.no_grad():
            base = self.backbone.decode(latent, cond)
        lp = None if logp is None else logp.t()
        return HeadOutput(y, base, idx, vq_loss, logs, log_prob=lp)


def _sampling_log_prob(
    quantizer: Quantizer,
    z_last: torch.Tensor,
    dist: torch.Tensor,
    idx: torch.Tensor,
    cand_idx: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Log-probabilities ``(K, B)`` of candidate code maps under per-position sampling.

    The distribution of :func:`~.candidates.sampled_candidates`,
    ``softmax(-(d - d_1) / (temperature * (d_P - d_1)))`` over the ``P`` retrieved codes,
    with the distances ``d`` recomputed with gradients to ``z_last`` (B, ..., D) and the
    per-position scale held fixed; summed over the positions. Candidate 0 is not sampled:
    its log-probability is 0.
    """
    flat = quantizer.project_in(z_last).float().unsqueeze(-2)  # (B, ..., 1, D)
    codes = quantizer.bank.lookup(idx)  # (B, ..., P, D)
    d = (flat - codes).pow(2).sum(-1)  # (B, ..., P), differentiable
    spread = (dist[..., -1:] - dist[..., :1]).clamp_min(1e-12)
    logits = -(d - d[..., :1].detach()) / (temperature * spread)
    logq = torch.log_softmax(logits, dim=-1)  # (B, ..., P)
    pos = (idx.unsqueeze(0) == cand_idx.unsqueeze(-1)).float().argmax(-1)  # (K, B, ...)
    picked = torch.gather(logq.unsqueeze(0).expand(pos.shape[0], *logq.shape), -1, pos[..., None])
    out = picked.squeeze(-1).flatten(2).sum(-1)  # (K, B)
    return torch.cat([torch.zeros_like(out[:1]), out[1:]])


def head_loss(
    out: HeadOutput,
    target: torch.Tensor,
    *,
    candidate_weight: float = 1.0,
    base_weight: float = 0.0,
    mask: torch.Tensor | None = None,
    err: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    reduction: str = "mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss of the head: top-1 + candidates + commitment (+ backbone).

    ``loss = mse(top1, y) + candidate_weight * mean_k mse(cand_k, y) + vq_loss
    + base_weight * mse(base, y)``. The authors sum the K candidate errors with weight 1
    and drop the commitment loss; here the K terms are averaged and the commitment
    loss is always included. When the head decoded only some ranks (``out.ranks``), the
    mean over the K candidates is estimated without bias from rank 0 and the sampled ranks.

    Parameters
    ----------
    out : HeadOutput
        Output of :meth:`TopKVQHead.forward`.
    target : Tensor
        Truth ``(B, T, C, H, W)``.
    mask : Tensor, optional
        Valid points ``(B, C, H, W)`` (bool); masked-out points do not count.
    reduction : {"mean", "min"}
        How the candidates' errors combine: ``mean`` over the K (the authors' loss, which
        pulls every candidate to the truth), or ``min``: per window only the candidate
        closest to the truth is trained (multiple-choice learning), which lets the others
        stay different, i.e. diverse candidates worth searching.
    """
    if reduction not in ("mean", "min"):
        raise ValueError(f"head_loss reduction must be 'mean' or 'min'; got {reduction!r}")
    cands = out.candidates
    if target.shape != cands.shape[:1] + cands.shape[2:]:
        raise ValueError(
            f"target must be (B, T, C, H, W) = {tuple(cands.shape[:1] + cands.shape[2:])}; "
            f"got {tuple(target.shape)}"
        )

    def mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if err is not None:
            return err(pred, y)
        diff = (pred.float() - y.float()) ** 2
        if mask is None:
            return diff.mean()
        m = mask[:, None].expand_as(y) if pred.ndim == 5 else mask[:, None, None].expand_as(pred)
        return (diff * m).sum() / m.sum().clamp_min(1)

    top1 = mse(cands[:, 0], target)
    loss = top1 + out.vq_loss
    logs = {"top1_mse": float(top1.detach()), "vq_loss": float(out.vq_loss.detach()), **out.logs}
    if candidate_weight and cands.shape[1] > 1:
        if reduction == "min":
            diff = (cands.float() - target.unsqueeze(1).float()) ** 2  # (B, K, T, C, H, W)
            if mask is None:
                per = diff.flatten(2).mean(-1)
            else:
                m = mask[:, None, None].expand_as(diff).float()
                per = (diff * m).flatten(2).sum(-1) / m.flatten(2).sum(-1).clamp_min(1)
            cand = per.min(1).values.mean()
        elif out.ranks is None:
            cand = mse(cands, target.unsqueeze(1).expand_as(cands))
        else:  # unbiased estimate of the mean over all K ranks from rank 0 + sampled ranks
            m = len(out.ranks) - 1
            cand = top1 / out.k + sum(
                mse(cands[:, j], target) * (out.k - 1) / (out.k * m) for j in range(1, m + 1)
            )
        loss = loss + candidate_weight * cand
        logs["cand_mse"] = float(cand.detach())
    if base_weight:
        base = mse(out.base, target)
        loss = loss + base_weight * base
        logs["base_mse"] = float(base.detach())
    logs["loss"] = float(loss.detach())
    return loss, logs
