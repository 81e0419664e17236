"""What the parties share: the backbone's encoder trunk (transfer) or everything (FedAvg).

Every backbone splits at its latent, ``encode(x, cond) -> Latent(z, skips)`` and
``decode(latent, cond)``. The **encoder trunk** is the set of parameters that ``encode``
uses: found by differentiating ``z`` and every tensor in ``skips`` with respect to all
parameters on one example batch (:func:`encoder_parameter_names`); whatever receives a
gradient belongs to the trunk, the rest (decoder, output head) to the local head. This
works for any backbone without naming its modules.

Why the trunk is shared and the head stays local: the trunk maps fields to features of
the shared physics (vortices, fronts, spectra), which a data-rich party can teach a
data-poor one; the decoder and head map those features to one party's own forecast
(its regime, its normalisation, its grid's quirks) and are fitted where the data are.
Keeping the head local also means the aggregate never carries the layers closest to
a party's outputs.

Sharing plans register in :data:`SHARING`: ``"transfer"`` (encoder trunk) and
``"fedavg"`` (every parameter, the FedAvg baseline).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from physforecast.registry import Registry

__all__ = [
    "SHARING",
    "encoder_parameter_names",
    "shared_names",
    "get_vector",
    "set_vector",
]

#: Sharing plans: ``plan(model, x, cond) -> list of parameter names``.
SHARING = Registry("sharing plan")


def encoder_parameter_names(
    model: nn.Module, x: torch.Tensor, cond: torch.Tensor | None = None
) -> list[str]:
    """Names of the parameters that ``model.encode`` depends on.

    Parameters
    ----------
    model : Backbone
        Has ``encode(x, cond) -> Latent(z, skips)``.
    x : torch.Tensor
        An example input (B, T_in, C, H, W).
    cond : torch.Tensor, optional
        (B, P) parameters when the model is conditioned.

    Returns
    -------
    list of str
        In ``named_parameters()`` order.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    latent = model.encode(x, cond)
    outputs = [latent.z, *(s for s in latent.skips if torch.is_tensor(s) and s.requires_grad)]
    total = sum(o.float().sum() for o in outputs)
    grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    names = [n for (n, _), g in zip(named, grads) if g is not None]
    if not names:
        raise ValueError(f"{type(model).__name__}.encode uses no trainable parameters")
    return names


@SHARING.register("transfer", description="encoder trunk shared, decoder and head local")
def share_encoder(model: nn.Module, x: torch.Tensor, cond: torch.Tensor | None = None) -> list[str]:
    """Federated transfer learning: share the encoder trunk only."""
    names = encoder_parameter_names(model, x, cond)
    if len(names) == len(list(model.parameters())):
        raise ValueError(
            f"{type(model).__name__}: encode() uses every parameter, so nothing would stay "
            "local; use sharing='fedavg' for this backbone"
        )
    return names


@SHARING.register("fedavg", description="every parameter shared (FedAvg baseline)")
def share_all(model: nn.Module, x: torch.Tensor, cond: torch.Tensor | None = None) -> list[str]:
    """FedAvg: share the whole backbone."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def shared_names(
    plan: str, model: nn.Module, x: torch.Tensor, cond: torch.Tensor | None = None
) -> list[str]:
    """The parameters shared under the registered ``plan``."""
    return SHARING.entry(plan).factory(model, x, cond)


def get_vector(model: nn.Module, names: list[str]) -> np.ndarray:
    """The named parameters flattened into one (n,) float64 vector, in ``names`` order."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        return torch.cat([params[n].detach().reshape(-1).double().cpu() for n in names]).numpy()


def set_vector(model: nn.Module, names: list[str], vector: np.ndarray) -> None:
    """Write a vector from :func:`get_vector` back into the named parameters."""
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in names)
    if vector.shape != (total,):
        raise ValueError(f"vector of shape {vector.shape} does not match {total} parameters")
    offset = 0
    with torch.no_grad():
        for n in names:
            p = params[n]
            chunk = torch.from_numpy(np.ascontiguousarray(vector[offset : offset + p.numel()]))
            p.copy_(chunk.reshape(p.shape).to(p.dtype))
            offset += p.numel()
