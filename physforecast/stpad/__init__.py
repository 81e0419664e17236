"""ST-PAD: physics-constrained VQ reconstruction, parameter-conditioned latent diffusion,
and BeamVQ's beam search in the diffusion stage (the registered method ``stpad``).

Modules: :mod:`.physics` (the constraints, shared with the metrics), :mod:`.upstream`
(encoder with a Fourier branch, code bank, temporal propagator, decoder),
:mod:`.diffusion` (the conditioned denoiser, DDPM/DDIM and flow matching),
:mod:`.search` (beam search over diffusion samples) and :mod:`.method` (the method).
Importing this package loads nothing heavy; import the submodules.
"""
