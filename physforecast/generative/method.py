"""The ``vae`` method: train a :class:`~physforecast.generative.vae.CausalVAE3D` on the
run's space-time clips and report its reconstruction error and spectra.

``physforecast train --method vae [--set vae.spatial_compression=4 ...]`` trains the VAE
on clips of every window's frames (inputs then targets, ``1 + t*n`` of them) with
:func:`~physforecast.generative.vae.vae_loss`; the spatial padding follows the dataset's
``boundary_conditions`` (circular for periodic domains). ``physforecast evaluate`` (and
the end of training) adds the method's report: relative L2 of the test clips'
reconstructions in physical units and the radially averaged power spectra of truth and
reconstruction (written to ``vae_evaluation.json``).

A VAE forecasts nothing; so that the run's scorecard still means something, the model's
``forward(x, cond)`` is *persistence through the autoencoder*: the reconstruction of the
last input frame, repeated over the horizon (a baseline whose error includes the VAE's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from physforecast.config import Config
from physforecast.data.spec import DataSpec
from physforecast.errors import ConfigError
from physforecast.methods import Method, RunContext
from physforecast.metrics.spectral import power_spectrum
from physforecast.registry import METHODS

from .vae import CausalVAE3D, padding_for_boundary, spectral_loss, vae_loss

__all__ = ["VAEConfig", "VAEMethod", "VAEModel", "clips_of", "reconstruction_report"]

#: The method's report on the test split, in the run directory.
EVALUATION = "vae_evaluation.json"


@dataclass
class VAEConfig:
    """Options of the ``vae`` method (``--set vae.<key>=...``)."""

    latent_channels: int = 8
    spatial_compression: int = 4
    temporal_compression: int = 4
    block_channels: list[int] = field(default_factory=lambda: [16, 32, 32])
    layers_per_block: int = 1
    kl_weight: float = 1e-6
    spectral_weight: float = 0.1
    #: "auto": circular for a periodic dataset, replicate otherwise.
    padding_mode: str = "auto"


def clips_of(
    frames: torch.Tensor, temporal_compression: int, *, last: bool = False
) -> torch.Tensor:
    """(B, T, C, H, W) frames -> (B, C, 1 + t*n, H, W), the longest clip that fits
    (the first frames, or the ``last`` ones)."""
    t = frames.shape[1]
    n = 1 + temporal_compression * ((t - 1) // temporal_compression)
    picked = frames[:, t - n :] if last else frames[:, :n]
    return picked.transpose(1, 2)


class VAEModel(nn.Module):
    """The run's model: the VAE and the shapes a forecaster needs.

    ``forward(x (B, T_in, C, H, W), cond=None) -> (B, T_out, C, H, W)``: the
    reconstruction of the last input frame, repeated (persistence through the VAE).
    """

    def __init__(self, vae: CausalVAE3D, *, in_steps: int, out_steps: int) -> None:
        super().__init__()
        self.vae = vae
        self.in_steps, self.out_steps = in_steps, out_steps
        self.in_channels = self.out_channels = vae.in_channels
        self.cond_dim = 0

    def reconstruct(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, C, 1 + t*n, H, W) -> its reconstruction through the posterior mean."""
        return self.vae.decode(self.vae.encode(clip).mode())

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        recon = self.reconstruct(clips_of(x, self.vae.temporal_compression, last=True))
        return recon[:, :, -1:].transpose(1, 2).expand(-1, self.out_steps, -1, -1, -1).contiguous()


def _loss_fn(section: VAEConfig):
    def loss_fn(
        vae: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        temporal = (vae.module if hasattr(vae, "module") else vae).temporal_compression
        clip = clips_of(torch.cat([batch["x"], batch["y"]], dim=1), temporal)
        recon, posterior = vae(clip)
        return vae_loss(
            recon,
            clip,
            posterior,
            kl_weight=section.kl_weight,
            spectral_weight=section.spectral_weight,
        )

    return loss_fn


@torch.no_grad()
def reconstruction_report(
    model: VAEModel,
    windows: Any,
    normalizer: Any,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Relative L2 and spectra of the VAE's reconstructions of ``windows``' clips.

    Returns
    -------
    dict
        ``rel_l2`` (mean over clips of ``||r - x|| / ||x||`` in physical units),
        ``spectral_error`` (mean absolute log-ratio of the power spectra), ``spectrum``
        (per wavenumber shell: ``k``, ``truth``, ``reconstruction`` power, averaged over
        clips, frames and channels), ``clips`` and the clip and latent shapes.
    """
    from torch.utils.data import DataLoader

    model.eval().to(device)
    r = model.vae.temporal_compression
    errors, spec_errors, truth_power, recon_power = [], [], [], []
    shape = latent = None
    for batch in DataLoader(windows, batch_size=batch_size, shuffle=False):
        frames = torch.cat([batch["x"], batch["y"]], dim=1).to(device)
        clip = clips_of(frames, r)
        recon = model.reconstruct(clip)
        shape, latent = list(clip.shape[1:]), list(model.vae.latent_shape(clip.shape)[1:])
        truth_phys = normalizer.denormalize(clip.transpose(1, 2).cpu())
        recon_phys = normalizer.denormalize(recon.transpose(1, 2).cpu())
        diff = (recon_phys - truth_phys).flatten(1).norm(dim=1)
        errors.append(diff / truth_phys.flatten(1).norm(dim=1).clamp_min(1e-12))
        spec_errors.append(float(spectral_loss(recon_phys, truth_phys)) * clip.shape[0])
        truth_power.append(power_spectrum(truth_phys).flatten(0, -2).mean(0) * clip.shape[0])
        recon_power.append(power_spectrum(recon_phys).flatten(0, -2).mean(0) * clip.shape[0])
    errors_t = torch.cat(errors)
    n = int(errors_t.numel())
    truth_s = (torch.stack(truth_power).sum(0) / n).tolist()
    recon_s = (torch.stack(recon_power).sum(0) / n).tolist()
    return {
        "clips": n,
        "clip_shape": shape,
        "latent_shape": latent,
        "rel_l2": float(errors_t.mean()),
        "spectral_error": sum(spec_errors) / n,
        "spectrum": [
            {"k": k, "truth": t, "reconstruction": p}
            for k, (t, p) in enumerate(zip(truth_s, recon_s))
        ],
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as Markdown: the errors, then the spectrum per shell."""
    lines = [
        f"VAE reconstruction (test split, {report['clips']} clips of {report['clip_shape']} "
        f"-> latents {report['latent_shape']}, physical units):",
        f"- relative L2: {report['rel_l2']:.4f}",
        f"- spectral error (mean |log P_rec / P_true|): {report['spectral_error']:.4f}",
        "",
        "| k | truth power | reconstruction power | ratio |",
        "|---|---|---|---|",
    ]
    for row in report["spectrum"]:
        ratio = row["reconstruction"] / row["truth"] if row["truth"] > 0 else float("nan")
        lines.append(
            f"| {row['k']} | {row['truth']:.3e} | {row['reconstruction']:.3e} | {ratio:.3f} |"
        )
    return "\n".join(lines)


@METHODS.register(
    "vae",
    config=VAEConfig,
    description="causal 3-D VAE of the fields (HunyuanVideo), reports reconstruction error and spectra",
)
class VAEMethod(Method):
    """Train the causal 3-D VAE on the run's clips (see the module docstring)."""

    name = "vae"

    def check(self, cfg: Config, data: DataSpec) -> None:
        v = cfg.vae
        frames = data.in_steps + data.out_steps
        if frames < 1 + v.temporal_compression and v.temporal_compression > 1:
            raise ConfigError(
                f"vae: windows of {frames} frames hold no clip of 1 + {v.temporal_compression} frames; "
                "lengthen data.in_steps/out_steps or lower vae.temporal_compression"
            )
        h, w = data.layout.shape
        if h % v.spatial_compression or w % v.spatial_compression:
            raise ConfigError(
                f"vae: the {h}x{w} grid is not divisible by vae.spatial_compression={v.spatial_compression}"
            )
        if v.padding_mode not in ("auto", "circular", "replicate", "reflect", "zeros"):
            raise ConfigError(
                f"vae.padding_mode must be auto, circular, replicate, reflect or zeros; got {v.padding_mode!r}"
            )
        try:
            self.build(self.model_spec(cfg, data), cfg, data)
        except ValueError as err:
            raise ConfigError(f"vae: {err}") from None

    def model_spec(self, cfg: Config, data: DataSpec) -> dict[str, Any]:
        v = cfg.vae
        padding = v.padding_mode
        if padding == "auto":
            padding = padding_for_boundary(data.attrs.get("boundary_conditions"))
        return {
            "name": "causal_vae3d",
            "in_channels": data.in_channels,
            "latent_channels": int(v.latent_channels),
            "spatial_compression": int(v.spatial_compression),
            "temporal_compression": int(v.temporal_compression),
            "block_channels": [int(c) for c in v.block_channels],
            "layers_per_block": int(v.layers_per_block),
            "padding_mode": padding,
            "in_steps": data.in_steps,
            "out_steps": data.out_steps,
        }

    def build(self, spec: dict[str, Any], cfg: Config, data: DataSpec) -> VAEModel:
        spec = dict(spec)
        spec.pop("name", None)
        in_steps, out_steps = spec.pop("in_steps"), spec.pop("out_steps")
        in_channels = spec.pop("in_channels")
        return VAEModel(CausalVAE3D(in_channels, **spec), in_steps=in_steps, out_steps=out_steps)

    def fit(self, ctx: RunContext) -> VAEModel:
        model = self.build(self.model_spec(ctx.cfg, ctx.data.spec), ctx.cfg, ctx.data.spec)
        ctx.trainer(model.vae, stage="vae", loss_fn=_loss_fn(ctx.cfg.vae)).fit(
            ctx.data.train, ctx.data.val
        )
        ctx.save_model(model)
        return model

    def evaluate(self, model: nn.Module, ctx: RunContext) -> str:
        report = reconstruction_report(
            model,
            ctx.data.test,
            ctx.data.normalizer,
            batch_size=ctx.cfg.data.batch_size,
            device=ctx.device,
        )
        ctx.run.write_json(EVALUATION, report)
        return format_report(report)
