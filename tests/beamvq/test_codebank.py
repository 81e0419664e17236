"""CodeBank state and Quantizer interface: clustering, retrieval, EMA, straight-through."""

from __future__ import annotations

import math

import pytest
import torch

from physforecast.beamvq.codebank import CodeBank, CodeBankConfig, Quantizer

CENTRES = torch.tensor([[6.0, 0.0, 0.0], [-6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, -6.0]])


def _cluster_batch(n: int, gen: torch.Generator) -> torch.Tensor:
    label = torch.randint(len(CENTRES), (n,), generator=gen)
    return CENTRES[label] + 0.1 * torch.randn(n, 3, generator=gen)


def _match_error(codes: torch.Tensor) -> float:
    """Largest distance from a true centre to its closest code."""
    return float(torch.cdist(CENTRES, codes).min(dim=1).values.max())


def test_recovers_centres_of_separated_clusters_from_kmeans_init():
    gen = torch.Generator().manual_seed(1)
    quant = Quantizer(3, CodeBankConfig(num_codes=4, dim=3, decay=0.9, kmeans_init=True))
    quant.train()
    for _ in range(150):
        quant(_cluster_batch(256, gen))
    assert _match_error(quant.bank.embed) < 0.05
    assert quant.bank.usage()["perplexity"] > 3.9  # all four codes used evenly


def test_ema_from_random_init_covers_every_cluster():
    # with random init and as many codes as clusters, EMA can settle with one code between
    # two clusters (a local minimum k-means init avoids); with 2 codes per cluster it covers
    # every centre and no code is left between clusters
    gen = torch.Generator().manual_seed(1)
    quant = Quantizer(3, CodeBankConfig(num_codes=8, dim=3, decay=0.9, kmeans_init=False))
    quant.train()
    for _ in range(150):
        quant(_cluster_batch(256, gen))
    codes = quant.bank.embed
    assert _match_error(codes) < 0.2
    assert float(torch.cdist(codes, CENTRES).min(dim=1).values.max()) < 0.2


def test_kmeans_init_alone_finds_centres():
    gen = torch.Generator().manual_seed(2)
    bank = CodeBank(CodeBankConfig(num_codes=4, dim=3, kmeans_init=True))
    assert not bool(bank.initted)
    torch.manual_seed(3)
    bank.kmeans_(_cluster_batch(512, gen), iters=20)
    assert bool(bank.initted)
    # k-means from random data points can merge two clusters; with 20 iterations and this
    # seed it does not, and the centres are the cluster means
    assert _match_error(bank.embed) < 0.05


def test_topk_order_matches_brute_force_and_chunking():
    torch.manual_seed(0)
    cfg = CodeBankConfig(num_codes=50, dim=6)
    bank = CodeBank(cfg)
    x = torch.randn(37, 6)
    dist, idx = bank.topk(x, k=5)
    ref = torch.cdist(x, bank.embed) ** 2
    ref_d, ref_i = ref.sort(dim=1)
    assert torch.equal(idx, ref_i[:, :5])
    torch.testing.assert_close(dist, ref_d[:, :5], rtol=1e-4, atol=1e-4)
    assert (dist[:, 1:] >= dist[:, :-1]).all()
    # memory-bounded chunks (3 rows per block) give the same answer
    small = CodeBank(CodeBankConfig(num_codes=50, dim=6, chunk_bytes=3 * 4 * 50))
    small.load_state_dict(bank.state_dict())
    assert small._chunk_rows() == 3
    d2, i2 = small.topk(x, k=5)
    assert torch.equal(i2, idx)
    torch.testing.assert_close(d2, dist)
    # half-precision input: distances still fp32
    d16, _ = bank.topk(x.half(), k=2)
    assert d16.dtype == torch.float32


def test_topk_rejects_bad_input():
    bank = CodeBank(CodeBankConfig(num_codes=8, dim=4))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        bank.topk(torch.randn(3, 5), 2)
    with pytest.raises(ValueError, match="k <= num_codes=8"):
        bank.topk(torch.randn(3, 4), 9)


def test_ema_update_uses_the_given_nearest_assignment():
    bank = CodeBank(CodeBankConfig(num_codes=3, dim=2, decay=0.0, eps=0.0))
    bank.embed.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    x = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [9.0, 0.0], [1.0, 9.0]])
    idx = bank.nearest(x)
    assert idx.tolist() == [0, 0, 1, 2]
    bank.ema_update_(x, idx)  # decay 0: codes become the means of their assigned vectors
    torch.testing.assert_close(bank.embed, torch.tensor([[0.0, 1.0], [9.0, 0.0], [1.0, 9.0]]))
    torch.testing.assert_close(bank.cluster_size, torch.tensor([2.0, 1.0, 1.0]))


def test_quantizer_updates_only_in_training_and_restarts_dead_codes():
    quant = Quantizer(2, CodeBankConfig(num_codes=3, dim=2, decay=0.5, dead_threshold=0.2))
    quant.bank.embed.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]]))
    quant.bank.embed_avg.copy_(quant.bank.embed)
    x = torch.tensor([[0.1, 0.0], [0.9, 1.0]]).repeat(8, 1)
    quant.eval()
    before = quant.bank.embed.clone()
    quant(x)
    assert torch.equal(quant.bank.embed, before)
    quant.train()
    for _ in range(3):  # code 2 is never used: its cluster size halves each step
        quant(x)
    restarted = quant.bank.embed[2]
    assert torch.cdist(restarted[None], x).min() < 1e-6  # replaced by a batch vector


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(4, 3)
    quant = Quantizer(3, CodeBankConfig(num_codes=16, dim=3, commitment=0.25))
    quant.eval()
    x = torch.randn(10, 4)
    z = encoder(x)
    out = quant(z)
    target = torch.randn_like(out.quantized)
    ((out.quantized - target) ** 2).sum().backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    # straight-through: d/dz of sum((q - t)^2) is 2 (q - t), exactly as if q were z
    z2 = z.detach().requires_grad_(True)
    out2 = quant(z2)
    ((out2.quantized - target) ** 2).sum().backward()
    torch.testing.assert_close(z2.grad, 2 * (out2.quantized.detach() - target))
    # the quantized values are the codes
    torch.testing.assert_close(out2.quantized.detach(), quant.bank.embed[out2.indices])


def test_commitment_loss_value_and_gradient():
    quant = Quantizer(2, CodeBankConfig(num_codes=1, dim=2, commitment=0.25, dead_threshold=0))
    quant.bank.embed.zero_()
    quant.eval()
    z = torch.tensor([[3.0, 4.0]], requires_grad=True)
    out = quant(z)
    torch.testing.assert_close(out.loss, torch.tensor(0.25 * 25.0 / 2))
    out.loss.backward()
    torch.testing.assert_close(z.grad, 0.25 * 2 * z.detach() / 2)


def test_projection_when_dims_differ_and_candidates_keep_layout():
    torch.manual_seed(0)
    quant = Quantizer(5, CodeBankConfig(num_codes=8, dim=3))
    quant.eval()
    z = torch.randn(2, 4, 6, 5)
    out = quant(z)
    assert out.quantized.shape == z.shape and out.indices.shape == (2, 4, 6)
    _, idx = quant.retrieve(z, 3)
    assert idx.shape == (2, 4, 6, 3)
    cands = quant.candidates(z, idx.movedim(-1, 0))
    assert cands.shape == (3, 2, 4, 6, 5)
    torch.testing.assert_close(cands[0], out.quantized)


def test_usage_statistics():
    bank = CodeBank(CodeBankConfig(num_codes=4, dim=2))
    uniform = bank.usage(torch.tensor([0, 1, 2, 3] * 5))
    assert math.isclose(uniform["perplexity"], 4.0, rel_tol=1e-5)
    assert uniform["used_fraction"] == 1.0
    single = bank.usage(torch.zeros(10, dtype=torch.long))
    assert math.isclose(single["perplexity"], 1.0, rel_tol=1e-5)
    assert single["used_fraction"] == 0.25
