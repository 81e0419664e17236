"""Model-specific behaviour of the ffno, uno, lsm, gnot and vit backbones."""

from __future__ import annotations

import math

import pytest
import torch

import physforecast as pf
from physforecast.backbones.ffno import FactorizedSpectralConv2d
from physforecast.backbones.gnot import (
    GeometricMoEMlp,
    HeterogeneousNormalizedAttention,
    normalized_linear_attention,
)
from physforecast.backbones.lsm import NeuralSpectralBlock
from physforecast.layers import stack_time, unstack_time

H, W = 16, 24


def build(name, **kw):
    args = dict(in_steps=3, out_steps=2, in_channels=2)
    args.update(kw)
    return pf.create_backbone(name, **args)


# -- F-FNO ------------------------------------------------------------------------------
def test_ffno_spectral_layer_equals_hand_computed_per_axis_filtering():
    """Two channels of known Fourier content through K(z) = IFFT_y(R_y FFT_y z) + IFFT_x(R_x FFT_x z).

    Channel 0 is f0(y) = cos(t) + cos(5t), t = 2 pi y / H, constant in x; channel 1 is
    f1(x) = sin(p), p = 2 pi 2 x / W, constant in y. With 3 modes kept per axis:
    - along y, f0 has mode 1 (coefficient H/2) and mode 5 (dropped); f1 is the DC mode (H f1);
    - along x, f0 is the DC mode (W f0); f1 has mode 2 (coefficient -i W / 2).
    A mode coefficient c filtered by w comes back as Re(w c e^{i angle}) / (its fft scale).
    """
    layer = FactorizedSpectralConv2d(2, (3, 3))
    y = torch.arange(H, dtype=torch.float64)[:, None] * torch.ones(1, W, dtype=torch.float64)
    x = torch.ones(H, 1, dtype=torch.float64) * torch.arange(W, dtype=torch.float64)[None]
    t, p = 2 * math.pi * y / H, 2 * math.pi * 2 * x / W
    f0, f1 = torch.cos(t) + torch.cos(5 * t), torch.sin(p)
    z = torch.stack([f0, f1])[None].float()

    wy = torch.view_as_complex(layer.weight_y.detach().double())  # (in, out, mode)
    wx = torch.view_as_complex(layer.weight_x.detach().double())
    expected = []
    for o in range(2):
        a, b = wy[0, o, 1].real, wy[0, o, 1].imag
        along_y = (a * torch.cos(t) - b * torch.sin(t)) + wy[1, o, 0].real * f1
        c, d = wx[1, o, 2].real, wx[1, o, 2].imag
        along_x = wx[0, o, 0].real * f0 + (c * torch.sin(p) + d * torch.cos(p))
        expected.append(along_y + along_x)
    torch.testing.assert_close(layer(z)[0].double(), torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_ffno_spectral_layer_is_discretization_invariant():
    """A band-limited field sampled at 16x24 and 32x48 gives the same values at shared points."""
    torch.manual_seed(1)
    layer = FactorizedSpectralConv2d(3, (4, 4))

    def field(h, w):
        yy = torch.arange(h)[:, None] / h * 2 * math.pi
        xx = torch.arange(w)[None] / w * 2 * math.pi
        g = torch.stack(
            [
                torch.cos(yy + 2 * xx),
                torch.sin(3 * yy) * torch.cos(xx),
                torch.cos(2 * yy) + torch.sin(3 * xx),
            ]
        )
        return g[None].float()

    coarse, fine = layer(field(H, W)), layer(field(2 * H, 2 * W))
    torch.testing.assert_close(fine[..., ::2, ::2], coarse, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["ffno", "uno"])
def test_operators_run_at_several_resolutions(name):
    net = build(name).eval()
    for size in [(H, W), (2 * H, 2 * W), (32, 16)]:
        x = torch.randn(1, 3, 2, *size)
        assert net(x).shape == (1, 2, 2, *size)


def test_ffno_latent_is_last_layer_features():
    net = build("ffno", hidden=12).eval()
    latent = net.encode(torch.randn(2, 3, 2, H, W))
    assert latent.z.shape == (2, 12, H, W)
    assert latent.skips == ()


# -- U-NO -------------------------------------------------------------------------------
def test_uno_adapter_equals_raw_neuralop_uno_with_shared_weights():
    from neuralop.models import UNO

    net = build("uno", hidden=8, modes=4).eval()
    raw = UNO(
        in_channels=6,
        out_channels=4,
        hidden_channels=8,
        lifting_channels=16,
        projection_channels=16,
        n_layers=4,
        uno_out_channels=[8, 16, 16, 8],
        uno_n_modes=[[4, 4]] * 4,
        uno_scalings=[[1.0, 1.0], [0.5, 0.5], [2.0, 2.0], [1.0, 1.0]],
        channel_mlp_skip="linear",
    ).eval()
    raw.load_state_dict(net.uno.state_dict())
    x = torch.randn(2, 3, 2, H, W)
    with torch.no_grad():
        torch.testing.assert_close(net(x), unstack_time(raw(stack_time(x)), 2))


def test_uno_latent_is_operator_output_before_projection():
    net = build("uno", hidden=8, channels=(8, 16, 16, 12)).eval()
    latent = net.encode(torch.randn(1, 3, 2, H, W))
    assert latent.z.shape == (1, 12, H, W)


def test_uno_builds_silently(capsys):
    build("uno", hidden=8)
    assert capsys.readouterr().out == ""


def test_uno_rejects_scalings_that_change_the_grid_and_indivisible_sizes():
    with pytest.raises(ValueError, match="multiply to 1"):
        build("uno", scalings=(1.0, 0.5, 1.0))
    with pytest.raises(ValueError, match="one entry per layer"):
        build("uno", channels=(8, 8))
    net = build("uno", scalings=(1.0, 0.5, 0.5, 2.0, 2.0, 1.0))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 3, 2, 18, 24))


# -- LSM --------------------------------------------------------------------------------
def test_lsm_latent_and_skips_follow_the_levels():
    net = build("lsm", hidden=8, levels=2, patches=2).eval()
    latent = net.encode(torch.randn(2, 3, 2, H, W))
    assert latent.z.shape == (2, 32, H // 4, W // 4)
    assert [s.shape for s in latent.skips] == [(2, 8, H, W), (2, 16, H // 2, W // 2)]


def test_lsm_size_error_names_the_allowed_sizes():
    net = build("lsm", levels=2, patches=2)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.randn(1, 3, 2, 12, 24))


def test_neural_spectral_block_is_local_to_its_patch():
    """Latent tokens are computed per patch: changing one patch leaves the others unchanged."""
    block = NeuralSpectralBlock(8, patches=(2, 3), tokens=3, basis=4, heads=2).eval()
    h = torch.randn(1, 8, 8, 12)
    g = h.clone()
    g[..., :4, :4] += torch.randn(1, 8, 4, 4)  # the top-left patch of a 2x3 patch grid
    out_h, out_g = block(h), block(g)
    changed = (out_h - out_g).abs().amax(dim=1)[0] > 1e-6
    assert changed[:4, :4].all()
    assert not changed[4:].any() and not changed[:, 4:].any()


# -- GNOT -------------------------------------------------------------------------------
def test_gnot_linear_attention_equals_explicit_quadratic_attention():
    torch.manual_seed(2)
    q = torch.randn(2, 3, 5, 4)
    k, v = torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)
    qn, kn = q.softmax(-1), k.softmax(-1)
    scores = torch.einsum("bhnd,bhsd->bhns", qn, kn)  # explicit N x S weights
    weights = scores / scores.sum(-1, keepdim=True)
    expected = torch.einsum("bhns,bhsd->bhnd", weights, v)
    torch.testing.assert_close(normalized_linear_attention(q, k, v), expected)


def test_gnot_heterogeneous_attention_averages_over_input_functions():
    attn = HeterogeneousNormalizedAttention(8, heads=2)
    x, c1, c2 = torch.randn(2, 6, 8), torch.randn(2, 5, 8), torch.randn(2, 9, 8)
    # proj is affine, so the mean of the two projected outputs equals proj of the mean
    both = attn(x, [c1, c2])
    torch.testing.assert_close(both, (attn(x, [c1]) + attn(x, [c2])) / 2)
    torch.testing.assert_close(attn(x), attn(x, [x]))


def test_gnot_geometric_gating_is_a_convex_mixture():
    moe = GeometricMoEMlp(8, experts=3)
    for expert in moe.experts[1:]:
        expert.load_state_dict(moe.experts[0].state_dict())
    x, pos = torch.randn(2, 10, 8), torch.rand(1, 10, 2)
    torch.testing.assert_close(moe(x, pos), moe.experts[0](x))
    weights = moe.gate(pos).softmax(-1)
    assert torch.allclose(weights.sum(-1), torch.ones(1, 10))


def test_gnot_latent_tokens_carry_the_grid_and_any_size_works():
    net = build("gnot", hidden=16).eval()
    latent = net.encode(torch.randn(2, 3, 2, H, W))
    assert latent.z.shape == (2, H * W, 16) and latent.skips == ((H, W),)
    assert net(torch.randn(1, 3, 2, 7, 5)).shape == (1, 2, 2, 7, 5)


# -- ViT --------------------------------------------------------------------------------
def test_vit_patch_divisibility_error_names_the_allowed_sizes():
    net = build("vit", patch=4)
    with pytest.raises(ValueError, match=r"divisible by 4.*16x20"):
        net(torch.randn(1, 3, 2, 16, 22))


def test_vit_latent_tokens_and_patch_grid():
    net = build("vit", patch=4, hidden=32).eval()
    latent = net.encode(torch.randn(2, 3, 2, H, W))
    assert latent.z.shape == (2, (H // 4) * (W // 4), 32) and latent.skips == ((4, 6),)


@pytest.mark.parametrize("name", ["vit", "gnot"])
def test_cond_also_modulates_the_decoder(name):
    """Tokens models condition the decoder too, so a quantized latent is decoded per regime."""
    net = build(name, cond_dim=2).eval()
    latent = net.encode(torch.randn(1, 3, 2, H, W))
    out1 = net.decode(latent, torch.zeros(1, 2))
    out2 = net.decode(latent, torch.ones(1, 2))
    assert not torch.allclose(out1, out2)
