"""Rotary embeddings: relative-position invariance of the logits, HunyuanVideo's split,
Hunyuan-DiT's centred positions (and parity with diffusers' 2-D RoPE on a square grid)."""

from __future__ import annotations

import pytest
import torch

from physforecast.generative import RoPE3D, apply_rope, centered_positions, rope_angles
from physforecast.generative.rope import default_split, grid_positions


def test_hunyuanvideo_split():
    assert default_split(128) == (16, 56, 56)
    assert sum(default_split(32)) == 32 and all(d % 2 == 0 for d in default_split(32))
    with pytest.raises(ValueError):
        RoPE3D(64, split=(16, 16, 16))


def test_shifting_every_position_leaves_the_logits_unchanged():
    rope = RoPE3D(32, theta=256.0)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 3 * 4 * 5, 32, generator=g)
    k = torch.randn(2, 4, 3 * 4 * 5, 32, generator=g)
    positions = grid_positions((3, 4, 5))

    def logits(pos):
        return apply_rope(q, rope.angles(pos)) @ apply_rope(k, rope.angles(pos)).transpose(-1, -2)

    base = logits(positions)
    shifted = logits(positions + torch.tensor([2.0, 3.0, 1.0]))
    assert float((shifted - base).abs().max()) < 1e-5
    # a non-uniform change of positions does change them, and the rotation keeps norms
    assert float((logits(positions * 2) - base).abs().max()) > 1e-1
    torch.testing.assert_close(apply_rope(q, rope.angles(positions)).norm(dim=-1), q.norm(dim=-1))


def test_rotate_and_partial_rotation():
    rope = RoPE3D(8, split=(2, 2, 4))
    q = torch.randn(1, 1, 6, 8)
    rq, rk = rope.rotate(q, q, (1, 2, 3))
    torch.testing.assert_close(rq, rk)
    # angles for fewer channels leave the rest untouched
    angles = rope_angles(grid_positions((6,)), (4,))
    out = apply_rope(q, angles)
    torch.testing.assert_close(out[..., 4:], q[..., 4:], rtol=0, atol=0)
    assert not torch.allclose(out[..., :4], q[..., :4])


def test_centered_positions_span_the_same_range_at_every_resolution():
    low = centered_positions((32, 64), base=32)
    high = centered_positions((64, 128), base=32)
    for axis in range(2):
        assert abs(float(low[:, axis].min() - high[:, axis].min())) < 1e-6
        # the last point of n points is at start + (stop - start) (n - 1) / n
        span_low = low[:, axis].max() - low[:, axis].min()
        span_high = high[:, axis].max() - high[:, axis].min()
        n_low, n_high = (32, 64)[axis], (64, 128)[axis]
        torch.testing.assert_close(
            span_low * n_low / (n_low - 1), span_high * n_high / (n_high - 1)
        )
    # the wide grid is centred vertically in the base square: rows 8 .. 24 of 32
    assert float(low[:, 0].min()) == 8.0 and float(low[:, 1].min()) == 0.0
    extend_low = centered_positions((32, 64), base=32, mode="extend")
    extend_high = centered_positions((64, 128), base=32, mode="extend")
    assert float(extend_high.max() - extend_low.max()) > 30


def test_square_grid_matches_diffusers_2d_rope():
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    head_dim, size = 16, 6
    cos, sin = embeddings.get_2d_rotary_pos_embed(head_dim, ((0, 0), (size, size)), (size, size))
    positions = centered_positions((size, size), base=size)
    # diffusers gives the first half of the head to the column, the second to the row,
    # each frequency repeated for its channel pair, theta 10000
    angles = rope_angles(positions[:, [1, 0]], (head_dim // 2, head_dim // 2), theta=10000.0)
    torch.testing.assert_close(
        torch.cos(angles).repeat_interleave(2, dim=-1), cos, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        torch.sin(angles).repeat_interleave(2, dim=-1), sin, atol=1e-5, rtol=0
    )
