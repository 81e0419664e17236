"""DLCP: the drop policies (pure) and the comm hook on three gloo processes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from physforecast.training.comm_hooks import COMM_HOOKS
from physforecast.training.distributed import launch_local
from physforecast.training.dlcp import DLCPState, PriorityDrop, RandomDrop, dlcp_hook, layer_index

# -- the policies ----------------------------------------------------------------------


def _random_bucket(seed: int, k: int = 200, n_layers: int = 8):
    g = torch.Generator().manual_seed(seed)
    norms = torch.rand(k, generator=g).pow(3)
    layers = torch.sort(torch.randint(0, n_layers, (k,), generator=g)).values
    sizes = torch.full((k,), 64, dtype=torch.long)
    sizes[-1] = 17
    return norms, layers, sizes, n_layers


@pytest.mark.parametrize("bound", [0.01, 0.05, 0.1, 0.3])
@pytest.mark.parametrize("seed", range(4))
def test_priority_policy_never_drops_first_layer_or_top_magnitude_chunks(bound, seed):
    norms, layers, sizes, n_layers = _random_bucket(seed)
    budget = int(bound * sizes.sum())
    policy = PriorityDrop(layer_weight=0.5)
    kept = policy(norms, layers, sizes, n_layers, budget)
    dropped = ~kept
    assert int(sizes[dropped].sum()) <= budget
    assert kept[layers == 0].all()  # the first layer is protected
    cand = layers >= 1
    m_c, k = int(cand.sum()), int(dropped.sum())
    rank = torch.empty(m_c)
    rank[torch.argsort(norms[cand], stable=True)] = torch.arange(m_c, dtype=torch.float)
    magnitude = torch.zeros(len(norms))
    magnitude[cand] = rank / (m_c - 1)
    safe = cand & (magnitude >= policy.layer_weight + k / m_c)
    assert safe.any() and kept[safe].all()  # the top-magnitude chunks survive
    # greedy and maximal: the next chunk in priority order would not have fit
    assert k > 0 and int(sizes[dropped].sum()) + 64 > budget


def test_priority_policy_prefers_back_layers_and_small_chunks():
    norms = torch.tensor([1.0, 1.0, 0.1, 0.1, 5.0, 0.2])
    layers = torch.tensor([0, 1, 1, 2, 2, 2])
    sizes = torch.ones(6, dtype=torch.long)
    kept = PriorityDrop(layer_weight=0.5)(norms, layers, sizes, 3, budget=2)
    # the small chunks of the middle and the last layer go first; the first layer and
    # the large chunk of the last layer stay
    assert kept.tolist() == [True, True, False, False, True, True]
    pure = PriorityDrop(layer_weight=0.0, protected_layers=0)(norms, layers, sizes, 3, budget=3)
    assert (~pure).nonzero().flatten().tolist() == [2, 3, 5]  # exactly the three smallest


def test_random_policy_fills_the_budget_and_is_reproducible():
    norms, layers, sizes, n_layers = _random_bucket(0)
    a = RandomDrop(seed=3)
    first = a(norms, layers, sizes, n_layers, 3000)
    assert int(sizes[~first].sum()) <= 3000 and int((~first).sum()) >= 46
    state = a.state_dict()
    second = a(norms, layers, sizes, n_layers, 3000)
    b = RandomDrop(seed=3)
    b.load_state_dict(state)
    assert torch.equal(b(norms, layers, sizes, n_layers, 3000), second)
    assert not torch.equal(first, second)
    assert (~first)[layers == 0].any()  # random drops hit the first layer too


def test_layer_index_groups_weight_and_bias_in_registration_order():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(4, 4))
    index = layer_index(model)
    names = sorted(index.values(), key=lambda v: v[0])
    assert names == [("0.bias", 0), ("0.weight", 0), ("2.bias", 1), ("2.weight", 1)]
    with pytest.raises(ValueError, match="loss_bound"):
        DLCPState(model, loss_bound=1.0)


# -- the hook on three processes ---------------------------------------------------------


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(6, 40)
        self.mid = nn.Linear(40, 40)
        self.last = nn.Linear(40, 3)

    def forward(self, x):
        return self.last(torch.tanh(self.mid(torch.tanh(self.first(x)))))


def _batch(rank: int, step: int):
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(8, 6, generator=g) * (1 + rank)  # ranks see different gradient scales
    return x, torch.randn(8, 3, generator=g)


def _flat_grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _dlcp_worker(rank: int, world: int) -> dict:
    out: dict = {}
    # 1. bound 0 is the allreduce hook, bit for bit, through several optimizer steps
    torch.manual_seed(0)
    ref, dut = _Net(), _Net()
    dut.load_state_dict(ref.state_dict())
    ddp_ref = nn.parallel.DistributedDataParallel(ref, bucket_cap_mb=0.004)
    ddp_dut = nn.parallel.DistributedDataParallel(dut, bucket_cap_mb=0.004)
    ddp_ref.register_comm_hook(None, allreduce_hook)
    state0 = DLCPState(dut, loss_bound=0.0, chunk_size=32)
    ddp_dut.register_comm_hook(state0, dlcp_hook)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt_dut = torch.optim.SGD(dut.parameters(), lr=0.1)
    equal = []
    for step in range(3):
        x, y = _batch(rank, step)
        for ddp, opt in ((ddp_ref, opt_ref), (ddp_dut, opt_dut)):
            opt.zero_grad()
            nn.functional.mse_loss(ddp(x), y).backward()
        equal.append(torch.equal(_flat_grads(ref), _flat_grads(dut)))
        opt_ref.step(), opt_dut.step()
    out["bound0_equal"] = equal
    out["bound0_buckets"] = len(state0.last_buckets)
    out["bound0_sent"] = state0.sent_fraction()

    # 2. bound 0.1: per chunk, the mean over the ranks that sent it
    torch.manual_seed(0)
    model, local = _Net(), _Net()
    local.load_state_dict(model.state_dict())
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.004)
    hook = COMM_HOOKS.create("dlcp", module=model, loss_bound=0.1, chunk_size=32)
    hook.register(ddp)
    for step in range(2):
        x, y = _batch(rank, 10 + step)
        ddp.zero_grad()
        nn.functional.mse_loss(ddp(x), y).backward()
        local.zero_grad()
        nn.functional.mse_loss(local(x), y).backward()
    names = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    sent = {}
    for record in hook.state.last_buckets:
        mask = record.element_mask()
        for name, offset, numel in record.params:
            sent[name] = mask[offset : offset + numel]
    sent_flat = torch.cat([sent[n].float() for n in names])
    local_flat = _flat_grads(local)
    masks = [torch.zeros_like(sent_flat) for _ in range(world)]
    grads = [torch.zeros_like(local_flat) for _ in range(world)]
    dist.all_gather(masks, sent_flat)
    dist.all_gather(grads, local_flat)
    masks_t, grads_t = torch.stack(masks), torch.stack(grads)
    count = masks_t.sum(0)
    expect = torch.where(count > 0, (masks_t * grads_t).sum(0) / count.clamp(min=1), 0.0)
    out["mean_of_senders_err"] = float((_flat_grads(model) - expect).abs().max())
    out["some_chunks_partial"] = bool(((count > 0) & (count < world)).any())
    first = torch.cat([sent["first.weight"], sent["first.bias"]])
    out["first_layer_all_sent"] = bool(first.all())
    out["last_step"] = dict(hook.counters())
    out["sent_fraction"] = hook.state.sent_fraction()
    out["buckets"] = len(hook.state.last_buckets)
    out["chunks"] = sum(record.kept.numel() for record in hook.state.last_buckets)

    # 3. a congestion signal below the bound sets the drop rate; above it, the bound does
    torch.manual_seed(0)
    model = _Net()
    ddp = nn.parallel.DistributedDataParallel(model)
    state = DLCPState(model, loss_bound=0.1, chunk_size=16, congestion=lambda step: 0.03 * step)
    ddp.register_comm_hook(state, dlcp_hook)
    rates = []
    for step in range(6):
        x, y = _batch(rank, 20 + step)
        ddp.zero_grad()
        nn.functional.mse_loss(ddp(x), y).backward()
        rates.append(state.last_step["drop_rate"])
    out["rates"] = rates
    out["congested_sent"] = state.last_step["bytes_sent"] / state.last_step["bytes_total"]
    return out


@pytest.fixture(scope="module")
def dlcp_results():
    return launch_local(_dlcp_worker, 3, timeout=180, start_method="fork")


def test_bound_zero_equals_the_allreduce_hook_bit_for_bit(dlcp_results):
    for r in dlcp_results:
        assert r["bound0_equal"] == [True, True, True]
        assert r["bound0_buckets"] >= 2  # several buckets were exercised
        assert r["bound0_sent"] == 1.0


def test_result_is_the_mean_over_the_ranks_that_sent_each_chunk(dlcp_results):
    for r in dlcp_results:
        assert r["some_chunks_partial"]  # ranks dropped different chunks
        assert r["mean_of_senders_err"] < 1e-6


def test_first_layer_is_never_dropped_and_bytes_fall_by_about_the_bound(dlcp_results):
    for r in dlcp_results:
        assert r["first_layer_all_sent"]
        last = r["last_step"]
        assert last["bytes_sent"] + last["bytes_dropped"] == last["bytes_total"]
        assert last["mask_bytes"] == r["chunks"]  # one byte of count per chunk
        assert last["collectives"] == 2 * r["buckets"]
        # each bucket drops at most the bound, and less only by under one chunk (32 floats)
        slack = r["buckets"] * 32 * 4 / last["bytes_total"]
        assert 0.9 <= r["sent_fraction"] <= 0.9 + slack


def test_congestion_signal_sets_the_rate_up_to_the_bound(dlcp_results):
    for r in dlcp_results:
        assert r["rates"] == pytest.approx([0.0, 0.03, 0.06, 0.09, 0.1, 0.1])
        assert r["congested_sent"] == pytest.approx(0.9, abs=0.02)
