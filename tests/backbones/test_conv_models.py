"""Model-specific behaviour of the CNN backbones: ConvLSTM, SimVP, U-Net, ResNet, CNO."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import physforecast as pf
from physforecast.backbones.cno import FilteredLReLU, fourier_resample, resample
from physforecast.backbones.convlstm import ConvLSTMCell


def build(name, **kw):
    args = dict(in_steps=3, out_steps=2, in_channels=2)
    args.update(kw)
    return pf.create_backbone(name, **args)


def wave(h, w, ky, kx, offset=0.0, fn=torch.cos):
    """fn(2 pi (ky y + kx x)) at y = (i + offset) / h, x = (j + offset) / w; (1, 1, h, w)."""
    y = (torch.arange(h) + offset) / h
    x = (torch.arange(w) + offset) / w
    return fn(2 * math.pi * (ky * y[:, None] + kx * x[None, :]))[None, None]


def band_limited(h, w, kmax):
    """A random periodic field with Fourier modes |k_y|, |k_x| <= kmax only; (2, 3, h, w)."""
    gen = torch.Generator().manual_seed(1)
    f = torch.zeros(2, 3, h, w)
    for ky in range(-kmax, kmax + 1):
        for kx in range(kmax + 1):
            a, b = torch.randn(2, 2, 3, 1, 1, generator=gen)
            f += a * wave(h, w, ky, kx) + b * wave(h, w, ky, kx, fn=torch.sin)
    return f


# -- divisibility and option errors ------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kw", "factor"),
    [
        ("unet", {}, 4),
        ("unet", {"levels": 3}, 8),
        ("cno", {}, 4),
        ("simvp", {"N_S": 4}, 4),
        ("convlstm", {"patch": 4}, 4),
    ],
)
def test_size_constraints_name_the_allowed_sizes(name, kw, factor):
    net = build(name, **kw)
    with pytest.raises(ValueError, match=f"divisible by {factor}.*multiples of {factor}"):
        net(torch.randn(1, 3, 2, 18, 2 * factor))
    assert net(torch.randn(1, 3, 2, factor, 3 * factor)).shape == (1, 2, 2, factor, 3 * factor)


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("simvp", {"translator": "vit"}, "translator must be one of"),
        ("simvp", {"translator": "incepu", "N_T": 1}, "N_T >= 2"),
        ("cno", {"resample": "nearest"}, "resample must be one of"),
        ("resnet", {"dilations": (1, 2)}, "one entry per block"),
        ("resnet", {"padding_mode": "periodic"}, "padding_mode must be one of"),
    ],
)
def test_bad_options_are_clear_errors(name, kw, match):
    with pytest.raises(ValueError, match=match):
        build(name, **kw)


# -- ConvLSTM ------------------------------------------------------------------------------
def test_convlstm_cell_matches_hand_computed_gates_for_1x1_kernel():
    cell = ConvLSTMCell(2, 3, kernel_size=1)
    x, h, c = torch.randn(2, 2, 4, 5), torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    h1, c1 = cell(x, (h, c))
    w = cell.gates.weight[:, :, 0, 0]  # (4*hidden, in + hidden)
    pre = torch.einsum("gk,bkyx->bgyx", w, torch.cat([x, h], 1))
    i, f, g, o = (pre + cell.gates.bias[:, None, None]).chunk(4, dim=1)
    c_ref = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    torch.testing.assert_close(c1, c_ref)
    torch.testing.assert_close(h1, torch.sigmoid(o) * torch.tanh(c_ref))
    assert torch.all(cell.gates.bias[3:6] == 1.0)  # forget gate starts open


def test_convlstm_latent_is_the_encoder_state_and_patching_works():
    net = build("convlstm", hidden=8, n_layers=3, patch=2).eval()
    x = torch.randn(2, 3, 2, 16, 24)
    z = net.encode(x).z
    assert z.shape == (2, 2 * 3 * 8, 8, 12)
    h_last = z[:, 2 * 2 * 8 : 2 * 2 * 8 + 8]  # top layer's h = o * tanh(c) lies in (-1, 1)
    assert h_last.abs().max() < 1
    assert net(x).shape == (2, 2, 2, 16, 24)
    # the forecast depends on the latent only: another state gives another forecast
    other = net.decode(net.encode(torch.randn_like(x)))
    assert not torch.allclose(net(x), other)


# -- SimVP -----------------------------------------------------------------------------------
@pytest.mark.parametrize("translator", ["incepu", "gsta"])
def test_simvp_translators_shapes_and_skip(translator):
    net = build(
        "simvp",
        in_steps=3,
        out_steps=5,
        in_channels=2,
        out_channels=1,
        translator=translator,
        hid_S=8,
        hid_T=16,
        N_T=3,
        cond_dim=2,
    ).eval()
    x, cond = torch.randn(2, 3, 2, 16, 24), torch.randn(2, 2)
    latent = net.encode(x, cond)
    assert latent.z.shape == (2, 3 * 8, 8, 12)  # translator output in the encoder's space
    (skip,) = latent.skips
    assert skip.shape == (2, 3 * 8, 16, 24)  # first encoder layer, full resolution
    y = net.decode(latent, cond)
    assert y.shape == (2, 5, 1, 16, 24)
    torch.testing.assert_close(y, net(x, cond))
    # the decoder uses the skip
    assert not torch.allclose(y, net.decode(latent._replace(skips=(torch.zeros_like(skip),)), cond))


def test_simvp_deeper_encoder_downsamples_more():
    net = build("simvp", N_S=4, hid_S=8, hid_T=16).eval()
    assert net.encode(torch.randn(1, 3, 2, 16, 24)).z.shape == (1, 24, 4, 6)


# -- U-Net -----------------------------------------------------------------------------------
def test_unet_latent_is_bottleneck_with_skips():
    net = build("unet", hidden=8, levels=2).eval()
    latent = net.encode(torch.randn(2, 3, 2, 16, 24))
    assert latent.z.shape == (2, 32, 4, 6)
    assert [s.shape for s in latent.skips] == [(2, 8, 16, 24), (2, 16, 8, 12)]


def test_unet_with_timm_encoder_builds_and_runs():
    net = build("unet", encoder="resnet18", encoder_depth=2, cond_dim=2)
    assert net.timm_encoder is not None
    x, cond = torch.randn(2, 3, 2, 16, 24), torch.randn(2, 2)
    latent = net.encode(x, cond)
    assert latent.z.shape == (2, 64, 4, 6)  # resnet18 stage 1: 64 channels, stride 4
    assert [s.shape[-2:] for s in latent.skips] == [(16, 24), (8, 12)]
    y = net.decode(latent, cond)
    assert y.shape == (2, 2, 2, 16, 24)
    y.square().mean().backward()
    assert net.timm_encoder.conv1.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 3, 2, 18, 24))


# -- ResNet ----------------------------------------------------------------------------------
def test_resnet_circular_padding_is_exactly_translation_equivariant():
    net = build("resnet", padding_mode="circular", dilations=(1, 2, 1, 3)).eval()
    x = torch.randn(1, 3, 2, 16, 24)
    shifted = net(torch.roll(x, shifts=(3, -5), dims=(-2, -1)))
    torch.testing.assert_close(shifted, torch.roll(net(x), shifts=(3, -5), dims=(-2, -1)))


# -- CNO anti-aliasing -----------------------------------------------------------------------
def test_fourier_resample_preserves_band_limited_fields_exactly():
    modes = [(0, 0), (1, 3), (-3, 2), (2, 0)]
    x = sum(wave(16, 24, ky, kx) for ky, kx in modes)
    fine = sum(wave(32, 48, ky, kx) for ky, kx in modes)
    torch.testing.assert_close(fourier_resample(x, (8, 12)), x[..., ::2, ::2], atol=1e-5, rtol=0)
    torch.testing.assert_close(fourier_resample(x, (32, 48)), fine, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(16, 24), (15, 23)])
def test_fourier_upsampling_keeps_every_sample_and_downsampling_undoes_it(size):
    x = torch.randn(2, 3, *size)  # white noise, Nyquist modes included
    fine = fourier_resample(x, (2 * size[0], 2 * size[1]))
    torch.testing.assert_close(fine[..., ::2, ::2], x, atol=1e-5, rtol=0)
    torch.testing.assert_close(fourier_resample(fine, size), x, atol=1e-5, rtol=0)


def test_bicubic_downsampling_preserves_well_resolved_fields():
    for k in (1, 2, 3):  # coarse Nyquist is 8
        coarse = resample(wave(32, 48, k, k), (16, 24), "bicubic")
        # coarse cell i is centred at fine coordinate 2i + 1/2
        err = (coarse - wave(16, 24, k, k, offset=0.25))[..., 2:-2, 2:-2]
        assert err.abs().max() < 0.03, k


@pytest.mark.parametrize(("mode", "tol"), [("fft", 1e-5), ("bicubic", 0.25)])
def test_downsampling_suppresses_modes_above_the_coarse_nyquist(mode, tol):
    high = wave(16, 16, 0, 6)  # k = 6 > 4, the Nyquist mode of the 8x8 grid
    assert high[..., ::2, ::2].abs().max() > 0.99  # naive subsampling aliases it to k = -2
    assert resample(high, (8, 8), mode).abs().max() < tol


def test_filtered_activation_is_close_to_the_ideal_band_limited_activation():
    x = band_limited(16, 16, kmax=3)
    # ideal: the activation of the continuous field, then an ideal low-pass to the grid band
    exact = F.leaky_relu(fourier_resample(x, (512, 512)), 0.2)
    ideal = fourier_resample(exact, (16, 16))
    act = FilteredLReLU("fft", negative_slope=0.2)
    naive_err = (F.leaky_relu(x, 0.2) - ideal).norm()
    assert (act(x) - ideal).norm() < 0.2 * naive_err
    # filtered down onto 8x8: no energy above the coarse band, close to the ideal there
    down = act(x, (8, 8))
    spec = torch.fft.fft2(fourier_resample(down, (16, 16)), norm="forward")
    k = torch.fft.fftfreq(16, 1 / 16).abs()
    above = (k[:, None] > 4) | (k[None, :] > 4)
    assert spec[..., above].abs().max() < 1e-5
    ideal_coarse = fourier_resample(exact, (8, 8))
    assert (down - ideal_coarse).norm() < 0.1 * ideal_coarse.norm()


def test_cno_fft_circular_is_equivariant_to_shifts_by_whole_coarse_cells():
    net = build("cno", resample="fft", padding_mode="circular", hidden=8).eval()
    x = torch.randn(1, 3, 2, 16, 24)
    shift = dict(shifts=(4, -8), dims=(-2, -1))  # multiples of 2**levels
    torch.testing.assert_close(
        net(torch.roll(x, **shift)), torch.roll(net(x), **shift), atol=1e-4, rtol=1e-4
    )
