"""A trained model as a ready forecaster: physical units in, physical units out.

:func:`load` rebuilds the model of a run directory (through its method) with its
normalization, config and data spec as a :class:`Forecaster`.

Examples
--------
>>> import physforecast as pf                                 # doctest: +SKIP
>>> fc = pf.load("runs/ns2d-fno")                             # doctest: +SKIP
>>> fc.variables, fc.in_steps, fc.out_steps                   # doctest: +SKIP
(['vorticity'], 10, 10)
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from physforecast.data.layout import ChannelLayout
from physforecast.data.normalization import Normalizer
from physforecast.run_dir import RunDir

__all__ = ["Forecaster", "load"]


class Forecaster(nn.Module):
    """A model with the normalization it was trained with.

    Parameters
    ----------
    model : nn.Module
        Maps normalized ``x`` (B, T_in, C, H, W) and ``cond`` (B, P) to normalized
        (B, T_out, C, H, W).
    normalizer : Normalizer
        Statistics of the training split, per channel; names the variables and parameters.
    in_steps, out_steps : int, optional
        ``T_in`` and ``T_out``; read from ``model.in_steps`` / ``model.out_steps`` when
        omitted.
    config : Config, optional
        The run's resolved config.
    layout : ChannelLayout, optional
        The training data's variables, levels and grid; inputs that differ are refused.
    grid : dict, optional
        Only the grid to check, e.g. ``{"y": 64, "x": 64}``, when there is no ``layout``.
    run_dir : path, optional
        Where the forecaster was loaded from (recorded in forecast attributes).

    Attributes
    ----------
    variables : list of str
        The forecast variables, in channel order.
    params : list of str
        The physical parameters passed to the model as ``cond``, in order.
    """

    def __init__(
        self,
        model: nn.Module,
        normalizer: Normalizer,
        *,
        in_steps: int | None = None,
        out_steps: int | None = None,
        config: Any = None,
        layout: ChannelLayout | None = None,
        grid: dict[str, int] | None = None,
        run_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.normalizer = normalizer
        self.config = config
        in_steps = in_steps if in_steps is not None else getattr(model, "in_steps", None)
        out_steps = out_steps if out_steps is not None else getattr(model, "out_steps", None)
        if in_steps is None or out_steps is None:
            raise ValueError(
                "the model has no in_steps/out_steps attributes; pass in_steps= and out_steps="
            )
        self.in_steps, self.out_steps = int(in_steps), int(out_steps)
        if layout is not None and layout.variables != list(normalizer.variables):
            raise ValueError(
                f"the layout's variables {layout.variables} differ from the normalizer's "
                f"{normalizer.variables}"
            )
        self.layout = layout
        grid = layout.grid if layout is not None else grid
        self.grid = {str(k): int(v) for k, v in grid.items()} if grid else None
        self.run_dir = str(run_dir) if run_dir is not None else None
        self.eval()

    @property
    def variables(self) -> list[str]:
        return list(self.normalizer.variables)

    @property
    def params(self) -> list[str]:
        return list(self.normalizer.params)

    @property
    def cond_dim(self) -> int:
        """Number of physical parameters the model is conditioned on (0: none)."""
        return int(getattr(self.model, "cond_dim", 0) or 0)

    @property
    def device(self) -> torch.device:
        first = next(self.model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    @torch.no_grad()
    def step(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """One model call in normalized units: (B, T_in, C, H, W) -> (B, T_out, C, H, W), fp32,
        on the model's device and returned on ``x``'s."""
        device = self.device
        cond = cond.to(device) if (cond is not None and self.cond_dim) else None
        return self.model(x.to(device), cond).float().to(x.device)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Physical fields (..., C, H, W) -> normalized float32, NaN (masked) points -> 0."""
        z = self.normalizer.normalize(x.double())
        return torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0).float()

    def condition(self, params: torch.Tensor | None) -> torch.Tensor | None:
        """Physical parameters (B, P) -> the model's normalized ``cond`` (None if unconditioned)."""
        if not self.cond_dim:
            return None
        if params is None:
            raise ValueError(f"the model is conditioned on {self.params}; pass params=")
        return self.normalizer.normalize_params(params.double()).float()

    @torch.no_grad()
    def forward(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        """Forecast in physical units.

        Parameters
        ----------
        x : torch.Tensor
            History (B, T_in, C, H, W) in physical units, channels as the layout says; NaN
            (masked) points are allowed.
        params : torch.Tensor, optional
            Physical parameters (B, P) in physical units, required when ``cond_dim > 0``.

        Returns
        -------
        torch.Tensor
            (B, T_out, C, H, W) in physical units.
        """
        y = self.step(self.normalize(x), self.condition(params))
        return self.normalizer.denormalize(y.double()).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"variables={self.variables}, params={self.params}, in_steps={self.in_steps}, "
            f"out_steps={self.out_steps}, grid={self.grid}"
        )


def load(
    run_dir: str | os.PathLike,
    checkpoint: str = "best",
    *,
    device: str | torch.device = "cpu",
) -> Forecaster:
    """Load the trained model of a run directory, ready to forecast.

    Parameters
    ----------
    run_dir : path
        A directory written by ``physforecast train``.
    checkpoint : str
        ``"best"`` or ``"last"`` (a file ``checkpoints/<checkpoint>.pt``).
    device : str or torch.device
        Where the model runs.

    Returns
    -------
    Forecaster
        In eval mode, with ``.model``, ``.normalizer``, ``.config``, ``.layout``,
        ``.variables``, ``.params``, ``.in_steps``, ``.out_steps`` and ``.grid``.

    Raises
    ------
    FileNotFoundError
        When ``run_dir`` is not a run directory or the checkpoint is missing.
    """
    run = RunDir(run_dir).require()
    loaded = run.load_model(checkpoint, device=device)
    return Forecaster(
        loaded.model,
        loaded.normalizer,
        in_steps=loaded.data.in_steps,
        out_steps=loaded.data.out_steps,
        config=loaded.config,
        layout=loaded.data.layout,
        run_dir=run.path,
    ).to(device)
