"""ST-PAD's physical constraints: differentiable residual losses on decoded fields.

Every constraint is a function of :mod:`physforecast.metrics` (the residuals of
:mod:`~physforecast.metrics.residuals`, the divergence and conservation metrics of
:mod:`~physforecast.metrics.physics`), so the loss that trains a model and the metric
that scores its forecasts are one definition. :class:`PhysicsConstraints` only arranges
units, channels and parameters around them:

``pde``
    The system's own equation where the dataset names it: the Navier-Stokes vorticity
    equation for ``ns2d`` (:func:`~physforecast.metrics.residuals.ns_vorticity_residual`,
    the run's viscosity per sample), shallow-water continuity for ``shallow_water``,
    the Boussinesq equations for ``rayleigh_benard`` (Ra and Pr per sample).
``heat``
    The heat equation ``dc/dt = kappa lap c`` on every channel (the generic constraint of
    the authors' code, ``kappa = stpad.heat_kappa``).
``divergence``
    RMS divergence of the velocity channels (when the variables include ``u, v``).
``mass``, ``energy``
    Drift of the domain mean of ``c`` and ``c^2 / 2`` of every channel from the last
    history frame (:func:`~physforecast.metrics.physics.conservation_drift`).

Each term is made dimensionless by a scale from the training statistics (a channel's
standard deviation over ``dt`` for an evolution equation, over ``dx`` for the divergence,
the standard deviation itself for a mean), squared and averaged; with a truth at hand
(``excess=True``) only the part of the squared residual above the truth's counts, since
the residual of frames saved ``dt`` apart is not zero even for the exact solution. A
weight of 0 switches a term off; a term the data does not support (no velocity channels)
is left out (see :attr:`PhysicsConstraints.active`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from physforecast.data.prepare import PreparedData
from physforecast.metrics.physics import conservation_drift, divergence_rms
from physforecast.metrics.residuals import (
    boussinesq_residual,
    heat_residual,
    ns_vorticity_residual,
    shallow_water_continuity_residual,
)

__all__ = ["CONSTRAINTS", "SYSTEMS", "PhysicsConstraints", "DEFAULT_WEIGHTS"]

#: The constraint names, in the order they are computed.
CONSTRAINTS = ("pde", "heat", "divergence", "mass", "energy")
#: Systems with their own PDE residual (``pde``), with the variables it needs.
SYSTEMS = {
    "ns2d": ("vorticity",),
    "shallow_water": ("h", "u", "v"),
    "rayleigh_benard": ("temperature", "u", "v"),
}
#: Default weights of ``stpad.constraints``.
DEFAULT_WEIGHTS = {"pde": 0.1, "heat": 0.0, "divergence": 0.1, "mass": 0.1, "energy": 0.0}
_SYSTEM_CODE = {name: i for i, name in enumerate(SYSTEMS)}
_PARAMS = ("viscosity", "rayleigh", "prandtl")


class PhysicsConstraints(nn.Module):
    """Weighted physical residuals of decoded forecasts, as a loss.

    Its buffers (normalization, grid, system, channel and parameter positions) travel in
    the model's checkpoint; :meth:`fill` sets them from a run's data.

    Parameters
    ----------
    channels : int
        Channels ``C`` per frame.
    n_params : int
        Parameters ``P`` in ``params`` (normalized as the run's
        :class:`~physforecast.data.normalization.Normalizer` does).
    weights : mapping of str to float, optional
        Constraint name -> weight (:data:`DEFAULT_WEIGHTS` when omitted); names outside
        :data:`CONSTRAINTS` are refused.
    heat_kappa : float
        Diffusivity of the ``heat`` constraint.
    excess : bool
        With a truth, penalize only the squared residual above the truth's.
    """

    def __init__(
        self,
        channels: int,
        n_params: int = 0,
        weights: Mapping[str, float] | None = None,
        *,
        heat_kappa: float = 1.0,
        excess: bool = True,
    ) -> None:
        super().__init__()
        weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = sorted(set(weights) - set(CONSTRAINTS))
        if unknown:
            raise ValueError(
                f"unknown physics constraint(s) {unknown}; valid: {', '.join(CONSTRAINTS)}"
            )
        bad = {k: v for k, v in weights.items() if not float(v) >= 0}
        if bad:
            raise ValueError(f"constraint weights must be >= 0; got {bad}")
        self.weights = {k: float(weights.get(k, 0.0)) for k in CONSTRAINTS}
        self.heat_kappa = float(heat_kappa)
        self.excess = bool(excess)
        self.register_buffer("norm_mean", torch.zeros(channels))
        self.register_buffer("norm_std", torch.ones(channels))
        self.register_buffer("spacing", torch.ones(3))  # dx, dy, dt
        self.register_buffer("param_mean", torch.zeros(n_params))
        self.register_buffer("param_std", torch.ones(n_params))
        self.register_buffer("param_log", torch.zeros(n_params, dtype=torch.bool))
        # per parameter of _PARAMS: its position in params (-1: none), else a constant (nan)
        self.register_buffer("param_index", torch.full((len(_PARAMS),), -1))
        self.register_buffer("param_const", torch.full((len(_PARAMS),), float("nan")))
        self.register_buffer("system", torch.tensor(-1))
        self.register_buffer("system_channels", torch.full((3,), -1))
        self.register_buffer("vel_index", torch.tensor([-1, -1]))
        self.register_buffer("periodic", torch.tensor(True))
        self.register_buffer("ns2d_forcing", torch.tensor(False))

    # -- set up ------------------------------------------------------------------------
    @torch.no_grad()
    def fill(self, prepared: PreparedData) -> PhysicsConstraints:
        """Set the buffers from a run's prepared data (attrs, normalizer, variables)."""
        ds, norm = prepared.dataset, prepared.normalizer
        self.norm_mean.copy_(torch.tensor(norm.mean))
        self.norm_std.copy_(torch.tensor(norm.std))
        attrs = ds.attrs
        self.spacing.copy_(torch.tensor([float(attrs.get(k, 1.0)) for k in ("dx", "dy", "dt")]))
        channels = list(norm.channels)
        system = str(attrs.get("system", ""))
        if system in SYSTEMS and all(v in channels for v in SYSTEMS[system]):
            self.system.fill_(_SYSTEM_CODE[system])
            idx = [channels.index(v) for v in SYSTEMS[system]] + [-1, -1]
            self.system_channels.copy_(torch.tensor(idx[:3]))
        if "u" in channels and "v" in channels:
            self.vel_index.copy_(torch.tensor([channels.index("u"), channels.index("v")]))
        bc = str(attrs.get("boundary_conditions", "periodic"))
        self.periodic.fill_(bc == "periodic")
        forcing = str(attrs.get("forcing", "")).replace(" ", "")
        self.ns2d_forcing.fill_("sin(2*pi*(x+y))" in forcing and "cos(2*pi*(x+y))" in forcing)
        params = list(prepared.param_names)
        if norm.params:
            self.param_mean.copy_(torch.tensor(norm.param_mean))
            self.param_std.copy_(torch.tensor(norm.param_std))
            self.param_log.copy_(torch.tensor(norm.param_log))
        for i, name in enumerate(_PARAMS):
            if name in params:
                self.param_index[i] = params.index(name)
            elif name in ds.data_vars:
                values = torch.as_tensor(ds[name].values, dtype=torch.float64).flatten()
                if values.numel() and bool((values == values[0]).all()):
                    self.param_const[i] = float(values[0])
        return self

    @property
    def system_name(self) -> str | None:
        """The system whose own PDE the ``pde`` term uses (None: none)."""
        code = int(self.system)
        return list(SYSTEMS)[code] if code >= 0 else None

    def parameter(self, name: str, params: torch.Tensor | None) -> torch.Tensor | None:
        """Physical value of ``name`` per sample ``(B,)`` from normalized ``params``
        (B, P), or the dataset's constant; None when neither is known."""
        i = _PARAMS.index(name)
        j = int(self.param_index[i])
        if j >= 0 and params is not None:
            v = params[:, j].double() * self.param_std[j].double() + self.param_mean[j].double()
            return torch.pow(10.0, v) if bool(self.param_log[j]) else v
        const = self.param_const[i]
        return const.double() if torch.isfinite(const) else None

    @property
    def active(self) -> list[str]:
        """The constraints with a positive weight that the data supports."""
        out = []
        for name in CONSTRAINTS:
            if self.weights[name] <= 0:
                continue
            if name == "pde" and self.system_name is None:
                continue
            if name == "divergence" and int(self.vel_index.min()) < 0:
                continue
            out.append(name)
        return out

    # -- the residuals -----------------------------------------------------------------
    def denormalize(self, t: torch.Tensor) -> torch.Tensor:
        """Model units -> physical units of fields (..., C, H, W)."""
        shape = (-1, 1, 1)
        return t * self.norm_std.to(t).reshape(shape) + self.norm_mean.to(t).reshape(shape)

    def residuals(
        self,
        seq: torch.Tensor,
        params: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        names: list[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each constraint's dimensionless residual per frame.

        Parameters
        ----------
        seq : Tensor
            Frames ``(B, T, C, H, W)`` in model (normalized) units, ``dt`` apart, T >= 2.
        params : Tensor, optional
            Normalized parameters ``(B, P)``.
        mask : Tensor, optional
            Valid points ``(B, C, H, W)`` (bool).
        names : list of str, optional
            Which constraints (default :attr:`active`).

        Returns
        -------
        dict of str to Tensor
            ``(B, T)`` per constraint: the RMS residual over space divided by its scale.
        """
        if seq.ndim != 5 or seq.shape[1] < 2:
            raise ValueError(f"residuals need frames (B, T>=2, C, H, W); got {tuple(seq.shape)}")
        phys = self.denormalize(seq.double())
        dx, dy, dt = (float(s) for s in self.spacing)
        std = self.norm_std.double()
        periodic = bool(self.periodic)
        m = None if mask is None else mask.bool().all(1)[:, None]  # (B, 1, H, W)
        out: dict[str, torch.Tensor] = {}
        for name in names if names is not None else self.active:
            if name == "pde":
                out[name] = self._pde(phys, params, m, dx, dy, dt, periodic)
            elif name == "heat":
                fields = phys.movedim(2, 1)  # (B, C, T, H, W)
                r = heat_residual(
                    fields,
                    mask=None if m is None else m[:, None],
                    dx=dx,
                    dy=dy,
                    dt=dt,
                    kappa=self.heat_kappa,
                    periodic=periodic,
                )
                out[name] = (r / (std[:, None] / dt)).pow(2).mean(1).sqrt()
            elif name == "divergence":
                iu, iv = (int(i) for i in self.vel_index)
                uv = phys[:, :, [iu, iv]]
                r = divergence_rms(
                    uv, mask=None if m is None else m[:, :, None], dx=dx, dy=dy, periodic=periodic
                )
                out[name] = r / (0.5 * (std[iu] + std[iv]) / dx)
            elif name in ("mass", "energy"):
                fields = phys.movedim(2, 1)  # (B, C, T, H, W)
                drift = conservation_drift(
                    fields, mask=None if m is None else m[:, None], quantity=name
                )
                scale = std if name == "mass" else std * (std + self.norm_mean.double().abs())
                out[name] = (drift / scale[:, None]).pow(2).mean(1).sqrt()
            else:
                raise ValueError(f"unknown constraint {name!r}; valid: {', '.join(CONSTRAINTS)}")
        return {k: v.to(seq.dtype) for k, v in out.items()}

    def _pde(self, phys, params, m, dx, dy, dt, periodic) -> torch.Tensor:
        system = self.system_name
        idx = [int(i) for i in self.system_channels if int(i) >= 0]
        std = self.norm_std.double()
        if system == "ns2d":
            nu = self._need("viscosity", params)
            forcing = "ns2d" if bool(self.ns2d_forcing) else 0.0
            r = ns_vorticity_residual(
                phys[:, :, idx[0]], mask=m, dx=dx, dy=dy, dt=dt, nu=nu, forcing=forcing
            )
            return r / (std[idx[0]] / dt)
        fields = phys[:, :, idx]
        mm = None if m is None else m[:, :, None]
        if system == "shallow_water":
            r = shallow_water_continuity_residual(
                fields, mask=mm, dx=dx, dy=dy, dt=dt, periodic=periodic
            )
            return r / (std[idx[0]] / dt)
        ra, pr = self._need("rayleigh", params), self._need("prandtl", params)
        r = boussinesq_residual(fields, mask=mm, dx=dx, dy=dy, dt=dt, rayleigh=ra, prandtl=pr)
        return r / (std[idx].mean() / dt)

    def _need(self, name: str, params: torch.Tensor | None) -> torch.Tensor:
        value = self.parameter(name, params)
        if value is None:
            raise ValueError(
                f"the {self.system_name} residual needs the parameter {name!r}: list it in "
                "data.params, or use a dataset where it is one constant"
            )
        return value

    def forward(
        self,
        pred: torch.Tensor,
        history: torch.Tensor,
        params: torch.Tensor | None = None,
        *,
        target: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted constraint loss of a forecast.

        Parameters
        ----------
        pred : Tensor
            Decoded forecast ``(B, T, C, H, W)`` in model units (differentiable).
        history : Tensor
            Input frames ``(B, T_in, C, H, W)``; the last one precedes ``pred``.
        params : Tensor, optional
            Normalized parameters ``(B, P)``.
        target : Tensor, optional
            Truth ``(B, T, C, H, W)``: with ``excess`` only the residual above its
            residual is penalized.
        mask : Tensor, optional
            Valid points ``(B, C, H, W)``.

        Returns
        -------
        (Tensor, dict)
            The scalar loss and each term's (weighted) value, ``phys_<name>``.
        """
        names = self.active
        if not names:
            return pred.new_zeros(()), {}
        last = history[:, -1:].to(pred.dtype)
        res = self.residuals(torch.cat([last, pred], 1), params, mask=mask, names=names)
        ref = None
        if target is not None and self.excess:
            with torch.no_grad():
                seq = torch.cat([last, target.to(pred.dtype)], 1)
                ref = self.residuals(seq, params, mask=mask, names=names)
        total = pred.new_zeros(())
        logs: dict[str, float] = {}
        for name in names:
            sq = res[name][:, 1:].pow(2)
            if ref is not None:
                sq = torch.relu(sq - ref[name][:, 1:].pow(2))
            term = self.weights[name] * sq.mean()
            total = total + term
            logs[f"phys_{name}"] = float(term.detach())
        return total, logs
