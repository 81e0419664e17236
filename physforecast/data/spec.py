"""What a trained model expects of its input: :class:`DataSpec`, saved as a run's ``data.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .layout import ChannelLayout

__all__ = ["DataSpec"]


@dataclass
class DataSpec:
    """The data a run was trained on, as far as a forecast needs to know.

    Attributes
    ----------
    layout : ChannelLayout
        Variables, their levels and the grid.
    params : list of str
        Physical parameters passed to the model as ``cond``, in order.
    in_steps, out_steps : int
        History ``T_in`` and horizon ``T_out`` of one model call.
    system : str
        The dataset's ``system`` attribute (``ns2d``...), empty when it has none.
    attrs : dict
        Dataset attributes the physics needs (grid spacing ``dx``/``dy``, frame interval
        ``dt``, ``boundary_conditions``, ``forcing``...), JSON-safe.
    """

    layout: ChannelLayout
    params: list[str] = field(default_factory=list)
    in_steps: int = 1
    out_steps: int = 1
    system: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def variables(self) -> list[str]:
        """The forecast variables, in channel order."""
        return list(self.layout.variables)

    @property
    def in_channels(self) -> int:
        """Channels ``C`` of one frame."""
        return self.layout.channels

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; keeps the flat keys (``variables``, ``spatial_dims``, ``shape``...)
        for readers of older runs beside the full ``layout``."""
        return {
            "variables": self.variables,
            "params": list(self.params),
            "spatial_dims": list(self.layout.spatial),
            "shape": list(self.layout.shape),
            "in_steps": self.in_steps,
            "out_steps": self.out_steps,
            "in_channels": self.in_channels,
            "system": self.system,
            "layout": self.layout.to_dict(),
            "attrs": dict(self.attrs),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSpec:
        """Rebuild from :meth:`to_dict` output (or the ``data.json`` of an older run, which
        had one channel per variable)."""
        if "layout" in data:
            layout = ChannelLayout.from_dict(data["layout"])
        else:
            variables = [str(v) for v in data["variables"]]
            if int(data.get("in_channels", len(variables))) != len(variables):
                raise ValueError(
                    "this data.json predates channel layouts and its variables have levels; "
                    "retrain the run to forecast with it"
                )
            layout = ChannelLayout(
                variables,
                [[] for _ in variables],
                tuple(data["spatial_dims"]),
                tuple(data["shape"]),
            )
        return cls(
            layout,
            [str(p) for p in data.get("params", [])],
            int(data["in_steps"]),
            int(data["out_steps"]),
            str(data.get("system", "")),
            dict(data.get("attrs", {})),
        )
