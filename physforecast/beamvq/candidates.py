"""Which codes make the K candidates: the K nearest, or temperature sampling over distances.

Both functions take the per-position retrieval of :meth:`CodeBank.topk`, i.e. the
``P`` nearest codes of every latent position with their squared distances, and return
``K`` code-index maps, candidate-major: ``(K, *positions)``.

* ``temperature == 0``: candidate ``k`` uses the ``k``-th nearest code at every position
  at once (the authors' scheme; candidate 0 is the ordinary VQ output).
* ``temperature > 0``: candidate 0 is still the nearest code everywhere; candidates
  ``1..K-1`` draw, independently per position, one of the ``P`` nearest codes with
  probability ``softmax(-(d - d_1) / (temperature * (d_P - d_1)))``. The distances are
  rescaled per position so that the temperature is scale-free: at ``temperature=1``
  the farthest code of the pool is ``e`` times less likely than the nearest.
"""

from __future__ import annotations

import torch

__all__ = ["nearest_candidates", "sampled_candidates", "candidate_indices"]


def nearest_candidates(idx: torch.Tensor, k: int) -> torch.Tensor:
    """Rank slices of the retrieval: candidate ``j`` is the ``j``-th nearest code everywhere.

    Parameters
    ----------
    idx : Tensor
        Nearest-code indices ``(..., P)`` sorted by distance, ``P >= k``.
    k : int
        Number of candidates ``K``.

    Returns
    -------
    Tensor
        Code indices ``(K, ...)``.
    """
    if idx.shape[-1] < k:
        raise ValueError(f"need at least k={k} retrieved codes per position; got {idx.shape[-1]}")
    return idx[..., :k].movedim(-1, 0).contiguous()


def sampled_candidates(
    dist: torch.Tensor,
    idx: torch.Tensor,
    k: int,
    temperature: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Candidate 0 = nearest codes; candidates ``1..K-1`` sampled per position.

    Parameters
    ----------
    dist, idx : Tensor
        Squared distances and indices ``(..., P)`` of the ``P`` nearest codes, ascending.
    k : int
        Number of candidates ``K``.
    temperature : float
        Positive sampling temperature (see the module docstring).
    generator : torch.Generator, optional
        Source of randomness; pass a seeded one for reproducible candidates.

    Returns
    -------
    Tensor
        Code indices ``(K, ...)``.
    """
    if temperature <= 0:
        raise ValueError(f"sampled_candidates needs temperature > 0; got {temperature}")
    lead = idx.shape[:-1]
    pool = idx.shape[-1]
    d = dist.float().reshape(-1, pool)
    spread = (d[:, -1:] - d[:, :1]).clamp_min(1e-12)
    logits = -(d - d[:, :1]) / (temperature * spread)
    probs = torch.softmax(logits, dim=-1)
    out = [idx[..., 0]]
    if k > 1:
        draws = torch.multinomial(probs, k - 1, replacement=True, generator=generator)
        picked = torch.gather(idx.reshape(-1, pool), 1, draws)  # (positions, K-1)
        out.extend(picked.t().reshape(k - 1, *lead).unbind(0))
    return torch.stack(out)


def candidate_indices(
    dist: torch.Tensor,
    idx: torch.Tensor,
    k: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Dispatch: K nearest (``temperature == 0``) or temperature sampling; ``(K, ...)``."""
    if k < 1:
        raise ValueError(f"number of candidates must be >= 1; got {k}")
    if temperature == 0:
        return nearest_candidates(idx, k)
    return sampled_candidates(dist, idx, k, temperature, generator)
