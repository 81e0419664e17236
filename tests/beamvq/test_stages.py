"""Issue 12's pieces of BeamVQ: the default reference-free score tracks the error, the
self-training pool holds only inputs whose truth no training window has, the identity
quantizer (no-VQ control), the policy gradient, the data-scarcity split."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from beamvq_helpers import TinyBackbone
from scipy.stats import spearmanr
from test_method import _cfg, _dataset

from physforecast.beamvq import selftrain
from physforecast.beamvq.forecaster import BeamVQForecaster
from physforecast.beamvq.head import TopKVQHead, head_loss
from physforecast.beamvq.method import DEFAULT_SCORES, score_functions
from physforecast.beamvq.stages import (
    InputsOnly,
    extension_windows,
    policy_loss_fn,
    pseudo_pool,
)
from physforecast.config import Config, apply_overrides, check_config
from physforecast.data.prepare import prepare_data
from physforecast.errors import ConfigError
from physforecast.registry import DATASETS, SCORES
from physforecast.run_dir import RunDir
from physforecast.search.scores import PhysicsSpec, ScoreContext
from physforecast.training.run import train


# -- the default inference score --------------------------------------------------------
def _ns2d_candidates():
    """True ns2d windows (32x32, 10 -> 10) and 19 perturbed candidates of each."""
    ds = DATASETS.create("ns2d", n_trajectories=3, size=32, n_steps=20, progress=False)
    w = torch.tensor(ds["vorticity"].values, dtype=torch.float32)  # (3, 20, 32, 32)
    mean, std = float(w.mean()), float(w.std())
    wn = ((w - mean) / std)[:, :, None]
    x, y = wn[:, :10], wn[:, 10:]
    gen = torch.Generator().manual_seed(0)
    cands = [y + a * torch.randn(y.shape, generator=gen) for a in (0.0, 0.02, 0.05, 0.1, 0.2)]
    cands += [y * d for d in (0.95, 0.9, 0.8, 1.05, 1.1)]  # damped / amplified
    for s in (1, 2):  # blurred
        k = torch.ones(1, 1, 2 * s + 1, 2 * s + 1) / (2 * s + 1) ** 2
        flat = F.pad(y.reshape(-1, 1, 32, 32), (s, s, s, s), mode="circular")
        cands.append(F.conv2d(flat, k).reshape(y.shape))
    cands += [y.roll(1, -1), y.roll(2, -1)]  # displaced
    cands.append(x[:, -1:].expand_as(y))  # persistence
    cands.append(torch.cat([x[:, -1:], y[:, :-1]], 1))  # one step late
    err = torch.randn(3, 1, 4, 4, generator=gen)
    err = F.interpolate(err, size=(32, 32), mode="bicubic")[:, None]  # (3, 1, 1, 32, 32)
    cands += [y + a * err for a in (0.05, 0.1, 0.2)]  # a smooth error field
    phys = PhysicsSpec(
        dx=float(ds.attrs["dx"]),
        dy=float(ds.attrs["dy"]),
        dt=float(ds.attrs["dt"]),
        viscosity=1e-3,
        forcing="ns2d",
        vorticity=0,
    )
    ctx = ScoreContext(x, target=y, physics=phys, denormalize=lambda t: t * std + mean)
    return torch.stack(cands, 1), y, ctx


def test_default_inference_score_is_reference_free_and_ranks_like_the_rmse():
    train_score, infer = score_functions(Config())
    assert infer is not None and not infer.reference and set(infer.weights) == set(DEFAULT_SCORES)
    pred, y, ctx = _ns2d_candidates()
    infer.calibrate(y.unsqueeze(1), ctx)  # the truth's level, as a run sets it
    pen = infer(pred, ScoreContext(ctx.history, physics=ctx.physics, denormalize=ctx.denormalize))
    rmse = SCORES.entry("rmse").factory(pred, ctx)
    rho = [spearmanr(pen[i].numpy(), rmse[i].numpy()).statistic for i in range(pred.shape[0])]
    assert min(rho) > 0.3, rho
    # the failure of the old residual: a damped truth must not beat a small error
    damped, smooth, lighter = 7, 16, 5  # y * 0.8 (RMSE ~0.25), smooth error (~0.05), y * 0.95
    assert (pen[:, damped] > pen[:, smooth]).all() and (pen[:, damped] > pen[:, lighter]).all()
    assert (pen[:, :1] < pen[:, 1:]).all()  # the truth itself is best


def test_residual_score_has_no_end_stencil_dominating():
    # the same error on the first or the last lead costs the same (midpoint differences)
    pred, y, ctx = _ns2d_candidates()
    free = ScoreContext(ctx.history, physics=ctx.physics, denormalize=ctx.denormalize)
    bump = 0.05 * torch.randn(y.shape[:1] + y.shape[2:], generator=torch.Generator().manual_seed(1))
    first, last, middle = y.clone(), y.clone(), y.clone()
    first[:, 0] += bump
    last[:, -1] += bump
    middle[:, 4] += bump
    pen = SCORES.entry("residual").factory(torch.stack([first, middle, last], 1), free)
    # an interior frame enters two differences, an end frame one: the end costs less
    ratio = pen[:, 2] / pen[:, 0]
    assert torch.allclose(ratio, torch.ones_like(ratio), rtol=0.15), ratio
    assert (pen[:, 1] > pen[:, 2]).all()


# -- the self-training pool -------------------------------------------------------------
def test_train_fraction_splits_off_an_unlabelled_pool(tmp_path):
    cfg = _cfg(tmp_path, **{"data.split": "[0.7, 0.15, 0.15]", "data.train_fraction": 0.5})
    full = prepare_data(_cfg(tmp_path, **{"data.split": "[0.7, 0.15, 0.15]"}))
    part = prepare_data(cfg)
    labelled = set(part.train.selection["trajectory"].tolist())
    pool = set(part.unlabelled.selection["trajectory"].tolist())
    assert labelled and pool and not labelled & pool
    assert labelled | pool == set(full.train.selection["trajectory"].tolist())
    assert full.unlabelled is None
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="data.train_fraction"):
            check_config(apply_overrides(Config(), [f"data.train_fraction={bad}"]))


def test_pools_hold_inputs_without_truth_that_no_training_window_has(tmp_path):
    cfg = _cfg(tmp_path, **{"data.split": "[0.7, 0.15, 0.15]", "data.train_fraction": 0.5})
    data = prepare_data(cfg)
    train_x = torch.stack([data.train[i]["x"] for i in range(len(data.train))])
    for source in ("unlabelled", "extend"):
        pool = pseudo_pool(source, data)
        assert isinstance(pool, InputsOnly) and len(pool) > 0
        for i in range(len(pool)):
            sample = pool[i]
            assert "y" not in sample
            same = (train_x - sample["x"]).flatten(1).abs().amax(1) == 0
            assert not same.any(), f"{source} input {i} is a labelled training input"
    # extend: the histories ending in the last T_out - 1 frames of each trajectory
    ext = extension_windows(data)
    assert len(ext) == len(data.train.selection["trajectory"]) * (data.train.out_steps - 1)
    assert pseudo_pool("none", data) is None
    with pytest.raises(ConfigError, match="train_fraction"):
        pseudo_pool("unlabelled", prepare_data(_cfg(tmp_path)))


def test_a_run_pseudo_labels_only_unlabelled_inputs(tmp_path, monkeypatch):
    cfg = _cfg(
        tmp_path,
        **{
            "data.split": "[0.7, 0.15, 0.15]",
            "data.train_fraction": 0.5,
            "beamvq.pseudo": "unlabelled",
            "train.epochs": 3,
        },
    )
    data = prepare_data(cfg)
    seen: list[torch.Tensor] = []
    original = selftrain.PseudoLabelDataset.add

    def spy(self, batch, candidates, keep, penalties, round_):
        assert "y" not in batch  # the pool's truth never reaches self-training
        seen.append(batch["x"][keep.any(1)])
        return original(self, batch, candidates, keep, penalties, round_)

    monkeypatch.setattr(selftrain.PseudoLabelDataset, "add", spy)
    train(cfg, evaluate=False)
    kept = torch.cat(seen)
    assert len(kept) == round(0.5 * len(data.unlabelled))
    pool_x = torch.stack([data.unlabelled[i]["x"] for i in range(len(data.unlabelled))])
    train_x = torch.stack([data.train[i]["x"] for i in range(len(data.train))])
    for x in kept:
        assert ((pool_x - x).flatten(1).abs().amax(1) < 1e-6).any()
        assert not ((train_x - x).flatten(1).abs().amax(1) < 1e-6).any()
    rounds = RunDir(cfg.out).read_records("beamvq_rounds.jsonl")
    assert rounds[1]["pool"] == "unlabelled"


def test_pseudo_unlabelled_without_a_pool_is_refused(tmp_path):
    cfg = _cfg(tmp_path, **{"beamvq.pseudo": "unlabelled"})
    with pytest.raises(ConfigError, match="train_fraction < 1"):
        train(cfg, evaluate=False)


# -- the defaults end to end -------------------------------------------------------------
def test_the_default_forecast_is_a_multi_block_beam_that_differs_from_top1(tmp_path):
    items = {
        "data.dataset": _dataset(tmp_path),
        "data.in_steps": 2,
        "data.out_steps": 2,
        "data.batch_size": 8,
        "data.split": "[0.5, 0.25, 0.25]",
        "model.options": "{modes: 4, hidden: 8, n_layers: 2}",
        "train.epochs": 4,
        "train.device": "cpu",
        "method": "beamvq",
        "beamvq.num_codes": 16,
        "beamvq.code_dim": 8,
        "beamvq.rounds": 1,
        "beamvq.epochs_per_round": 1,
        "out": str(tmp_path / "run"),
    }  # everything else of beamvq at its defaults
    cfg = apply_overrides(Config(), [f"{k}={v}" for k, v in items.items()])
    from physforecast import load
    from physforecast.beamvq.evaluation import evaluate_beamvq

    train(cfg, evaluate=False)
    model = load(cfg.out).model
    assert model.block == 1 and model.width > 1 and model.top_k > 1  # 2 blocks of 1 lead
    score = model.inference_score
    assert score is not None and not score.reference
    data = prepare_data(cfg)
    res = evaluate_beamvq(model, torch.utils.data.DataLoader(data.test, batch_size=8))
    assert res["summary"]["beam_equals_top1"][0] < 1.0
    assert res["summary"]["beam_top1_diff"][0] > 0


def test_a_run_with_the_critic_and_the_policy_stage(tmp_path):
    cfg = _cfg(
        tmp_path,
        **{
            "beamvq.critic": "true",
            "beamvq.critic_steps": 20,
            "beamvq.temperature": 0.5,
            "beamvq.policy_steps": 2,
        },
    )
    from physforecast import load

    train(cfg, evaluate=False)
    run = RunDir(cfg.out)
    assert run.file("stages/critic.pt").exists()  # kept for an exact --resume
    stages = [r["stage"] for r in run.read_metrics()]
    assert stages[-1] == "policy"
    model = load(cfg.out).model
    assert model.critic is not None and "critic" in model.inference_score.weights
    fresh = torch.load(run.file("stages/critic.pt"), weights_only=True)
    for key, value in model.critic.state_dict().items():
        torch.testing.assert_close(value, fresh[key])
    with pytest.raises(ConfigError, match="policy_steps"):
        train(_cfg(tmp_path / "b", **{"beamvq.policy_steps": 2}), evaluate=False)


# -- the no-VQ control --------------------------------------------------------------------
def test_identity_quantizer_is_the_same_head_without_codes():
    torch.manual_seed(0)
    bb = TinyBackbone(in_steps=2, out_steps=2)
    vq = TopKVQHead(bb, mode="output", num_codes=8, code_dim=4, hidden=4, downsample=2)
    ident = TopKVQHead(
        bb, mode="output", num_codes=8, code_dim=4, hidden=4, downsample=2, quantizer="identity"
    )
    vq_params = {k for k, _ in vq.named_parameters()}
    assert vq_params == {k for k, _ in ident.named_parameters()}  # the same trainable head
    ident.load_state_dict(
        {k: v for k, v in vq.state_dict().items() if k in vq_params}, strict=False
    )
    ident.eval()
    x = torch.randn(3, 2, 1, 8, 8)
    out = ident(x, k=4, temperature=0.5)
    assert out.candidates.shape == (3, 4, 2, 1, 8, 8)
    for j in range(1, 4):
        assert torch.equal(out.candidates[:, j], out.candidates[:, 0])
    # top-1 is the propagated, decoded encoder output (no codes), added to the forecast
    y0 = bb(x)
    feat = ident.encoder(y0.reshape(6, 1, 8, 8))
    d, h, w = feat.shape[1:]
    z = ident.propagator(feat.reshape(3, 2 * d, h, w)).reshape(6, d, h, w)
    want = ident.decoder(z).reshape(3, 2, 1, 8, 8) + y0
    torch.testing.assert_close(out.candidates[:, 0], want)
    loss, _ = head_loss(ident(x, k=2), torch.zeros(3, 2, 1, 8, 8))
    loss.backward()  # trains like the VQ head
    with pytest.raises(ValueError, match="quantizer"):
        TopKVQHead(bb, quantizer="pq")


# -- the policy gradient ------------------------------------------------------------------
def test_policy_gradient_raises_the_reward_of_sampled_candidates():
    torch.manual_seed(0)
    bb = TinyBackbone(in_steps=2, out_steps=2, hidden=4)
    head = TopKVQHead(bb, mode="latent", num_codes=16, code_dim=4, kmeans_init=False)
    head.materialize(torch.zeros(1, 2, 1, 8, 8))
    fc = BeamVQForecaster(head, top_k=6, width=2, temperature=1.0)
    x = torch.randn(8, 2, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    def reward(hist, cands, cond):  # the critic of the toy: brighter forecasts are better
        return cands.flatten(2).mean(-1)

    def mean_reward() -> float:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(5)
            out = head(x, k=6, temperature=1.0, generator=gen)
            return float(reward(x, out.candidates, None)[:, 1:].mean())

    loss_fn = policy_loss_fn(fc, weight=1.0, supervised_weight=0.0, reward=reward)
    # only the policy moves the encoder: the decoder (the reward's map) stays fixed
    opt = torch.optim.Adam(bb.enc.parameters(), lr=2e-2)
    head.eval()  # a frozen code bank: the distribution changes only through the latent
    before = mean_reward()
    for _ in range(40):
        loss, logs = loss_fn(head, {"x": x, "y": torch.zeros(8, 2, 1, 8, 8)})
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert "pg_loss" in logs
    after = mean_reward()
    assert after > before + 0.05 * abs(before) + 1e-3, (before, after)


def test_policy_needs_sampling_and_a_reward():
    torch.manual_seed(0)
    bb = TinyBackbone()
    head = TopKVQHead(bb, mode="latent", num_codes=8, code_dim=4)
    with pytest.raises(ConfigError, match="temperature"):
        policy_loss_fn(BeamVQForecaster(head, top_k=3, temperature=0.0))
    with pytest.raises(ConfigError, match="critic"):
        policy_loss_fn(BeamVQForecaster(head, top_k=3, temperature=0.5))


@pytest.mark.slow
def test_default_score_ranks_held_out_candidates_of_a_trained_model_like_the_rmse(tmp_path):
    # the slow sibling of the synthetic test: a trained fno + head on ns2d, the candidates
    # of validation windows (never trained on), the run's default score and truth levels
    from physforecast.beamvq.context import PhysicsContext
    from physforecast.beamvq.method import build_beamvq_model, fit_stage, head_loss_fn
    from physforecast.beamvq.stages import spearman, truth_scales

    torch.manual_seed(0)
    cfg = apply_overrides(
        Config(),
        [
            "data.options={n_trajectories: 10, n_steps: 20}",
            "data.in_steps=5",
            "data.out_steps=5",
            "data.batch_size=16",
            "model.options={modes: 8, hidden: 16, n_layers: 2}",
            "train.device=cpu",
            "beamvq.num_codes=64",
            "beamvq.code_dim=16",
            "beamvq.block=5",
        ],
    )
    data = prepare_data(cfg)
    spec = {"name": "fno", "in_steps": 5, "out_steps": 5, "in_channels": 1, "modes": 8}
    model = build_beamvq_model(cfg, {**spec, "hidden": 16, "n_layers": 2}, example_size=(32, 32))
    model.context_fn.fill(data)
    assert isinstance(model.context_fn, PhysicsContext)
    fit_stage(model.head.backbone, cfg, data.train, None, 6)
    fit_stage(model.head, cfg, data.train, None, 2, loss_fn=head_loss_fn(model.top_k, 0.0, 1.0))
    model.eval()
    loader = torch.utils.data.DataLoader(data.train, batch_size=16)
    scales, missing = truth_scales(model, model.score, loader)
    assert not missing
    model.set_score_scales(scales)
    score = model.inference_score
    rhos = []
    for batch in torch.utils.data.DataLoader(data.val, batch_size=16):
        with torch.no_grad():
            cands = model.candidates(batch["x"])
        ctx = model.context_fn(batch["x"], None)
        pen = score(cands, ctx)
        ctx.target = batch["y"]
        rmse = SCORES.entry("rmse").factory(cands, ctx)
        rhos += [spearman(pen[i], rmse[i]) for i in range(len(pen))]
    assert sum(rhos) / len(rhos) > 0.1, rhos
