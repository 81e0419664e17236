"""Classifier-free guidance and guidance distillation."""

from __future__ import annotations

import copy

import pytest
import torch

from physforecast.generative import DiTDenoiser, GuidanceDistiller, cfg_output, condition_dropout


class CountingModel(torch.nn.Module):
    """Counts the calls of the wrapped denoiser."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def test_cfg_combines_conditional_and_unconditional():
    def model(x, t, params=None, drop_params=None):
        out = x + params.reshape(-1, 1)
        return torch.where(drop_params.reshape(-1, 1), x, out) if drop_params is not None else out

    x, p = torch.zeros(3, 1), torch.tensor([[1.0], [2.0], [3.0]])
    torch.testing.assert_close(cfg_output(model, x, torch.zeros(3), 4.0, params=p), 4 * p)
    torch.testing.assert_close(cfg_output(model, x, torch.zeros(3), 1.0, params=p), p)
    w = torch.tensor([0.0, 1.0, 2.0])
    torch.testing.assert_close(
        cfg_output(model, x, torch.zeros(3), w, params=p), w.reshape(-1, 1) * p
    )


def test_condition_dropout_rate():
    mask = condition_dropout(100_000, 0.2, generator=torch.Generator().manual_seed(0))
    assert abs(float(mask.float().mean()) - 0.2) < 5e-3
    assert condition_dropout(8, 0.0) is None
    with pytest.raises(ValueError):
        condition_dropout(8, 1.5)


def test_guidance_distillation_matches_cfg_with_one_call_per_step(toy_teacher):
    teacher, flow = toy_teacher
    student = DiTDenoiser(
        2, cond_dim=1, hidden=32, depth=2, heads=2, patch=(1, 1, 1), rope=None, guidance_embed=True
    )
    missing, unexpected = student.load_state_dict(copy.deepcopy(teacher.state_dict()), strict=False)
    assert not unexpected and all(name.startswith("g_embed") for name in missing)
    distiller = GuidanceDistiller(teacher, student, flow, w_range=(1.0, 8.0))
    optimizer = torch.optim.AdamW(student.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        params = torch.rand(256, 1, generator=g) * 2 - 1
        x0 = torch.randn(256, 2, 1, 1, generator=g)
        optimizer.zero_grad()
        distiller.loss(x0, params=params, generator=g).backward()
        optimizer.step()
    assert not any(p.requires_grad for p in teacher.parameters())

    # sampling: the student calls the network once per step, CFG twice
    noise = torch.randn(2000, 2, 1, 1, generator=g)
    params = torch.full((2000, 1), 0.5)
    counted_teacher, counted_student = CountingModel(teacher), CountingModel(student)
    for w in (1.5, 4.0, 8.0):
        counted_teacher.calls = counted_student.calls = 0
        guided = flow.sample(counted_teacher, noise, steps=8, params=params, guidance_scale=w)
        distilled = flow.sample(counted_student, noise, steps=8, params=params, guidance=w)
        assert counted_teacher.calls == 16 and counted_student.calls == 8
        relative = float(((distilled - guided) ** 2).mean() / guided.var())
        assert relative < 0.05, (w, relative)
    # without guidance the samples are far from the guided ones: the student learned w
    plain = flow.sample(teacher, noise, steps=8, params=params)
    assert float(((plain - guided) ** 2).mean() / guided.var()) > 3 * relative

    # one call: relative error to the teacher's CFG output over w in [1, 8], against the
    # error of ignoring the guidance (the teacher's conditional output)
    x_t, t, _ = flow.corrupt(torch.randn(4000, 2, 1, 1, generator=g), generator=g)
    p = torch.rand(4000, 1, generator=g) * 2 - 1
    with torch.no_grad():
        for w in (1.0, 2.0, 4.0, 8.0):
            target = cfg_output(teacher, x_t, t, w, params=p)
            error = float(
                ((student(x_t, t, params=p, guidance=w) - target) ** 2).mean() / target.var()
            )
            ignored = float(((teacher(x_t, t, params=p) - target) ** 2).mean() / target.var())
            assert error < 0.1, (w, error)
            if w >= 2:
                assert error < 0.1 * ignored, (w, error, ignored)
