"""`physforecast train` with train.comm_hook / train.averaging / train.noise_scale / train.lr_scaling.

The default tests run the command in two forked gloo processes (launch_local); the slow
ones under a real ``python -m torch.distributed.run --nproc-per-node 2``. Both interrupt a
run after an epoch (an exception raised on every rank, as a crash would stop it), resume
it with ``--resume`` and compare every rank's weights with an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from physforecast.cli import main
from physforecast.config import Config, TrainConfig, apply_overrides
from physforecast.errors import ConfigError
from physforecast.training.distributed import launch_local
from physforecast.training.parallel import check_parallel
from physforecast.training.trainer import Trainer

TINY = [
    "data.options.n_trajectories=6",
    "data.options.n_steps=10",
    "data.options.size=16",
    "data.in_steps=3",
    "data.out_steps=2",
    "data.batch_size=4",
    "model.options.hidden=8",
    "model.options.modes=4",
    "model.options.n_layers=2",
    "train.device=cpu",
]

#: Each hook and averager, with options that make it do something in a few steps.
CONTENDERS = {
    "allreduce": [],
    "fp16": ["train.comm_hook=fp16"],
    "powersgd": [  # torch's PowerSGD refuses an FNO's complex weights
        "train.comm_hook=powersgd",
        "train.comm_hook_options={rank: 1, start_iter: 2}",
        "model.backbone=resnet",
        "model.options={hidden: 8, n_blocks: 2}",
    ],
    "dlcp": ["train.comm_hook=dlcp", "train.comm_hook_options={loss_bound: 0.1, chunk_size: 64}"],
    "periodic": ["train.averaging=periodic", "train.averaging_options={period: 2}"],
    "dssync": ["train.averaging=dssync", "train.averaging_options={group_size: 2}"],
}


class Stop(Exception):
    """Raised on every rank after an epoch: the run stops as if killed."""


def _stop_after(epoch: int) -> None:
    """Make every Trainer of this (forked) process raise Stop after ``epoch`` epochs."""
    original = Trainer._run_epoch

    def run_epoch(self, *args, **kwargs):
        record = original(self, *args, **kwargs)
        if self.epoch == epoch:
            raise Stop(f"stopped after epoch {epoch}")
        return record

    Trainer._run_epoch = run_epoch


def _cli_worker(rank: int, world: int, argv: list[str], stop: int) -> str:
    if stop:
        _stop_after(stop)
    try:
        return f"rc={main(argv)}"
    except Stop:
        return "stopped"


def _api_worker(rank: int, world: int, overrides: list[str], resume: str, stop: int) -> str:
    """``physforecast.training.run.train`` (what the command runs), without the scoring."""
    from physforecast.training.run import load_run_config, train

    if stop:
        _stop_after(stop)
    cfg = load_run_config(resume) if resume else Config()
    cfg = apply_overrides(cfg, overrides)
    try:
        train(cfg, resume=resume or None, evaluate=False)
        return "done"
    except Stop:
        return "stopped"


def _weights(path: Path) -> list[dict[str, torch.Tensor]]:
    """Every rank's weights in a checkpoint (rank 0's alone when the ranks agree)."""
    state = torch.load(path, weights_only=True)
    ranks = state.get("ranks") or []
    models = [r["model"] for r in ranks if "model" in r]
    return models or [state["model"]]


def _assert_same(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert len(wa) == len(wb)
    for ma, mb in zip(wa, wb):
        assert ma.keys() == mb.keys()
        for k in ma:
            assert torch.equal(ma[k], mb[k]), k


def _epochs(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["epoch"] for x in lines]


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


class Fields(Dataset):
    """y = roll(x) on 8 x 8 fields."""

    def __init__(self, n: int = 24) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 2, 8, 8, generator=g)
        self.y = torch.roll(self.x, 1, dims=-1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class ConvNet(nn.Module):
    cond_dim = 0

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 8, 3, padding=1)
        self.drop = nn.Dropout(0.2)  # the random-number state matters for an exact resume
        self.b = nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x, cond=None):
        return self.b(self.drop(torch.relu(self.a(x[:, 0])))).unsqueeze(1)


def _trainer_worker(rank: int, world: int, run_dir: str, options: dict, stop: int) -> dict:
    from physforecast.training.distributed import init_distributed

    info = init_distributed("cpu")
    torch.manual_seed(0)
    cfg = Config()
    cfg.data.batch_size = 4
    cfg.train = TrainConfig(epochs=3, lr=3e-3, device="cpu", **options)
    trainer = Trainer(
        ConvNet(),
        cfg.train,
        run_dir=run_dir,
        config=cfg,
        dist_info=info,
        optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=3e-3),
    )
    if not stop:
        trainer.resume()  # a no-op for a new run directory
    else:

        def interrupt(tr, record):
            if record["epoch"] == stop:
                raise Stop

        trainer.callbacks.append(interrupt)
    try:
        trainer.fit(Fields(), Fields(8))
    except Stop:
        return {"stopped": True}
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize(
    "options",
    [
        {"comm_hook": "dlcp", "comm_hook_options": {"loss_bound": 0.1, "chunk_size": 16}},
        {"averaging": "periodic", "averaging_options": {"period": 2}},
    ],
    ids=["dlcp", "periodic"],
)
def test_trainer_from_the_config_resumes_exactly_on_every_rank(tmp_path, options):
    """train.comm_hook / train.averaging built by the Trainer in two gloo processes; a run
    interrupted after epoch 1 of 3 and resumed ends with every rank's weights equal to the
    uninterrupted run's (cosine schedule, dropout, hook or averager state, own models)."""

    from physforecast.registry import METHODS

    METHODS.names()  # checkpoints name the config's method sections: import them once, here

    def run(path, stop):
        args = (str(path), options, stop)
        return launch_local(_trainer_worker, 2, args, timeout=120, start_method="fork")

    full = run(tmp_path / "full", 0)
    assert run(tmp_path / "cut", 1) == [{"stopped": True}] * 2
    resumed = run(tmp_path / "cut", 0)
    for a, b in zip(full, resumed):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(full[0][k], full[1][k]) for k in full[0])  # consensus at the end
    records = _records(tmp_path / "full")
    if "comm_hook" in options:
        assert 0.8 < records[-1]["comm_bytes_sent"] / records[-1]["comm_bytes_total"] < 0.95


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dlcp", "periodic"])
def test_train_two_processes_resumes_exactly(tmp_path, name):
    """Two forked gloo processes through the run (training.run.train, the command without
    its scoring); the cosine schedule, the hook's or averager's state and (for periodic
    averaging) each rank's own model carry over."""
    common = [*TINY, *CONTENDERS[name], "train.epochs=3"]
    full, cut = tmp_path / "full", tmp_path / "cut"

    def run(overrides, resume="", stop=0):
        args = (overrides, resume, stop)
        return launch_local(_api_worker, 2, args, timeout=240, start_method="fork")

    assert run([*common, f"out={full}"]) == ["done", "done"]
    assert run([*common, f"out={cut}"], stop=1) == ["stopped", "stopped"]
    assert _epochs(cut) == [1]
    assert run([], resume=str(cut)) == ["done", "done"]
    assert _epochs(cut) == [1, 2, 3]
    _assert_same(full / "checkpoints" / "last.pt", cut / "checkpoints" / "last.pt")
    records = _records(full)
    if name == "dlcp":  # the hook ran: its byte counters are in the metrics
        assert 0.85 < records[-1]["comm_bytes_sent"] / records[-1]["comm_bytes_total"] < 0.95
    else:  # the models drifted apart between averages, and the end is one global average
        state = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
        assert state["averager"]["step"] == records[-1]["step"]
        w0, w1 = (r["model"] for r in state["ranks"])
        assert all(torch.equal(w0[k], w1[k]) for k in w0)


# -- under a real torchrun (slow: about 30 s a launch on 2 busy cores) -------------------

SCRIPT = """
import os, sys
from physforecast.cli import main

stop = int(os.environ.get("PF_TEST_STOP_AFTER", "0"))
if stop:
    import physforecast.training.trainer as trainer

    original = trainer.Trainer._run_epoch

    def run_epoch(self, *args, **kwargs):
        record = original(self, *args, **kwargs)
        if self.epoch == stop:
            raise SystemExit(3)  # every rank stops here, as if killed
        return record

    trainer.Trainer._run_epoch = run_epoch
sys.exit(main(sys.argv[1:]))
"""


def _torchrun(script: Path, args: list[str], stop: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PF_TEST_STOP_AFTER": str(stop)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run(
        [*cmd, str(script), *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONTENDERS))
def test_torchrun_train_with_each_hook_and_averager_resumes_exactly(tmp_path, name):
    script = tmp_path / "run_train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    common = ["train", "--set", *TINY, *CONTENDERS[name], "train.epochs=3"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = _torchrun(script, [*common, "--out", str(full)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run directory:" in done.stdout and (full / "scorecard.json").exists()
    stopped = _torchrun(script, [*common, "--out", str(cut)], stop=1)
    assert stopped.returncode != 0 and _epochs(cut) == [1]
    resumed = _torchrun(script, ["train", "--resume", str(cut)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming training at epoch 2/3" in resumed.stderr
    assert _epochs(cut) == [1, 2, 3]
    _assert_same(full / "checkpoints" / "last.pt", cut / "checkpoints" / "last.pt")


# -- the config switches: refused before anything is written -----------------------------


def _train_cfg(*overrides: str) -> TrainConfig:
    return apply_overrides(Config(), list(overrides)).train


@pytest.mark.parametrize(
    "overrides, world, message",
    [
        (["train.comm_hook=dlpc"], 2, "unknown comm hook 'dlpc'. Did you mean 'dlcp'?"),
        (
            ["train.comm_hook=dlcp", "train.comm_hook_options={loss_bond: 0.1}"],
            2,
            "comm hook 'dlcp' does not take option 'loss_bond' "
            "(train.comm_hook_options.loss_bond). Did you mean 'loss_bound'?",
        ),
        (["train.averaging=dsync"], 2, "unknown averager 'dsync'. Did you mean 'dssync'?"),
        (["train.averaging=periodic", "train.averaging_options={periods: 2}"], 2, "'period'?"),
        (["train.comm_hook=fp16"], 1, "single process (no DDP): launch several processes"),
        (["train.averaging=dssync"], 1, "single process (no DDP)"),
        (
            ["train.averaging=dssync", "train.comm_hook=dlcp"],
            4,
            "brings its own comm hook",
        ),
        (
            ["train.averaging=dssync", "train.averaging_options={group_size: 3}"],
            4,
            "not a multiple of the DS-Sync group size 3",
        ),
        (["train.averaging=periodic", "train.averaging_options={period: 1}"], 2, "period 1"),
        (["train.noise_scale=true"], 1, "set train.accumulate >= 2"),
        (["train.noise_scale=true", "train.comm_hook=dlcp"], 2, "does not compute"),
        (["train.lr_scaling=surge"], 1, "needs train.lr_b_noise"),
        (["train.comm_hook=dlcp", "train.comm_hook_options={module: 1}"], 2, "set by the trainer"),
    ],
)
def test_bad_settings_are_named(overrides, world, message):
    with pytest.raises(ConfigError) as err:
        check_parallel(_train_cfg(*overrides), world)
    assert message in str(err.value)


def test_good_settings_pass():
    check_parallel(_train_cfg(), 1)
    check_parallel(_train_cfg("train.noise_scale=true", "train.accumulate=2"), 1)
    for extra in CONTENDERS.values():
        check_parallel(_train_cfg(*extra), 2)
    check_parallel(_train_cfg("train.lr_scaling=surge", "train.lr_b_noise=64"), 1)


def test_a_hook_on_one_process_fails_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--set", *TINY, "train.comm_hook=dlcp"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("physforecast: error: train.comm_hook='dlcp'")
    assert "torchrun --nproc-per-node N" in err[0]
    assert not out.exists()


def test_powersgd_refuses_complex_parameters():
    from physforecast.training.comm_hooks import COMM_HOOKS

    class Spectral(nn.Module):
        def __init__(self):
            super().__init__()
            self.weights = nn.Parameter(torch.zeros(2, 2, dtype=torch.cfloat))

    with pytest.raises(ValueError, match="cannot compress complex parameters \\(weights\\)"):
        COMM_HOOKS.create("powersgd", module=Spectral())


def test_lr_scaling_choices_match_the_rules():
    from physforecast.config import check_config
    from physforecast.training.surge import LR_SCALING_RULES

    for rule in LR_SCALING_RULES:
        check_config(apply_overrides(Config(), [f"train.lr_scaling={rule}"]))
    with pytest.raises(ConfigError, match="Did you mean 'sqrt'"):
        check_config(apply_overrides(Config(), ["train.lr_scaling=sqr"]))


# -- learning rate for the batch size ------------------------------------------------------


class Lin(nn.Module):
    cond_dim = 0

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d))

    def forward(self, x, cond=None):
        return x @ self.w


def _half_mse(model, batch):
    loss = 0.5 * (model(batch["x"]) - batch["y"]).square().mean()
    return loss, {}


class Regression(Dataset):
    """y = w* . x + eps, x ~ N(0, I_d): per-example gradients with a known covariance."""

    def __init__(self, n: int = 2048, d: int = 4, sigma: float = 1.0, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, d, generator=g, dtype=torch.float64).float()
        self.w_star = torch.ones(d)
        self.y = self.x @ self.w_star + sigma * torch.randn(n, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}

    def noise_scale_at(self, w: torch.Tensor) -> float:
        """tr(Sigma) / |G|^2 of the per-example gradients (w.x - y) x over the whole set."""
        grads = (self.x @ w - self.y).unsqueeze(1) * self.x
        mean = grads.mean(0)
        trace = (grads - mean).square().sum(1).mean()
        return float(trace / mean.square().sum())


def _frozen(params):  # lr 0: the weights, so the analytic noise scale, stay put
    return torch.optim.SGD(params.parameters(), lr=0.0)


def test_lr_scaling_rescales_the_trainer_learning_rate():
    cfg = Config()
    cfg.data.batch_size = 8
    for rule, extra, factor in [
        ("linear", {}, 4.0),
        ("sqrt", {}, 2.0),
        # law(32) / law(8): the peak (32 = b_noise) over 1 / (0.5 (sqrt(32/8) + sqrt(8/32)))
        ("surge", {"lr_b_noise": 32.0}, 0.5 * (math.sqrt(32 / 8) + math.sqrt(8 / 32))),
        ("sgd", {"lr_b_noise": 32.0}, (1 / (1 + 32 / 32)) / (1 / (1 + 32 / 8))),
    ]:
        cfg.train = TrainConfig(device="cpu", lr=1e-3, lr_scaling=rule, **extra)
        trainer = Trainer(Lin(), cfg.train, config=cfg, batch_size=32)
        assert trainer.global_batch == 32
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * factor), rule
    # the tuned batch may be given; accumulation counts in the global batch
    cfg.train = TrainConfig(device="cpu", lr=1e-3, lr_scaling="linear", lr_base_batch=64)
    cfg.train.accumulate = 4
    trainer = Trainer(Lin(), cfg.train, config=cfg)
    assert trainer.global_batch == 32
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3)
    trainer = Trainer(Lin(), TrainConfig(device="cpu", lr=1e-3), config=cfg, batch_size=32)
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-3  # lr_scaling none


# -- the noise-scale monitor in the Trainer ------------------------------------------------


def test_noise_scale_from_micro_batches_matches_the_analytic_value(tmp_path):
    data = Regression()
    cfg = TrainConfig(
        device="cpu", epochs=2, noise_scale=True, noise_scale_beta=0.99, accumulate=4, grad_clip=0
    )
    trainer = Trainer(
        Lin(), cfg, loss_fn=_half_mse, optimizer=_frozen, batch_size=8, run_dir=tmp_path
    )
    trainer.fit(data, None)
    expected = data.noise_scale_at(torch.zeros(4))
    record = _records(tmp_path)[-1]
    assert record["grad_noise_scale"] == pytest.approx(expected, rel=0.15)
    assert record["grad_sq_norm_ema"] == pytest.approx(4.0, rel=0.15)  # |G|^2 = |w*|^2
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["noise_scale"]["updates"] == trainer.step == 2 * 2048 // 32


def _noise_worker(rank: int, world: int) -> dict:
    from physforecast.training.distributed import init_distributed

    info = init_distributed("cpu")
    cfg = TrainConfig(device="cpu", epochs=2, noise_scale=True, noise_scale_beta=0.99, grad_clip=0)
    trainer = Trainer(
        Lin(), cfg, loss_fn=_half_mse, optimizer=_frozen, batch_size=16, dist_info=info
    )
    history = trainer.fit(Regression(), None)
    return {"noise": history[-1]["grad_noise_scale"], "bytes": history[-1]["comm_bytes_sent"]}


def test_noise_scale_under_ddp_matches_the_analytic_value():
    out = launch_local(_noise_worker, 2, timeout=120, start_method="fork")
    expected = Regression().noise_scale_at(torch.zeros(4))
    assert out[0]["noise"] == out[1]["noise"]  # the same estimate on every rank
    assert out[0]["noise"] == pytest.approx(expected, rel=0.15)
    assert out[0]["bytes"] == 4 * 4  # the allreduce hook's counters still count


# -- train.fsdp (FSDP2) -------------------------------------------------------------------

RESNET = ["model.backbone=resnet", "model.options={hidden: 8, n_blocks: 2}"]


def _fsdp_vs_ddp_worker(rank: int, world: int) -> dict:
    from physforecast.training.distributed import init_distributed
    from physforecast.training.fsdp import is_sharded

    info = init_distributed("cpu")
    out = {}
    for sharded in (False, True):
        torch.manual_seed(0)
        cfg = Config()
        cfg.data.batch_size = 8
        cfg.train = TrainConfig(epochs=1, lr=1e-2, device="cpu", fsdp=sharded, accumulate=2)
        net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        trainer = Trainer(
            net,
            cfg.train,
            config=cfg,
            dist_info=info,
            loss_fn=_seq_mse,
            batch_size=4,
            optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
        )
        assert is_sharded(trainer.model) == sharded
        trainer.fit(Regression(n=32), None)
        out[sharded] = {k: v.clone() for k, v in trainer._model_state().items()}
    return out if rank == 0 else {}


def _seq_mse(model, batch):
    loss = (model(batch["x"]).squeeze(-1) - batch["y"]).square().mean()
    return loss, {}


def test_fsdp_trains_like_ddp():
    """Sharded and replicated training of the same model on the same data agree (to
    rounding: the reduce-scatter adds in another order than the all-reduce)."""
    import torch.distributed.checkpoint.state_dict  # noqa: F401  (once, for the forks)
    import torch.distributed.fsdp  # noqa: F401

    out = launch_local(_fsdp_vs_ddp_worker, 2, timeout=120, start_method="fork")[0]
    assert out[True].keys() == out[False].keys()
    for k in out[False]:
        torch.testing.assert_close(out[True][k], out[False][k], rtol=1e-5, atol=1e-6)
    start = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    assert not torch.allclose(start[0].weight, out[True]["0.weight"])  # it did train


@pytest.mark.slow
def test_fsdp_train_resumes_exactly(tmp_path):
    common = ["train", "--set", *TINY, *RESNET, "train.fsdp=true", "train.epochs=3"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert launch_local(
        _cli_worker, 2, ([*common, "--out", str(full)], 0), timeout=240, start_method="fork"
    ) == ["rc=0", "rc=0"]
    assert launch_local(
        _cli_worker, 2, ([*common, "--out", str(cut)], 1), timeout=240, start_method="fork"
    ) == ["stopped", "stopped"]
    resumed = launch_local(
        _cli_worker, 2, (["train", "--resume", str(cut)], 0), timeout=240, start_method="fork"
    )
    assert resumed == ["rc=0", "rc=0"] and _epochs(cut) == [1, 2, 3]
    _assert_same(full / "checkpoints" / "last.pt", cut / "checkpoints" / "last.pt")
    state = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    assert all(not hasattr(v, "placements") for v in state["model"].values())  # full tensors


@pytest.mark.parametrize(
    "overrides, world, message",
    [
        (["train.fsdp=true"], 1, "single process"),
        (["train.fsdp=true", "train.comm_hook=dlcp"], 2, "a DDP hook"),
        (["train.fsdp=true", "train.ema=0.99"], 2, "train.ema"),
        (["train.fsdp=true", "train.precision=fp16"], 2, "use bf16"),
    ],
)
def test_fsdp_refusals(overrides, world, message):
    with pytest.raises(ConfigError, match=message):
        check_parallel(_train_cfg(*overrides), world)


def test_fsdp_refuses_complex_parameters():
    from physforecast.training.fsdp import shard

    class Spectral(nn.Module):
        def __init__(self):
            super().__init__()
            self.weights = nn.Parameter(torch.zeros(2, 2, dtype=torch.cfloat))

    with pytest.raises(ValueError, match="cannot shard complex parameters"):
        shard(Spectral())
