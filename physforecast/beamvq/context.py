"""The physics of a run as the scores see it, kept in the model's buffers.

:class:`PhysicsContext` turns a history ``(N, T_in, C, H, W)`` and its parameters into the
:class:`~physforecast.search.scores.ScoreContext` the candidate scores need: units (the
field normalization), grid spacing and frame interval, viscosity, which channels are
vorticity or velocity, the forcing and the boundary condition. Its buffers travel in the
checkpoint, so a loaded model scores exactly as the trained one did.
"""

from __future__ import annotations

import torch
from torch import nn

from physforecast.data.prepare import PreparedData
from physforecast.search.scores import PhysicsSpec, ScoreContext

__all__ = ["PhysicsContext", "VORTICITY_NAMES", "VELOCITY_NAMES"]

VORTICITY_NAMES = ("vorticity", "omega", "vort", "w")
VELOCITY_NAMES = (("u", "v"), ("velocity_x", "velocity_y"), ("vx", "vy"))


class PhysicsContext(nn.Module):
    """Builds the :class:`ScoreContext` of a history; its physics travel in the checkpoint.

    Buffers hold the field normalization, the grid spacing and frame interval, the
    viscosity (a constant, or read from ``cond`` by undoing the parameter normalization),
    the channel indices of vorticity and velocity, and whether the ns2d forcing applies.

    Parameters
    ----------
    channels : int
        Variables per frame ``C``.
    n_params : int
        Physical parameters ``P`` in ``cond``.
    """

    def __init__(self, channels: int, n_params: int = 0) -> None:
        super().__init__()
        self.register_buffer("norm_mean", torch.zeros(channels))
        self.register_buffer("norm_std", torch.ones(channels))
        self.register_buffer("spacing", torch.ones(3))  # dx, dy, dt
        self.register_buffer("viscosity", torch.tensor(float("nan")))
        self.register_buffer("param_mean", torch.zeros(n_params))
        self.register_buffer("param_std", torch.ones(n_params))
        self.register_buffer("param_log", torch.zeros(n_params, dtype=torch.bool))
        self.register_buffer("visc_index", torch.tensor(-1))
        self.register_buffer("vort_index", torch.tensor(-1))
        self.register_buffer("vel_index", torch.tensor([-1, -1]))
        self.register_buffer("ns2d_forcing", torch.tensor(False))
        self.register_buffer("periodic", torch.tensor(True))

    @torch.no_grad()
    def fill(self, prepared: PreparedData) -> PhysicsContext:
        """Set the buffers from a run's prepared data (dataset attrs, normalizer, variables)."""
        ds, norm = prepared.dataset, prepared.normalizer
        self.norm_mean.copy_(torch.tensor(norm.mean))
        self.norm_std.copy_(torch.tensor(norm.std))
        attrs = ds.attrs
        self.spacing.copy_(torch.tensor([float(attrs.get(k, 1.0)) for k in ("dx", "dy", "dt")]))
        names = list(prepared.variables)
        for cand in VORTICITY_NAMES:
            if cand in names:
                self.vort_index.fill_(names.index(cand))
                break
        for u, v in VELOCITY_NAMES:
            if u in names and v in names:
                self.vel_index.copy_(torch.tensor([names.index(u), names.index(v)]))
                break
        forcing = str(attrs.get("forcing", "")).replace(" ", "")
        self.ns2d_forcing.fill_("sin(2*pi*(x+y))" in forcing and "cos(2*pi*(x+y))" in forcing)
        self.periodic.fill_(str(attrs.get("boundary_conditions", "periodic")) == "periodic")
        params = list(prepared.param_names)
        if norm.params:
            self.param_mean.copy_(torch.tensor(norm.param_mean))
            self.param_std.copy_(torch.tensor(norm.param_std))
            self.param_log.copy_(torch.tensor(norm.param_log))
        if "viscosity" in params:
            self.visc_index.fill_(params.index("viscosity"))
        elif "viscosity" in ds.data_vars:
            values = torch.as_tensor(ds["viscosity"].values, dtype=torch.float64).flatten()
            if values.numel() and bool((values == values[0]).all()):
                self.viscosity.fill_(float(values[0]))
        return self

    def denormalize(self, t: torch.Tensor) -> torch.Tensor:
        """Model units -> physical units for ``(..., C, H, W)``."""
        shape = (-1, 1, 1)
        return t * self.norm_std.to(t).reshape(shape) + self.norm_mean.to(t).reshape(shape)

    def _viscosity(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        i = int(self.visc_index)
        if i >= 0 and cond is not None:
            v = cond[:, i].float() * self.param_std[i] + self.param_mean[i]
            return torch.pow(10.0, v) if bool(self.param_log[i]) else v
        if torch.isfinite(self.viscosity):
            return self.viscosity.float()
        return None

    def forward(self, history: torch.Tensor, cond: torch.Tensor | None = None) -> ScoreContext:
        """The score context of ``history`` (N, T_in, C, H, W) with parameters ``cond`` (N, P)."""
        vort, vel = int(self.vort_index), [int(v) for v in self.vel_index]
        dx, dy, dt = (float(s) for s in self.spacing)
        phys = PhysicsSpec(
            dx=dx,
            dy=dy,
            dt=dt,
            viscosity=self._viscosity(cond),
            forcing="ns2d" if bool(self.ns2d_forcing) else None,
            vorticity=vort if vort >= 0 else None,
            velocity=(vel[0], vel[1]) if min(vel) >= 0 else None,
            periodic=bool(self.periodic),
        )
        return ScoreContext(history=history, physics=phys, denormalize=self.denormalize)
