"""The table behind ``physforecast list backbones``: name, parameters, FLOPs per sample, paper.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on one forward pass
of a single sample (batch 1), so they are what torch's counter sees: matrix products,
convolutions and attention (2 FLOPs per multiply-add). FFTs and elementwise operations are
not counted, so the spectral models' (fno, ffno, uno) FFT cost is left out.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .registry import BACKBONES, Registry

__all__ = ["backbone_table", "count_flops", "count_parameters", "format_backbone_table"]

_aten = torch.ops.aten


def _sdpa_flops(query_shape, key_shape, value_shape, *args: Any, **kwargs: Any) -> int:
    """Two batched matmuls: (q k^T) and (weights v); shapes are (B, heads, L, d)."""
    b, h, s_q, d_q = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * s_q * s_k * d_q + 2 * b * h * s_q * s_k * d_v


# torch's table has the CUDA attention kernels; the CPU one (used by timm's attention and
# F.scaled_dot_product_attention on CPU) would otherwise count as zero
_EXTRA_FORMULAS = {_aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters, trainable or not (complex parameters count once)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, x: torch.Tensor, cond: torch.Tensor | None = None) -> int:
    """FLOPs of ``model(x, cond)`` as counted by ``FlopCounterMode`` (forward only, no grad)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as fc:
            model(x) if cond is None else model(x, cond)
    finally:
        model.train(was_training)
    return int(fc.get_total_flops())


def backbone_table(
    in_steps: int = 10,
    out_steps: int = 10,
    channels: int = 1,
    size: tuple[int, int] = (64, 64),
    *,
    names: list[str] | None = None,
    registry: Registry = BACKBONES,
    flops: bool = True,
) -> list[dict[str, Any]]:
    """One row per registered backbone, built with its default options.

    With ``flops=False`` and the default shape, a backbone whose registry metadata
    (:meth:`~physforecast.registry.Registry.info`) gives its ``params`` is not built (nor
    its module imported): ``physforecast list backbones`` lists every model in a moment.

    Parameters
    ----------
    in_steps, out_steps, channels : int
        Frames in and out and variables per frame of the models measured.
    size : tuple of int
        Grid ``(H, W)`` of the sample whose forward FLOPs are counted.
    names : list of str, optional
        Backbones to list; all registered ones by default.
    registry : Registry
        Where to look the names up (tests pass their own).

    Returns
    -------
    list of dict
        Keys ``name``, ``params`` (int), ``flops`` (int FLOPs per sample, or ``None`` when
        the model rejects ``size``), ``paper``, ``source`` and ``note`` (the rejection
        message, else ``""``).
    """
    rows = []
    height, width = size
    default_shape = (in_steps, out_steps, channels) == (10, 10, 1)
    for name in names if names is not None else registry.names():
        info = registry.info(name)
        if not flops and default_shape and info.get("params") is not None:
            rows.append(
                {
                    "name": name,
                    "params": int(info["params"]),
                    "flops": None,
                    "paper": info.get("paper", ""),
                    "source": info.get("source", ""),
                    "note": "FLOPs: physforecast list backbones --flops",
                }
            )
            continue
        entry = registry.entry(name)
        model = registry.create(
            name,
            in_steps=in_steps,
            out_steps=out_steps,
            in_channels=channels,
            out_channels=channels,
        )
        x = torch.randn(1, in_steps, channels, height, width)
        try:
            counted, note = (count_flops(model, x), "") if flops else (None, "")
        except ValueError as err:  # a size constraint (patch or level divisibility)
            counted, note = None, str(err)
        rows.append(
            {
                "name": name,
                "params": count_parameters(model),
                "flops": counted,
                "paper": entry.meta.get("paper", ""),
                "source": entry.meta.get("source", ""),
                "note": note,
            }
        )
    return rows


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def format_backbone_table(rows: list[dict[str, Any]]) -> str:
    """Render :func:`backbone_table` rows as an aligned plain-text table (without the
    FLOPs column when no row counted them)."""
    with_flops = any(
        row["flops"] is not None or not row["note"].startswith("FLOPs:") for row in rows
    )
    header = (
        ("name", "params", "FLOPs/sample", "paper") if with_flops else ("name", "params", "paper")
    )
    body = [
        (
            row["name"],
            _human(row["params"]),
            *(["n/a" if row["flops"] is None else _human(row["flops"])] if with_flops else []),
            row["paper"],
        )
        for row in rows
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
