"""``train.fsdp``: shard a model's parameters, gradients and optimizer state over the processes.

For a model that does not fit one device, FSDP2 (``torch.distributed.fsdp.fully_shard``)
replaces DDP: every process keeps a ``1 / world_size`` shard of each parameter and of its
optimizer state, gathers a layer's full parameters for its forward and backward, and
reduce-scatters the gradients. :func:`shard` applies it to each child module that holds
parameters (the blocks of a ``ModuleList`` one by one, so layers are gathered one at a
time) and to the root; the checkpoints hold
full, unsharded tensors (gathered on rank 0 with
``torch.distributed.checkpoint.state_dict``), so a run trained with FSDP loads, forecasts
and resumes like any other.

FSDP needs the same dtype for all parameters of a group, so models with complex
parameters (an FNO's spectral weights) are refused; so are the settings that need DDP
(a comm hook, an averager, the noise scale) and the EMA of the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = [
    "shard",
    "is_sharded",
    "no_sync",
    "full_model_state",
    "full_optimizer_state",
    "load_model_state",
    "load_optimizer_state",
]


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(model: nn.Module) -> nn.Module:
    """``fully_shard`` every child module with parameters, then the root (in place).

    Raises
    ------
    ValueError
        For a model with complex parameters, which FSDP cannot group with real ones.
    """
    from torch.distributed.fsdp import fully_shard

    complex_names = [n for n, p in model.named_parameters() if p.is_complex()]
    if complex_names:
        raise ValueError(
            f"train.fsdp cannot shard complex parameters ({complex_names[0]}"
            f"{' and others' if len(complex_names) > 1 else ''}): FSDP groups parameters of "
            "one dtype; train this model with DDP (train.fsdp=false)"
        )
    for unit in _units(model):
        fully_shard(unit)
    fully_shard(model)
    return model


def _units(module: nn.Module) -> list[nn.Module]:
    """The children with trainable parameters; a container without ``forward``
    (``ModuleList``, ``ModuleDict``) contributes its own children instead."""
    out = []
    for child in module.children():
        if not any(p.requires_grad for p in child.parameters()):
            continue
        if isinstance(child, nn.ModuleList | nn.ModuleDict):
            out.extend(_units(child))
        else:
            out.append(child)
    return out


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded with ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def no_sync(model: nn.Module) -> Iterator[None]:
    """Accumulate gradients locally, without reduce-scatter (the micro-batches before the last)."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict, on the CPU of rank 0 (empty elsewhere); a collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full optimizer state (keyed by parameter names), on rank 0; a collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options())


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (every rank passes the whole dict) into the sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a full optimizer state from :func:`full_optimizer_state` (every rank passes it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True)
    )
