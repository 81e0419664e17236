"""Toy data shared by the generative tests."""

from __future__ import annotations

import torch

#: Cholesky factor of the toy covariance; mean (2p, -p) for the parameter p.
TOY_CHOL = torch.tensor([[0.7, 0.0], [0.5, 0.4]])


def toy_data(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 1) parameters -> (B, 2, 1, 1) samples."""
    z = torch.randn(p.shape[0], 2, generator=generator)
    mean = torch.cat([2 * p, -p], dim=1)
    return (mean + z @ TOY_CHOL.T).reshape(-1, 2, 1, 1)
