"""The causal 3-D VAE: shapes, causality, periodic equivariance, posterior, loss, tiling,
and a measured ns2d round trip."""

from __future__ import annotations

import math

import pytest
import torch

from physforecast.generative.vae import (
    CausalConv3d,
    CausalVAE3D,
    DiagonalGaussian,
    padding_for_boundary,
    spectral_loss,
    tiled_decode,
    tiled_encode,
    vae_loss,
)


def _vae(padding_mode="circular", s=4, t=4, z=4, channels=(8, 16, 16)):
    return CausalVAE3D(
        1,
        latent_channels=z,
        spatial_compression=s,
        temporal_compression=t,
        block_channels=channels,
        padding_mode=padding_mode,
    )


@pytest.mark.parametrize(
    ("s", "t", "z", "channels", "n", "size"),
    [(4, 4, 4, (8, 16, 16), 2, 16), (8, 4, 16, (8, 8, 8, 8), 1, 16), (2, 1, 3, (8, 8), 3, 8)],
)
def test_shapes(s, t, z, channels, n, size):
    vae = _vae(s=s, t=t, z=z, channels=channels)
    x = torch.randn(2, 1, 1 + t * n, size, size)
    posterior = vae.encode(x)
    assert posterior.mean.shape == (2, z, 1 + n, size // s, size // s) == vae.latent_shape(x.shape)
    assert vae.decode(posterior.mode()).shape == x.shape


def test_bad_clips_are_refused():
    vae = _vae()
    with pytest.raises(ValueError, match="1 \\+ 4"):
        vae.encode(torch.randn(1, 1, 8, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        vae.encode(torch.randn(1, 1, 5, 18, 16))
    with pytest.raises(ValueError, match="halvings"):
        CausalVAE3D(1, spatial_compression=8, block_channels=(8, 8))
    with pytest.raises(ValueError, match="power of two"):
        CausalVAE3D(1, spatial_compression=3)


@pytest.mark.parametrize("k", [0, 1])
def test_future_frames_leave_past_latents_bit_identical(k):
    vae = _vae()
    x = torch.randn(1, 1, 13, 16, 16)
    changed = x.clone()
    changed[:, :, 4 * k + 1 :] = torch.randn_like(changed[:, :, 4 * k + 1 :])
    before, after = vae.encode(x), vae.encode(changed)
    assert torch.equal(before.mean[:, :, : k + 1], after.mean[:, :, : k + 1])
    assert torch.equal(before.logvar[:, :, : k + 1], after.logvar[:, :, : k + 1])
    assert not torch.equal(before.mean[:, :, k + 1], after.mean[:, :, k + 1])
    # the decoder is causal too: latent frames after k leave output frames 0 .. 4k alone
    z = before.mode()
    z2 = z.clone()
    z2[:, :, k + 1 :] += 1.0
    assert torch.equal(vae.decode(z)[:, :, : 4 * k + 1], vae.decode(z2)[:, :, : 4 * k + 1])


def test_causal_conv_sees_only_the_past():
    conv = CausalConv3d(1, 1, kernel_size=(3, 3, 3))
    x = torch.randn(1, 1, 6, 8, 8)
    x2 = x.clone()
    x2[:, :, 4:] += 1
    assert torch.equal(conv(x)[:, :, :4], conv(x2)[:, :, :4])
    assert conv(x).shape == x.shape


def test_circular_padding_is_equivariant_to_periodic_shifts():
    x = torch.randn(1, 1, 5, 16, 16)
    shifted = torch.roll(x, shifts=(4, 8), dims=(3, 4))
    periodic = _vae("circular")
    latents = periodic.encode(x).mean
    torch.testing.assert_close(
        periodic.encode(shifted).mean,
        torch.roll(latents, shifts=(1, 2), dims=(3, 4)),
        atol=1e-5,
        rtol=0,
    )
    recon = periodic.decode(latents)
    torch.testing.assert_close(
        periodic.decode(torch.roll(latents, shifts=(1, 2), dims=(3, 4))),
        torch.roll(recon, shifts=(4, 8), dims=(3, 4)),
        atol=1e-5,
        rtol=0,
    )
    bounded = _vae("replicate")
    gap = bounded.encode(shifted).mean - torch.roll(
        bounded.encode(x).mean, shifts=(1, 2), dims=(3, 4)
    )
    assert float(gap.detach().abs().max()) > 1e-3
    assert padding_for_boundary("periodic") == "circular"
    assert padding_for_boundary(None) == "replicate"


def test_diagonal_gaussian_kl_and_sampling():
    mean, logvar = torch.zeros(2, 3, 1, 2, 2), torch.zeros(2, 3, 1, 2, 2)
    torch.testing.assert_close(DiagonalGaussian(mean, logvar).kl(), torch.zeros(2))
    # KL(N(1, e^2) || N(0, 1)) = 0.5 (1 + e^2 - 1 - 2) per element
    post = DiagonalGaussian(mean + 1, logvar + 2)
    expected = 0.5 * (1 + math.exp(2) - 1 - 2) * 12
    torch.testing.assert_close(post.kl(), torch.full((2,), expected))
    draws = DiagonalGaussian(torch.full((20_000,), 3.0), torch.full((20_000,), math.log(4.0)))
    s = draws.sample(torch.Generator().manual_seed(0))
    assert abs(float(s.mean()) - 3) < 0.05 and abs(float(s.std()) - 2) < 0.05


def test_loss_terms():
    x = torch.randn(2, 1, 5, 16, 16)
    post = DiagonalGaussian(torch.zeros(2, 4, 2, 4, 4), torch.zeros(2, 4, 2, 4, 4))
    loss, logs = vae_loss(x, x, post)
    assert float(loss) == 0.0 and logs == {"l1": 0.0, "kl": 0.0, "spectral": 0.0}
    smooth = torch.nn.functional.avg_pool3d(x, (1, 3, 3), stride=1, padding=(0, 1, 1))
    assert float(spectral_loss(smooth, x)) > 0.5
    # the spectral term ignores phases: a shifted field has the same spectrum
    assert float(spectral_loss(torch.roll(x, 3, dims=-1), x)) < 1e-5
    recon = x.clone().requires_grad_(True)
    vae_loss(recon + 0.1, x, post)[0].backward()
    assert recon.grad is not None and torch.isfinite(recon.grad).all()


class _LocalVAE(CausalVAE3D):
    """A VAE whose encoder and decoder are local (pooling, frame picking), so tiling with
    correct blending weights reproduces the untiled result exactly."""

    def encode(self, x):
        frames = x[:, :, :: self.temporal_compression]
        pooled = torch.nn.functional.avg_pool3d(
            frames, (1, self.spatial_compression, self.spatial_compression)
        )
        z = pooled.repeat(1, self.latent_channels, 1, 1, 1)
        return DiagonalGaussian(z, -z)

    def decode(self, z):
        up = (
            z[:, :1]
            .repeat_interleave(self.spatial_compression, 3)
            .repeat_interleave(self.spatial_compression, 4)
        )
        first, rest = up[:, :, :1], up[:, :, 1:].repeat_interleave(self.temporal_compression, 2)
        return torch.cat([first, rest], dim=2)


def test_tiling_blends_to_the_untiled_result():
    vae = _LocalVAE(
        1,
        latent_channels=2,
        spatial_compression=4,
        temporal_compression=4,
        block_channels=(8, 8, 8),
    )
    x = torch.randn(1, 1, 17, 40, 24)
    full = vae.encode(x)
    tiled = tiled_encode(vae, x, tile=16, overlap=8, tile_frames=9, frame_overlap=1)
    torch.testing.assert_close(tiled.mean, full.mean)
    torch.testing.assert_close(tiled.logvar, full.logvar)
    torch.testing.assert_close(
        tiled_decode(vae, full.mean, tile=4, overlap=2), vae.decode(full.mean)
    )
    # a real VAE: one tile covering everything is the plain encoder
    real = _vae()
    x = torch.randn(1, 1, 5, 16, 16)
    torch.testing.assert_close(tiled_encode(real, x, tile=16).mean, real.encode(x).mean)
    with pytest.raises(ValueError, match="tile_frames"):
        tiled_encode(real, x, tile_frames=6)


@pytest.mark.slow
def test_vae_round_trips_ns2d_vorticity():
    """Train a small periodic VAE (4x space, 4x time) briefly on 32x32 ns2d vorticity and
    measure the relative L2 error of held-out reconstructions (report: the docs page)."""
    from physforecast.registry import DATASETS

    ds = DATASETS.create("ns2d", n_trajectories=6, size=32, n_steps=9, progress=False)
    w = torch.as_tensor(ds["vorticity"].values, dtype=torch.float32)  # (traj, time, y, x)
    w = (w / w.std()).unsqueeze(1)  # (traj, 1, 9, 32, 32)
    train, test = w[:5], w[5:]
    torch.manual_seed(0)
    vae = CausalVAE3D(
        1,
        latent_channels=8,
        spatial_compression=4,
        temporal_compression=4,
        block_channels=(16, 32, 32),
        padding_mode="circular",
    )
    rel = lambda r, x: float((r - x).norm() / x.norm())  # noqa: E731
    with torch.no_grad():
        untrained = rel(vae(test, sample=False)[0], test)
    optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
    for _ in range(60):
        recon, posterior = vae(train, generator=torch.Generator().manual_seed(0))
        loss, _ = vae_loss(recon, train, posterior)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        error = rel(vae(test, sample=False)[0], test)
    print(
        f"ns2d 32x32, 4x4x4 compression, 60 steps: rel-L2 {error:.3f} (untrained {untrained:.3f})"
    )
    assert error < 0.5 and error < 0.6 * untrained
