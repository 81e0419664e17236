"""Students, their parallel execution and boosting distillation.

The distillation tests use a synthetic task: a deep (8-layer) residual CNN teacher with
fixed random weights on smooth periodic random fields, distilled into three two-layer
students, as in the small-scale claims of the Academus notes (research/aux.md section 2).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import physforecast as pf
from physforecast.backbones.base import Backbone, Latent
from physforecast.config import TrainConfig
from physforecast.inference.distill import distill, distillation_loss, stackable, teacher_targets
from physforecast.inference.ensemble import StudentEnsemble
from physforecast.inference.parallel import StudentGroup, select_members
from physforecast.inference.students import Student, StudentSpec
from physforecast.layers import stack_time, unstack_time


def _randomize(module: torch.nn.Module, scale: float = 0.3) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, scale)


class SmoothFields(Dataset):
    """Smooth periodic random fields (T_in=2, C=1, 16 x 16) with a fixed mask."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(n, 2, 1, 16, 16, generator=g)
        kernel = torch.ones(1, 1, 5, 5) / 25
        flat = noise.reshape(-1, 1, 16, 16)
        smooth = F.conv2d(F.pad(flat, (2, 2, 2, 2), mode="circular"), kernel)
        self.x = (smooth / smooth.std()).reshape(n, 2, 1, 16, 16)
        self.mask = torch.ones(1, 16, 16, dtype=torch.bool)
        self.mask[0, :2, :2] = False  # a small "land" corner

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "mask": self.mask}


class DeepCNN(Backbone):
    """An 8-layer residual CNN behind the backbone contract; its latent is (B, 8, H, W)."""

    def __init__(self, hidden: int = 8, depth: int = 8) -> None:
        super().__init__(in_steps=2, out_steps=1, in_channels=1)

        def conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, k, padding=k // 2, padding_mode="circular")

        self.stem = conv(2, hidden)
        self.blocks = nn.ModuleList(conv(hidden, hidden) for _ in range(depth))
        self.head = conv(hidden, 1, 1)

    def encode(self, x, cond=None):
        h = self.stem(stack_time(x))
        for block in self.blocks:
            h = h + torch.tanh(block(h))
        return Latent(h)

    def decode(self, latent, cond=None):
        return unstack_time(self.head(latent.z), 1)


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    torch.manual_seed(1)
    return DeepCNN().eval()


@pytest.fixture(scope="module", params=[False, True], ids=["output", "stacked"])
def distilled(request, teacher):
    torch.manual_seed(0)
    train = SmoothFields(48, seed=0)
    result = distill(
        teacher,
        train,
        n_students=3,
        width=8,
        kernel_size=3,
        padding_mode="circular",
        stack=request.param,
        train=TrainConfig(epochs=6, lr=1e-2, device="cpu", warmup_frac=0.0),
        batch_size=16,
    )
    return result, train


# ------------------------------------------------------------------ the student


def test_new_student_outputs_zero_and_has_depth_layers():
    spec = StudentSpec(in_channels=4, out_channels=3, width=6, depth=2, kernel_size=5, cond_dim=2)
    s = Student(spec)
    assert len(s.layers) == 2 and s.layers[0].in_channels == 4 + 2
    assert s.layers[0].kernel_size == (5, 5)
    y = s(torch.randn(2, 4, 8, 8), torch.randn(2, 2))
    assert y.shape == (2, 3, 8, 8) and y.abs().max() == 0
    with pytest.raises(ValueError, match="conditioned on 2 parameters"):
        s(torch.randn(2, 4, 8, 8))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 0}, "depth must be >= 1"),
        ({"kernel_size": 4}, "positive odd"),
        ({"padding_mode": "wrap"}, "padding_mode must be one of"),
    ],
)
def test_student_spec_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StudentSpec(in_channels=2, out_channels=2, **kwargs)


def test_student_spec_round_trips_and_rejects_unknown_keys():
    spec = StudentSpec(in_channels=2, out_channels=5, width=7, cond_dim=1, padding_mode="circular")
    assert StudentSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown student spec key"):
        StudentSpec.from_dict({**spec.to_dict(), "heads": 2})


# ------------------------------------------------------------------ parallel execution


@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
def test_vmap_equals_loop(padding_mode):
    spec = StudentSpec(
        in_channels=4, out_channels=3, width=8, cond_dim=2, padding_mode=padding_mode
    )
    students = [Student(spec) for _ in range(4)]
    for s in students:
        _randomize(s)
    group = StudentGroup(students)
    x, cond = torch.randn(5, 4, 12, 12), torch.randn(5, 2)
    with torch.no_grad():
        for kw in ({}, {"n_active": 1}, {"n_active": 3}, {"members": [3, 1]}):
            fast = group(x, cond, vectorize=True, **kw)
            slow = group(x, cond, vectorize=False, **kw)
            scale = slow.abs().max()
            assert torch.allclose(fast, slow, rtol=0, atol=1e-6 * float(scale)), kw
        # the loop is the plain sum of the students
        ref = sum(s(x, cond) for s in students[:3])
        assert torch.allclose(group(x, cond, n_active=3, vectorize=False), ref, atol=1e-5)


def test_vectorized_path_is_one_batched_call():
    spec = StudentSpec(in_channels=2, out_channels=2, width=4)
    group = StudentGroup([Student(spec) for _ in range(3)])
    calls = []
    hook = group.students[0].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        group(torch.randn(1, 2, 8, 8))
    assert calls == []  # the students' own modules are not called: vmap runs the stacked weights
    with torch.no_grad():
        group(torch.randn(1, 2, 8, 8), vectorize=False)
    assert calls == [1]
    hook.remove()


def test_gradients_reach_the_students_through_the_loop():
    spec = StudentSpec(in_channels=2, out_channels=2, width=4)
    group = StudentGroup([Student(spec) for _ in range(2)])
    group(torch.randn(3, 2, 8, 8)).square().sum().backward()
    assert group.students[1].layers[-1].weight.grad is not None


def test_group_refuses_students_of_another_structure_and_bad_selections():
    group = StudentGroup([Student(StudentSpec(in_channels=2, out_channels=2, width=4))])
    with pytest.raises(ValueError, match="same structure"):
        group.append(Student(StudentSpec(in_channels=2, out_channels=2, width=5)))
    with pytest.raises(ValueError, match="n_active must be in 0..3"):
        select_members(3, n_active=4)
    with pytest.raises(ValueError, match="out of range"):
        select_members(3, members=[0, 3])
    with pytest.raises(ValueError, match="not both"):
        select_members(3, n_active=1, members=[0])


def test_ensemble_contract_and_n_active_knob():
    spec = StudentSpec(in_channels=2 * 3, out_channels=4 * 3, width=4)
    model = StudentEnsemble(spec, in_steps=2, out_steps=4, in_channels=3, n_students=3)
    for s in model.students:
        _randomize(s)
    x = torch.randn(2, 2, 3, 8, 8)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 4, 3, 8, 8)
        model.n_active = 1
        assert torch.allclose(model(x), model(x, members=[0]))
        assert not torch.allclose(model(x), y)
        assert model(x, n_active=0).abs().max() == 0
        before = model(x, n_active=3)
        model.add_student()  # zero-initialised: changes nothing
        assert torch.equal(model(x, n_active=4), before)
    with pytest.raises(ValueError, match="n_active must be in 0..4"):
        model.n_active = 5
    with pytest.raises(ValueError, match="expects x of shape"):
        model(torch.randn(2, 3, 3, 8, 8))
    with pytest.raises(ValueError, match="T_in \\* C"):
        StudentEnsemble(spec, in_steps=3, out_steps=4, in_channels=3)


# ------------------------------------------------------------------ distillation


def test_stackable_tells_which_backbones_expose_a_latent(teacher):
    x = torch.randn(1, 2, 1, 16, 16)
    assert stackable(teacher, x) == (True, "")
    resnet = pf.create_backbone(
        "resnet", in_steps=2, out_steps=1, in_channels=1, hidden=4, n_blocks=1
    )
    assert stackable(resnet, x) == (True, "")
    unet = pf.create_backbone("unet", in_steps=2, out_steps=1, in_channels=1, hidden=4, levels=1)
    ok, why = stackable(unet, x)
    assert not ok and "skip connection" in why
    with pytest.raises(ValueError, match="cannot stack"):
        distill(
            unet,
            SmoothFields(4, seed=3),
            n_students=1,
            stack=True,
            train=TrainConfig(epochs=1, device="cpu"),
        )


def test_prefix_training_loss_is_non_increasing_in_n_active(distilled, teacher):
    result, train = distilled
    targets = teacher_targets(teacher, train, stack=result.model.stacked)
    losses = [
        distillation_loss(result.model, targets, n_active=n, latent_weight=result.latent_weight)
        for n in range(result.model.n_students + 1)
    ]
    for before, after in zip(losses, losses[1:]):
        assert after <= before * (1 + 1e-6), losses
    assert losses[1] < 0.7 * losses[0]  # the first student learns most of the teacher
    # the recorded losses are the ones of the vectorized ensemble
    assert losses == pytest.approx(result.losses, rel=1e-5)
    # every student started where the ensemble before it stood (zero last layer)
    for k, record in enumerate(result.students):
        assert record["loss_before"] == pytest.approx(result.losses[k], rel=1e-5)


def test_dropping_the_last_student_costs_less_than_dropping_the_first(distilled, teacher):
    result, _ = distilled
    test = SmoothFields(32, seed=1)
    model, k = result.model, result.model.n_students
    with torch.no_grad():
        y = teacher(test.x)

        def mse(members):
            return float((model(test.x, members=members) - y).square().mean())

        all_but_last, all_but_first = mse(list(range(k - 1))), mse(list(range(1, k)))
    assert all_but_last < all_but_first


def test_students_learn_the_teacher_on_new_inputs(distilled, teacher):
    result, _ = distilled
    test = SmoothFields(32, seed=2)
    with torch.no_grad():
        y = teacher(test.x)
        err = [
            float((result.model(test.x, n_active=n) - y).square().mean() / y.var())
            for n in (1, result.model.n_students)
        ]
    assert err[1] < 0.35 and err[1] < 0.7 * err[0]  # unexplained variance of the teacher


def test_distillation_conditions_students_on_parameters():
    torch.manual_seed(0)
    net = pf.create_backbone(
        "resnet", in_steps=2, out_steps=1, in_channels=1, hidden=4, n_blocks=2, cond_dim=1
    )

    class WithParams(SmoothFields):
        def __getitem__(self, i):
            return {**super().__getitem__(i), "params": torch.tensor([float(i % 3) - 1.0])}

    data = WithParams(12, seed=4)
    result = distill(
        net, data, n_students=2, width=4, train=TrainConfig(epochs=1, device="cpu"), batch_size=6
    )
    assert result.model.cond_dim == 1 and result.model.spec.cond_dim == 1
    x = data.x[:2]
    with torch.no_grad():
        a = result.model(x, torch.tensor([[-1.0], [-1.0]]))
        b = result.model(x, torch.tensor([[1.0], [1.0]]))
    assert not torch.allclose(a, b)
