"""TopKVQHead in both modes: layout, candidates, losses, gradients, code-bank updates."""

from __future__ import annotations

import pytest
import torch

import physforecast as pf
from physforecast.beamvq.head import TopKVQHead, head_loss


def _exact_codes(head: TopKVQHead, z_last: torch.Tensor) -> None:
    """Make the code bank hold exactly the vectors of ``z_last`` (..., D)."""
    vecs = z_last.reshape(-1, z_last.shape[-1]).detach()
    bank = head.quantizer.bank
    assert bank.num_codes == vecs.shape[0]
    bank.embed.copy_(vecs)
    bank.initted.fill_(True)


def test_latent_mode_keeps_axis_order(tiny_backbone):
    head = TopKVQHead(tiny_backbone, mode="latent", num_codes=16, code_dim=4)
    head.eval()
    x = torch.randn(1, 2, 1, 4, 4)
    head.materialize(x)
    z = tiny_backbone.encode(x).z  # (1, 4, 4, 4)
    _exact_codes(head, z.permute(0, 2, 3, 1))
    out = head(x, k=3)
    assert out.candidates.shape == (1, 3, 2, 1, 4, 4)
    # the nearest code is z itself at every position: top-1 == backbone forecast
    torch.testing.assert_close(out.candidates[:, 0], tiny_backbone(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.base, tiny_backbone(x))
    # candidate 1 uses the second-nearest code at every position, decoded in place
    _, idx = head.quantizer.retrieve(z.permute(0, 2, 3, 1), 3)
    assert torch.equal(out.indices[1], idx[..., 1])
    q1 = head.quantizer.bank.embed[idx[..., 1]].permute(0, 3, 1, 2)
    expect = tiny_backbone.decode(tiny_backbone.encode(x)._replace(z=q1))
    torch.testing.assert_close(out.candidates[:, 1], expect, rtol=1e-5, atol=1e-5)


def test_output_mode_keeps_axis_order(tiny_backbone):
    head = TopKVQHead(
        tiny_backbone,
        mode="output",
        num_codes=2 * 2 * 2,
        code_dim=3,
        hidden=4,
        downsample=4,
        residual=False,
        prop_hidden=8,
    )
    head.eval()
    x = torch.randn(1, 2, 1, 8, 8)
    y0 = tiny_backbone(x)
    feat = head.encoder(y0.reshape(2, 1, 8, 8))  # (T, D, 2, 2)
    _exact_codes(head, feat.permute(0, 2, 3, 1))
    out = head(x, k=2)
    # without quantization error the head is propagate + decode of the encoder features
    manual = head.decoder(head.propagator(feat.reshape(1, 6, 2, 2)).reshape(2, 3, 2, 2))
    torch.testing.assert_close(
        out.candidates[0, 0], manual.reshape(2, 1, 8, 8), rtol=1e-5, atol=1e-5
    )
    assert not torch.allclose(out.candidates[0, 1], out.candidates[0, 0])


def test_residual_head_starts_at_the_backbone_forecast(tiny_backbone):
    head = TopKVQHead(tiny_backbone, mode="output", num_codes=8, code_dim=4, hidden=4, downsample=2)
    x = torch.randn(2, 2, 1, 8, 8)
    out = head(x, k=4)
    for k in range(4):
        torch.testing.assert_close(out.candidates[:, k], tiny_backbone(x))


@pytest.mark.parametrize("mode", ["output", "latent"])
def test_loss_includes_commitment_and_gradient_reaches_backbone_encoder(tiny_backbone, mode):
    head = TopKVQHead(
        tiny_backbone, mode=mode, num_codes=8, code_dim=4, hidden=4, downsample=2, residual=False
    )
    head.train()
    x, y = torch.randn(2, 2, 1, 8, 8), torch.randn(2, 2, 1, 8, 8)
    out = head(x, k=3)
    loss, logs = head_loss(out, y)
    parts = torch.nn.functional.mse_loss(out.candidates[:, 0], y) + out.vq_loss
    parts = parts + torch.nn.functional.mse_loss(
        out.candidates, y[:, None].expand_as(out.candidates)
    )
    torch.testing.assert_close(loss, parts)
    assert out.vq_loss > 0 and logs["vq_loss"] > 0
    loss.backward()
    grad = tiny_backbone.enc.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_code_bank_updates_in_training_only(tiny_backbone):
    head = TopKVQHead(tiny_backbone, mode="output", num_codes=8, code_dim=4, hidden=4, downsample=2)
    x = torch.randn(2, 2, 1, 8, 8)
    head.train()
    head(x, k=2)  # k-means init + one EMA step
    head.eval()
    before = head.quantizer.bank.embed.clone()
    head(x, k=4)
    assert torch.equal(before, head.quantizer.bank.embed)
    head.train()
    head(torch.randn(2, 2, 1, 8, 8), k=2)
    assert not torch.equal(before, head.quantizer.bank.embed)


def test_sampled_candidates_are_diverse_and_seeded(tiny_backbone):
    head = TopKVQHead(tiny_backbone, mode="latent", num_codes=32, code_dim=4)
    head.eval()
    x = torch.randn(1, 2, 1, 8, 8)
    head.materialize(x)
    a = head(x, k=4, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = head(x, k=4, temperature=1.0, generator=torch.Generator().manual_seed(5))
    c = head(x, k=4, temperature=1.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.candidates, b.candidates)
    assert not torch.equal(a.candidates, c.candidates)
    nearest = head(x, k=1)
    torch.testing.assert_close(a.candidates[:, 0], nearest.candidates[:, 0])
    # sampled codes come from the pool of nearest codes, not beyond it
    _, pool = head.quantizer.retrieve(tiny_backbone.encode(x).z.permute(0, 2, 3, 1), 8)
    assert (a.indices[1:, ..., None] == pool.unsqueeze(0)).any(-1).all()


def test_head_works_on_fno_in_both_modes():
    bb = pf.create_backbone("fno", in_steps=2, out_steps=3, in_channels=1, modes=4, hidden=8)
    x = torch.randn(2, 2, 1, 16, 16)
    for mode in ("output", "latent"):
        head = TopKVQHead(bb, mode=mode, num_codes=16, code_dim=8, hidden=8, prop_hidden=16)
        out = head(x, k=3)
        assert out.candidates.shape == (2, 3, 3, 1, 16, 16)
        assert torch.isfinite(out.candidates).all()


def test_head_errors(tiny_backbone):
    with pytest.raises(ValueError, match="mode must be 'output' or 'latent'"):
        TopKVQHead(tiny_backbone, mode="both")
    head = TopKVQHead(tiny_backbone, mode="output", num_codes=8, code_dim=4, downsample=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        head(torch.randn(1, 2, 1, 6, 6))
    out = head(torch.randn(1, 2, 1, 8, 8), k=2)
    with pytest.raises(ValueError, match=r"target must be \(B, T, C, H, W\)"):
        head_loss(out, torch.randn(1, 3, 1, 8, 8))


def test_rank_subset_decodes_those_candidates_and_estimates_the_loss_without_bias(tiny_backbone):
    head = TopKVQHead(
        tiny_backbone,
        mode="output",
        num_codes=16,
        code_dim=4,
        hidden=4,
        downsample=2,
        residual=False,
    )
    head.eval()
    x, y = torch.randn(2, 2, 1, 8, 8), torch.randn(2, 2, 1, 8, 8)
    full = head(x, k=4)
    _, full_logs = head_loss(full, y)
    estimates = []
    for r in (1, 2, 3):
        part = head(x, k=4, ranks=(0, r))
        assert part.candidates.shape[1] == 2 and part.ranks == (0, r) and part.k == 4
        torch.testing.assert_close(part.candidates[:, 1], full.candidates[:, r])
        estimates.append(head_loss(part, y)[1]["cand_mse"])
    # averaged over the sampled rank, the estimate is the mean over all K candidates
    assert sum(estimates) / 3 == pytest.approx(full_logs["cand_mse"], rel=1e-5)
    with pytest.raises(ValueError, match="ranks must start with 0"):
        head(x, k=4, ranks=(1, 2))
    with pytest.raises(ValueError, match="below k=4"):
        head(x, k=4, ranks=(0, 4))


def test_min_reduction_trains_only_the_closest_candidate(tiny_backbone):
    from physforecast.beamvq.head import HeadOutput

    cands = torch.zeros(2, 3, 1, 1, 4, 4, requires_grad=True)
    with torch.no_grad():
        cands[0, 1] += 1.0  # sample 0: candidate 1 has error 1, the others 2
        cands[0, 0] += 4.0
        cands[0, 2] += 4.0
        cands[1] += torch.tensor([0.5, 1.5, 1.0]).reshape(3, 1, 1, 1, 1)  # sample 1: candidate 1
    y = torch.full((2, 1, 1, 4, 4), 2.0)
    out = HeadOutput(cands, cands[:, 0].detach(), torch.zeros(3, 2), torch.zeros(()), {})
    loss, logs = head_loss(out, y, reduction="min")
    # the mean over windows of the closest candidate's MSE: (1 + 0.25) / 2
    assert logs["cand_mse"] == pytest.approx((1.0 + 0.25) / 2)
    loss.backward()
    grad = cands.grad.flatten(2).abs().sum(-1)
    assert grad[0, 2] == 0 and grad[0, 1] > 0  # only the winner (and top-1) get gradient
    assert grad[1, 2] == 0 and grad[1, 1] > 0
    with pytest.raises(ValueError, match="reduction"):
        head_loss(out, y, reduction="sum")
