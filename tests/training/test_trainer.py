"""Trainer: exact resume, atomic checkpoints, NaN guard, schedule, DDP with two gloo processes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from physforecast.config import Config, TrainConfig
from physforecast.training import Trainer, TrainingDivergedError, load_checkpoint, save_checkpoint
from physforecast.training.distributed import launch_local
from physforecast.training.trainer import lr_factor


class Toy(Dataset):
    """y = roll(x) on 8x8 fields, 24 windows."""

    def __init__(self, n=24):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 2, 1, 8, 8, generator=g)
        self.y = torch.roll(self.x, 1, dims=-1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {
            "x": self.x[i],
            "y": self.y[i],
            "params": torch.zeros(0),
            "mask": torch.ones(1, 8, 8, dtype=torch.bool),
        }


class Net(nn.Module):
    cond_dim = 0

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.drop = nn.Dropout(0.2)  # makes the RNG state matter for exact resume
        self.out = nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x, cond=None):
        b = x.shape[0]
        h = self.out(self.drop(torch.relu(self.conv(x.reshape(b, 2, 8, 8)))))
        return h.reshape(b, 2, 1, 8, 8)


def make(run_dir, epochs=4, **kw):
    torch.manual_seed(0)
    cfg = Config()
    cfg.data.batch_size = 5
    cfg.train = TrainConfig(**{"epochs": epochs, "lr": 3e-3, "device": "cpu", **kw})
    return Trainer(Net(), cfg.train, run_dir=run_dir, config=cfg)


def test_resume_matches_uninterrupted_run(tmp_path):
    full = make(tmp_path / "a")
    full.fit(Toy(), Toy(8))

    class Interrupt(Exception):
        pass

    def stop_after_two(trainer, record):
        if record["epoch"] == 2:
            raise Interrupt

    first = make(tmp_path / "b")
    first.callbacks.append(stop_after_two)
    with pytest.raises(Interrupt):  # killed after epoch 2 of 4
        first.fit(Toy(), Toy(8))
    resumed = make(tmp_path / "b")
    resumed.load(tmp_path / "b" / "checkpoints" / "last.pt")
    assert resumed.epoch == 2
    resumed.fit(Toy(), Toy(8))
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    records = [
        json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["train_loss"] < records[0]["train_loss"]


def test_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(99, 100, 0.1) < 0.02
    values = [lr_factor(s, 100, 0.1) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.ones(3)}, path)

    def crash(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint({"w": torch.ones(100)}, tmp_path / "c.pt")
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(RuntimeError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = make(tmp_path, epochs=3)
    trainer.fit(Toy(), None, epochs=1)
    good = load_checkpoint(tmp_path / "checkpoints" / "last.pt")

    def nan_loss(model, batch):
        return model(batch["x"]).sum() * float("nan"), {}

    trainer.loss_fn = nan_loss
    with pytest.raises(TrainingDivergedError, match="loss became nan at epoch 2.*last.pt"):
        trainer.fit(Toy(), None, epochs=3)
    after = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert after["epoch"] == good["epoch"] == 1
    for k in good["model"]:
        assert torch.equal(good["model"][k], after["model"][k])


def test_bad_precision():
    with pytest.raises(ValueError, match="precision"):
        Trainer(Net(), TrainConfig(precision="fp8", device="cpu"))


def test_bf16_autocast_trains(tmp_path):
    trainer = make(tmp_path, epochs=2, precision="bf16")
    hist = trainer.fit(Toy(), None)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] * 1.5 and all(
        torch.isfinite(p).all() for p in trainer.model.parameters()
    )


def _ddp_worker(rank, world, run_dir):
    from physforecast.training.distributed import init_distributed

    info = init_distributed("cpu")
    torch.manual_seed(0)
    cfg = Config()
    cfg.data.batch_size = 4
    cfg.train = TrainConfig(epochs=2, lr=3e-3, device="cpu")
    calls = {"n": 0}

    def counting_allreduce(state, bucket):  # the plain all-reduce, counted
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        state["n"] += 1
        return allreduce_hook(None, bucket)

    trainer = Trainer(
        Net(),
        cfg.train,
        run_dir=run_dir,
        config=cfg,
        dist_info=info,
        comm_hook=(calls, counting_allreduce),
    )
    hist = trainer.fit(Toy(), Toy(8))
    flat = torch.cat([p.detach().ravel() for p in trainer.model.parameters()])
    return rank, flat.tolist(), hist[-1]["val_loss"], trainer.step, calls["n"]


def test_ddp_two_gloo_processes(tmp_path):
    results = launch_local(_ddp_worker, 2, (str(tmp_path),), timeout=240, start_method="fork")
    (r0, w0, v0, s0, c0), (r1, w1, v1, s1, c1) = results
    assert w0 == w1  # gradients were all-reduced: identical weights on both ranks
    assert c0 == c1 >= s0  # the injected communication hook reduced every step's buckets
    assert v0 == pytest.approx(v1)  # validation loss reduced across ranks
    assert s0 == s1 == 2 * 3  # 24 windows / 2 ranks / batch 4 = 3 steps per epoch
    assert (tmp_path / "checkpoints" / "best.pt").exists()
    assert (
        len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    )  # rank 0 writes once per epoch


def test_early_stopping_after_patience(tmp_path):
    trainer = make(tmp_path, epochs=10, patience=2, lr=0.0)  # lr 0: validation never improves
    trainer.model.drop.p = 0.0
    hist = trainer.fit(Toy(), Toy(8))
    assert [r["epoch"] for r in hist] == [1, 2, 3]


def _weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().ravel() for p in model.parameters()])


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    """Two micro-batches of 4 accumulated into one step = one batch of 8 (same order)."""

    def run(batch_size, accumulate):
        torch.manual_seed(0)
        cfg = Config()
        cfg.data.batch_size = batch_size
        cfg.train = TrainConfig(epochs=2, lr=3e-3, device="cpu", accumulate=accumulate)
        net = Net()
        net.drop.p = 0.0
        trainer = Trainer(net, cfg.train, config=cfg)
        trainer.fit(Toy(), None)
        return trainer

    big, small = run(8, 1), run(4, 2)
    assert big.step == small.step == 2 * 3
    torch.testing.assert_close(_weights(small.model), _weights(big.model), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="accumulate"):
        Trainer(Net(), TrainConfig(accumulate=0, device="cpu"))


def test_injected_optimizer_scheduler_averager_and_step_callbacks(tmp_path):
    seen, averaged = [], []

    class Recorder:
        def average_parameters(self, params):
            averaged.append(len(list(params)))

    trainer = Trainer(
        Net(),
        TrainConfig(epochs=2, device="cpu"),
        optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
        scheduler=lambda opt, total: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
        averager=Recorder(),
        on_step=[lambda tr, logs: seen.append(logs["lr"])],
    )
    trainer.fit(Toy(), None)
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert len(seen) == len(averaged) == trainer.step == 2 * 2  # 24 windows, batch 16
    assert seen == pytest.approx([0.1 * 0.5**k for k in range(4)])  # stepped after every step


def test_ema_follows_the_weights_and_is_what_validation_and_loading_use(tmp_path):
    decay = 0.6
    trainer = make(tmp_path, epochs=1, ema=decay)
    trainer.model.drop.p = 0.0
    history = []
    trainer.on_step.append(lambda tr, logs: history.append(_weights(tr.model).clone()))
    trainer.fit(Toy(), Toy(8))
    ema = history[0]
    for w in history[1:]:
        ema = decay * ema + (1 - decay) * w
    torch.testing.assert_close(_weights(trainer.ema.module), ema)
    state = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert state["ema_count"] == len(history)
    torch.testing.assert_close(torch.cat([v.ravel() for v in state["ema"].values()]), ema)
    with pytest.raises(ValueError, match="train.ema"):
        Trainer(Net(), TrainConfig(ema=1.0, device="cpu"))


def test_constant_schedule_and_bad_schedule(tmp_path):
    trainer = make(tmp_path, epochs=2, schedule="constant")
    hist = trainer.fit(Toy(), None)
    assert all(r["lr"] == pytest.approx(3e-3) for r in hist)
    with pytest.raises(ValueError, match="train.schedule"):
        make(tmp_path, schedule="cyclic").fit(Toy(), None)


def test_cuda_without_a_gpu_is_a_clear_error():
    from physforecast.training.trainer import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")


def test_epoch_lines_when_not_on_a_terminal(tmp_path, capsys):
    make(tmp_path, epochs=2).fit(Toy(), Toy(8))
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("train epoch")]
    assert len(lines) == 2 and "val" in lines[0] and "samples/s" in lines[0] and "ETA" in lines[0]
