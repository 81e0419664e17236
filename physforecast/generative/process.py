"""What every noise process of :mod:`physforecast.generative` shares.

:class:`NoiseProcess` turns a process's ``loss(model, x0, **kwargs)`` into one optimizer
step; :class:`~physforecast.generative.flow.FlowMatching` and
:class:`~physforecast.generative.diffusion.DDPM` build on it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["NoiseProcess"]


class NoiseProcess:
    """A training objective ``loss(model, x0, **kwargs) -> scalar Tensor`` with a step."""

    def loss(self, model: nn.Module, x0: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The scalar training loss of ``model`` on clean targets ``x0`` (B, C, ...)."""
        raise NotImplementedError

    def train_step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        x0: torch.Tensor,
        **kwargs: Any,
    ) -> float:
        """One optimizer step on the loss (``kwargs`` as in :meth:`loss`); the loss value."""
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(model, x0, **kwargs)
        loss.backward()
        optimizer.step()
        return float(loss.detach())
