"""The DiT denoisers: shapes and input checks, conditioning and condition dropout, the
Hunyuan-DiT stability pieces (QK-norm bound, normalized long skips, float32 norms), and a
small DiT learning a conditional 2-D distribution."""

from __future__ import annotations

import math

import pytest
import torch
from generative_helpers import TOY_CHOL

from physforecast.generative import DiTDenoiser, MMDiTDenoiser
from physforecast.generative.dit import Attention, DiTBlock
from physforecast.generative.embeddings import FP32LayerNorm


def _randomize_zero_init(model: torch.nn.Module) -> None:
    """Give the zero-initialized modulation and output layers random weights, so that the
    conditioning reaches the output of an untrained model."""
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if torch.count_nonzero(p) == 0 and "null" not in name:
            with torch.no_grad():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("cls", [DiTDenoiser, MMDiTDenoiser])
def test_shapes_and_conditioning(cls):
    model = cls(
        3, out_channels=2, cond_dim=2, history_channels=4, hidden=32, heads=2, patch=(1, 2, 2)
    )
    _randomize_zero_init(model)
    x = torch.randn(2, 3, 5, 8, 12)
    p, h = torch.randn(2, 2), torch.randn(2, 4, 8, 12)
    t = torch.tensor([10.0, 700.0])
    out = model(x, t, params=p, history=h)
    assert out.shape == (2, 2, 5, 8, 12)
    # one frame in, one frame out; a 5-D history is flattened over time
    assert model(x[:, :, 0], t, params=p, history=h).shape == (2, 2, 8, 12)
    torch.testing.assert_close(model(x, t, params=p, history=h.reshape(2, 2, 2, 8, 12)), out)
    # every condition changes the output
    assert not torch.allclose(model(x, t, params=p + 1, history=h), out)
    assert not torch.allclose(model(x, t, params=p, history=h + 1), out)
    assert not torch.allclose(model(x, t + 100, params=p, history=h), out)
    # condition dropout is the unconditional branch, per sample
    drop = torch.tensor([True, False])
    dropped = model(x, t, params=p, history=h, drop_params=drop)
    unconditional = model(x, t, params=None, history=h)
    torch.testing.assert_close(dropped[0], unconditional[0], rtol=0, atol=0)
    torch.testing.assert_close(dropped[1], out[1], rtol=0, atol=0)


@pytest.mark.parametrize("cls", [DiTDenoiser, MMDiTDenoiser])
def test_bad_inputs_are_refused(cls):
    model = cls(2, cond_dim=1, hidden=16, heads=2, patch=(1, 2, 2))
    x = torch.randn(1, 2, 1, 8, 8)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 2, 1, 7, 8), 1.0)
    with pytest.raises(ValueError, match="channels|x must be"):
        model(torch.randn(1, 3, 1, 8, 8), 1.0)
    with pytest.raises(ValueError, match="params"):
        model(x, 1.0, params=torch.randn(1, 3))
    with pytest.raises(ValueError, match="history"):
        model(x, 1.0, history=torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="guidance"):
        cls(2, hidden=16, heads=2, guidance_embed=True)(x, 1.0)
    with pytest.raises(ValueError, match="rope"):
        cls(2, hidden=16, heads=2, rope="2d")


def test_fresh_denoiser_outputs_zeros_and_blocks_are_identities():
    model = DiTDenoiser(2, hidden=16, depth=4, heads=2)
    x = torch.randn(2, 2, 1, 8, 8)
    assert torch.count_nonzero(model(x, 5.0)) == 0
    block = DiTBlock(16, 2)
    tokens = torch.randn(2, 10, 16)
    torch.testing.assert_close(block(tokens, torch.randn(2, 16)), tokens, rtol=0, atol=0)


def test_long_skips_follow_hunyuan_dit():
    """Skips pushed after blocks 0 .. depth/2 - 2 and popped (LIFO) by blocks depth/2 + 1 ..."""
    depth = 8
    model = DiTDenoiser(2, hidden=16, depth=depth, heads=2)
    has_skip = [block.skip_linear is not None for block in model.blocks]
    assert has_skip == [layer > depth // 2 for layer in range(depth)]
    assert sum(has_skip) == depth // 2 - 1
    with pytest.raises(ValueError, match="even depth"):
        DiTDenoiser(2, hidden=16, depth=5, heads=2)
    assert all(
        b.skip_linear is None
        for b in DiTDenoiser(2, hidden=16, depth=5, heads=2, long_skip=False).blocks
    )


def test_qk_norm_bounds_the_logits():
    """q/k projection weights x100: with QK-norm every logit stays under the LayerNorm
    bound; without it, with zero biases, the logits grow by exactly 1e4."""
    dim, heads = 32, 4
    d = dim // heads
    x = torch.randn(2, 12, dim, generator=torch.Generator().manual_seed(0))
    normed = Attention(dim, heads, qk_norm=True)
    plain = Attention(dim, heads, qk_norm=False)
    for attn in (normed, plain):
        torch.nn.init.zeros_(attn.qkv.bias)
    before = plain.logits(x)
    with torch.no_grad():
        for attn in (normed, plain):
            attn.qkv.weight[: 2 * dim] *= 100.0
        normed.q_norm.weight.uniform_(0.5, 1.5)
        normed.k_norm.bias.uniform_(-0.2, 0.2)
    gq, bq = normed.q_norm.weight.detach().abs().max(), normed.q_norm.bias.detach().norm()
    gk, bk = normed.k_norm.weight.detach().abs().max(), normed.k_norm.bias.detach().norm()
    bound = (math.sqrt(d) * gq + bq) * (math.sqrt(d) * gk + bk) / math.sqrt(d)
    assert float(normed.logits(x).detach().abs().max()) <= float(bound) + 1e-4
    torch.testing.assert_close(plain.logits(x), 1e4 * before, rtol=1e-4, atol=1e-3)


def test_normalized_long_skip_tames_huge_skips():
    block = DiTBlock(16, 2, skip=True)
    x = torch.randn(2, 10, 16)
    c = torch.randn(2, 16)
    calm = block(x, c, skip=torch.randn(2, 10, 16))
    wild = block(x, c, skip=1e4 * torch.randn(2, 10, 16))
    assert torch.isfinite(wild).all()
    rms = lambda t: float(t.pow(2).mean().sqrt())  # noqa: E731
    assert rms(wild) < 10 * rms(calm)


def test_fp32_layernorm_keeps_dtype_and_computes_in_float32():
    norm = FP32LayerNorm(8)
    x = (1e3 * torch.randn(4, 8)).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    expected = torch.nn.functional.layer_norm(x.float(), (8,)).to(torch.bfloat16)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_mmdit_rotates_field_and_history_tokens_but_not_the_parameter_token():
    model = MMDiTDenoiser(2, cond_dim=1, history_channels=2, hidden=32, heads=2, patch=(1, 2, 2))
    field = model._angles((1, 4, 4), torch.device("cpu"))
    assert field.shape == (16, model.head_dim // 2)
    assert torch.count_nonzero(field[0]) == 0  # position (0, 0, 0)
    assert torch.count_nonzero(field[5]) > 0


def test_small_dit_learns_a_conditional_2d_distribution(toy_teacher):
    model, flow = toy_teacher
    g = torch.Generator().manual_seed(1)
    cov = TOY_CHOL @ TOY_CHOL.T
    for value in (-0.5, 0.5):
        params = torch.full((4000, 1), value)
        noise = torch.randn(4000, 2, 1, 1, generator=g)
        samples = flow.sample(model, noise, steps=16, solver="heun", params=params).reshape(-1, 2)
        torch.testing.assert_close(
            samples.mean(dim=0), torch.tensor([2 * value, -value]), atol=0.15, rtol=0
        )
        torch.testing.assert_close(torch.cov(samples.T), cov, atol=0.1, rtol=0)
