"""The VQ code bank, split into state (:class:`CodeBank`) and interface (:class:`Quantizer`).

:class:`CodeBank` owns the buffers (``embed``, ``cluster_size``, ``embed_avg``), the
EMA codebook update, optional k-means initialisation, dead-code restart from the current
batch, usage/perplexity statistics and the top-K nearest-code retrieval. In a distributed
run the EMA statistics are summed over the ranks and restarts come from rank 0, so every
rank keeps the same code bank. Distances are
computed in fp32 in row chunks so that the ``(N, M)`` distance matrix never exceeds
``chunk_bytes``.

:class:`Quantizer` owns the projections into and out of the code space, the commitment
loss and the straight-through estimator. It works on channels-last vectors ``(..., D)``
and returns ``(quantized, indices, loss)``; the candidate path returns the K quantized
tensors with the *same* axis order as the input (the authors' code scrambles it).

Shapes: ``N`` vectors, ``M`` codes, ``D`` code dimension, ``K`` candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CodeBankConfig", "CodeBank", "Quantizer", "QuantizerOutput", "IdentityQuantizer"]


@dataclass(frozen=True)
class CodeBankConfig:
    """Options of a code bank and its quantizer.

    Attributes
    ----------
    num_codes : int
        Number of codes ``M``.
    dim : int
        Code dimension ``D``.
    decay : float
        EMA decay of the codebook (``0.99`` in the authors' code).
    eps : float
        Laplace smoothing of the cluster sizes.
    commitment : float
        Weight of the commitment loss ``||z - sg(q)||^2`` (``0.25``).
    kmeans_init : bool
        Initialise the codes by k-means on the first training batch.
    kmeans_iters : int
        Lloyd iterations of that initialisation.
    dead_threshold : float
        A code whose EMA cluster size falls below this is restarted from a random vector
        of the current batch; 0 disables restarts.
    chunk_bytes : int
        Memory bound of one block of the fp32 distance matrix.
    """

    num_codes: int = 512
    dim: int = 64
    decay: float = 0.99
    eps: float = 1e-5
    commitment: float = 0.25
    kmeans_init: bool = False
    kmeans_iters: int = 10
    dead_threshold: float = 1e-3
    chunk_bytes: int = 32 * 2**20

    def __post_init__(self) -> None:
        if self.num_codes < 1 or self.dim < 1:
            raise ValueError(
                f"CodeBankConfig needs num_codes >= 1 and dim >= 1; got {self.num_codes}, {self.dim}"
            )
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"CodeBankConfig.decay must be in [0, 1); got {self.decay}")


class CodeBank(nn.Module):
    """Codebook state: buffers, EMA update, k-means init, dead-code restart, retrieval.

    Parameters
    ----------
    cfg : CodeBankConfig
        Sizes and update options.

    Examples
    --------
    >>> bank = CodeBank(CodeBankConfig(num_codes=8, dim=4))
    >>> dist, idx = bank.topk(torch.randn(5, 4), k=3)
    >>> idx.shape
    torch.Size([5, 3])
    """

    embed: torch.Tensor
    cluster_size: torch.Tensor
    embed_avg: torch.Tensor
    initted: torch.Tensor

    def __init__(self, cfg: CodeBankConfig) -> None:
        super().__init__()
        self.cfg = cfg
        embed = torch.randn(cfg.num_codes, cfg.dim) / math.sqrt(cfg.dim)
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.ones(cfg.num_codes))
        self.register_buffer("embed_avg", embed.clone())
        self.register_buffer("initted", torch.tensor(not cfg.kmeans_init))

    @property
    def num_codes(self) -> int:
        return self.cfg.num_codes

    # -- retrieval -------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.cfg.dim:
            raise ValueError(
                f"CodeBank expects vectors of shape (N, {self.cfg.dim}); got {tuple(x.shape)}"
            )
        return x.float()

    def _chunk_rows(self) -> int:
        return max(1, self.cfg.chunk_bytes // (4 * self.cfg.num_codes))

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """Squared L2 distances ``(N, M)`` in fp32 (use :meth:`topk` for large ``N``)."""
        x = self._check(x)
        e = self.embed.float()
        d = x.pow(2).sum(1, keepdim=True) - 2.0 * x @ e.t() + e.pow(2).sum(1)[None]
        return d.clamp_min_(0.0)

    def topk(self, x: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest codes of every vector, nearest first.

        Parameters
        ----------
        x : Tensor
            Vectors ``(N, D)``; any float dtype, distances are fp32.
        k : int
            Number of codes to return, ``1 <= k <= M``.

        Returns
        -------
        dist : Tensor
            Squared distances ``(N, k)``, ascending along the last dim.
        idx : Tensor
            Code indices ``(N, k)`` (int64).
        """
        if not 1 <= k <= self.cfg.num_codes:
            raise ValueError(f"topk needs 1 <= k <= num_codes={self.cfg.num_codes}; got k={k}")
        x = self._check(x)
        rows = self._chunk_rows()
        dists, idxs = [], []
        for start in range(0, x.shape[0], rows):
            d = self.distances(x[start : start + rows])
            if k == 1:
                dk, ik = d.min(dim=1, keepdim=True)
            else:
                dk, ik = torch.topk(d, k, dim=1, largest=False, sorted=True)
            dists.append(dk)
            idxs.append(ik)
        if not dists:
            return x.new_zeros(0, k), torch.zeros(0, k, dtype=torch.long, device=x.device)
        return torch.cat(dists), torch.cat(idxs)

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code of every vector ``(N,)``."""
        return self.topk(x, 1)[1][:, 0]

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Code vectors ``(*idx.shape, D)`` of integer indices."""
        return F.embedding(idx, self.embed)

    # -- training-time state updates -------------------------------------------------
    @torch.no_grad()
    def kmeans_(self, x: torch.Tensor, iters: int | None = None) -> None:
        """Initialise the codes by Lloyd's k-means on the vectors ``x`` (N, D).

        Codes start at distinct random vectors of ``x`` (with replacement when ``N < M``);
        an empty cluster keeps its previous centre.
        """
        x = self._check(x)
        m = self.cfg.num_codes
        n = x.shape[0]
        if n == 0:
            raise ValueError("k-means initialisation needs at least one vector")
        pick = torch.randperm(n, device=x.device)[:m] if n >= m else torch.randint(n, (m,))
        centres = x[pick.to(x.device)].clone()
        for _ in range(self.cfg.kmeans_iters if iters is None else iters):
            d = x.pow(2).sum(1, keepdim=True) - 2 * x @ centres.t() + centres.pow(2).sum(1)[None]
            assign = d.argmin(1)
            counts = torch.bincount(assign, minlength=m).float()
            sums = torch.zeros_like(centres).index_add_(0, assign, x)
            filled = counts > 0
            centres[filled] = sums[filled] / counts[filled, None]
        counts = torch.bincount(self.nearest_to(x, centres), minlength=m).float()
        self.embed.copy_(centres)
        self.embed_avg.copy_(centres * counts.clamp_min(1.0)[:, None])
        self.cluster_size.copy_(counts.clamp_min(1.0))
        self.initted.fill_(True)
        _same_on_all_ranks(self.embed, self.embed_avg, self.cluster_size)

    @staticmethod
    def nearest_to(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        d = x.pow(2).sum(1, keepdim=True) - 2 * x @ centres.t() + centres.pow(2).sum(1)[None]
        return d.argmin(1)

    @torch.no_grad()
    def ema_update_(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        """One EMA step with vectors ``x`` (N, D) assigned to their *nearest* codes ``idx`` (N,).

        ``cluster_size <- decay * cluster_size + (1 - decay) * counts``,
        ``embed_avg <- decay * embed_avg + (1 - decay) * sums``, and
        ``embed = embed_avg / smoothed(cluster_size)`` with Laplace smoothing.
        """
        x = self._check(x)
        if idx.shape != (x.shape[0],):
            raise ValueError(
                f"ema_update_ needs one code index per vector: idx {tuple(idx.shape)} vs x {tuple(x.shape)}"
            )
        m, eps = self.cfg.num_codes, self.cfg.eps
        counts = torch.bincount(idx, minlength=m).float()
        sums = torch.zeros(m, x.shape[1], device=x.device).index_add_(0, idx, x)
        _sum_over_ranks(counts, sums)  # under DDP: the statistics of the global batch
        weight = 1.0 - self.cfg.decay
        self.cluster_size.lerp_(counts, weight)
        self.embed_avg.lerp_(sums, weight)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + eps) / (n + m * eps) * n
        self.embed.copy_(self.embed_avg / smoothed[:, None])

    @torch.no_grad()
    def restart_dead_(self, x: torch.Tensor) -> int:
        """Replace codes with EMA cluster size below ``dead_threshold`` by random batch vectors.

        Returns the number of codes restarted.
        """
        if self.cfg.dead_threshold <= 0:
            return 0
        x = self._check(x)
        dead = torch.nonzero(self.cluster_size < self.cfg.dead_threshold).flatten()
        if dead.numel() == 0 or x.shape[0] == 0:
            return 0
        pick = torch.randint(x.shape[0], (dead.numel(),), device=x.device)
        self.embed[dead] = x[pick]
        self.embed_avg[dead] = x[pick]
        self.cluster_size[dead] = 1.0
        _same_on_all_ranks(self.embed, self.embed_avg, self.cluster_size)
        return int(dead.numel())

    # -- statistics ------------------------------------------------------------------
    def usage(self, idx: torch.Tensor | None = None) -> dict[str, float]:
        """Code-usage statistics.

        With ``idx`` (any shape of code indices) the statistics of that assignment;
        without, those of the EMA cluster sizes.

        Returns
        -------
        dict
            ``perplexity`` (``exp`` of the usage entropy, between 1 and ``M``),
            ``used_fraction`` (codes with non-negligible usage) and ``dead`` (count below
            ``dead_threshold``, EMA statistics only).
        """
        m = self.cfg.num_codes
        if idx is None:
            counts = self.cluster_size.float()
        else:
            counts = torch.bincount(idx.flatten(), minlength=m).float()
        p = counts / counts.sum().clamp_min(1e-12)
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
        stats = {
            "perplexity": float(entropy.exp()),
            "used_fraction": float((p > 1e-3 / m).float().mean()),
        }
        if idx is None:
            stats["dead"] = float((self.cluster_size < self.cfg.dead_threshold).sum())
        return stats


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _sum_over_ranks(*tensors: torch.Tensor) -> None:
    """Sum ``tensors`` in place over the ranks of a distributed run (a no-op otherwise)."""
    if _distributed():
        for t in tensors:
            torch.distributed.all_reduce(t)


def _same_on_all_ranks(*tensors: torch.Tensor) -> None:
    """Give every rank rank 0's ``tensors`` (a no-op outside a distributed run)."""
    if _distributed():
        for t in tensors:
            torch.distributed.broadcast(t, src=0)


class QuantizerOutput(NamedTuple):
    """Result of :meth:`Quantizer.forward`: straight-through codes, indices, loss, breakdown."""

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    breakdown: dict[str, torch.Tensor]


class Quantizer(nn.Module):
    """Quantize channels-last vectors with a :class:`CodeBank`.

    Parameters
    ----------
    in_dim : int
        Feature size of the vectors to quantize; projected to the code dimension by a
        linear map when it differs (and back afterwards).
    cfg : CodeBankConfig
        Code bank options.

    Notes
    -----
    Training mode updates the code bank by EMA with the *nearest-code* assignment
    (the public BeamVQ code uses the K-th nearest one, a bug), restarts dead codes, and
    returns the commitment loss, which the caller must add to its loss.
    """

    def __init__(self, in_dim: int, cfg: CodeBankConfig) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.cfg = cfg
        self.bank = CodeBank(cfg)
        if self.in_dim != cfg.dim:
            self.project_in: nn.Module = nn.Linear(self.in_dim, cfg.dim)
            self.project_out: nn.Module = nn.Linear(cfg.dim, self.in_dim)
        else:
            self.project_in = nn.Identity()
            self.project_out = nn.Identity()

    def _flat(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1] != self.in_dim:
            raise ValueError(
                f"Quantizer expects channels-last input (..., {self.in_dim}); got {tuple(z.shape)}"
            )
        return self.project_in(z).reshape(-1, self.cfg.dim).float()

    def forward(self, z: torch.Tensor, *, update: bool | None = None) -> QuantizerOutput:
        """Quantize ``z`` (..., in_dim) to its nearest codes.

        Parameters
        ----------
        z : Tensor
            Channels-last vectors ``(..., in_dim)``.
        update : bool, optional
            Apply the EMA update and dead-code restart (default: in training mode). Pass
            False to defer it, e.g. until candidates have been read from the same codes,
            and call :meth:`update_` afterwards.

        Returns
        -------
        QuantizerOutput
            ``quantized`` (..., in_dim) with the straight-through gradient to ``z``;
            ``indices`` (...) int64; ``loss`` the weighted commitment loss (scalar);
            ``breakdown`` with ``commitment`` (unweighted) and ``perplexity``.
        """
        lead = z.shape[:-1]
        flat = self._flat(z)
        bank = self.bank
        if self.training and not bool(bank.initted):
            bank.kmeans_(flat.detach())
        idx = bank.nearest(flat.detach())
        codes = bank.lookup(idx)
        commit = F.mse_loss(flat, codes.detach())
        q = flat + (codes - flat).detach()  # straight-through in the code space
        q = self.project_out(q.reshape(*lead, self.cfg.dim).to(z.dtype))
        if self.training if update is None else update:
            self.update_(z, idx)
        breakdown = {
            "commitment": commit.detach(),
            "perplexity": torch.tensor(bank.usage(idx)["perplexity"]),
        }
        return QuantizerOutput(q, idx.reshape(lead), self.cfg.commitment * commit, breakdown)

    @torch.no_grad()
    def update_(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        """EMA update with the nearest-code ``indices`` of ``z`` (..., in_dim), then dead-code restart."""
        flat = self._flat(z.detach())
        self.bank.ema_update_(flat, indices.reshape(-1))
        self.bank.restart_dead_(flat)

    def candidates(self, z: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Decode code indices ``(K, ...)`` into quantized tensors ``(K, ..., in_dim)``.

        The straight-through estimator makes every candidate carry the gradient of ``z``
        (``q_k = z + sg(e_k - z)``), so all K candidates can be supervised.
        """
        lead = z.shape[:-1]
        if indices.shape[1:] != lead:
            raise ValueError(
                f"candidate indices must be (K, {', '.join(map(str, lead))}); got {tuple(indices.shape)}"
            )
        flat = self.project_in(z).float()
        codes = self.bank.lookup(indices)
        q = flat.unsqueeze(0) + (codes - flat.unsqueeze(0)).detach()
        return self.project_out(q.to(z.dtype))

    def retrieve(self, z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest codes per vector of ``z`` (..., in_dim): distances, indices (..., k)."""
        lead = z.shape[:-1]
        dist, idx = self.bank.topk(self._flat(z.detach()), k)
        return dist.reshape(*lead, k), idx.reshape(*lead, k)


class IdentityQuantizer(nn.Module):
    """The no-VQ control: the same head with the code bank replaced by the identity.

    ``forward(z)`` returns ``z`` itself (indices all zero, no commitment loss), so every
    one of the K candidates of a head that uses it is the top-1 forecast: what the
    head's encoder, propagator and decoder do without any codes.

    Parameters
    ----------
    in_dim : int
        Feature size of the vectors (``(..., in_dim)``, channels last).
    """

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = int(in_dim)

    def forward(self, z: torch.Tensor, *, update: bool | None = None) -> QuantizerOutput:
        """``z`` (..., in_dim) unchanged, zero indices (...), a zero loss."""
        if z.shape[-1] != self.in_dim:
            raise ValueError(
                f"IdentityQuantizer expects channels-last input (..., {self.in_dim}); got {tuple(z.shape)}"
            )
        idx = torch.zeros(z.shape[:-1], dtype=torch.long, device=z.device)
        return QuantizerOutput(z, idx, z.new_zeros(()), {})

    def candidates(self, z: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``K = indices.shape[0]`` copies of ``z``: ``(K, ..., in_dim)``."""
        return z.unsqueeze(0).expand(indices.shape[0], *z.shape)
