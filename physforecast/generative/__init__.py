"""Generative building blocks for physical fields: denoisers, noise processes, samplers,
guidance, rotary embeddings and a causal 3-D VAE.

- :mod:`.dit`: :class:`DiTDenoiser` (Hunyuan-DiT blocks) and :class:`MMDiTDenoiser`
  (HunyuanVideo's dual -> single stream), one call signature (the denoiser protocol);
- :mod:`.flow`: :class:`FlowMatching` (rectified flow, shifted sigmas, diffusers' flow
  scheduler);
- :mod:`.diffusion`: :class:`DDPM` (DDPM / DDIM through diffusers' schedulers);
- :mod:`.guidance`: classifier-free guidance, condition dropout, guidance distillation;
- :mod:`.rope`: 3-D RoPE and Hunyuan-DiT's centred 2-D positions;
- :mod:`.embeddings`: noise-level, parameter and guidance embeddings, float32 LayerNorm;
- :mod:`.vae`: the causal 3-D VAE (:class:`CausalVAE3D`), its posterior, loss and tiling.
"""

from .diffusion import DDPM
from .dit import DiTBlock, DiTDenoiser, DualStreamBlock, MMDiTDenoiser, SingleStreamBlock
from .flow import FlowMatching, flow_sigmas, shift_sigmas
from .guidance import GuidanceDistiller, cfg_output, condition_dropout
from .rope import RoPE3D, apply_rope, centered_positions, rope_angles
from .vae import CausalConv3d, CausalVAE3D, DiagonalGaussian, tiled_decode, tiled_encode, vae_loss

__all__ = [
    "CausalConv3d",
    "CausalVAE3D",
    "DDPM",
    "DiagonalGaussian",
    "DiTBlock",
    "DiTDenoiser",
    "DualStreamBlock",
    "FlowMatching",
    "GuidanceDistiller",
    "MMDiTDenoiser",
    "RoPE3D",
    "SingleStreamBlock",
    "apply_rope",
    "centered_positions",
    "cfg_output",
    "condition_dropout",
    "flow_sigmas",
    "rope_angles",
    "shift_sigmas",
    "tiled_decode",
    "tiled_encode",
    "vae_loss",
]
