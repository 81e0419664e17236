"""A party: holds one dataset, trains locally, uploads encrypted updates.

A party talks to the coordinator over one channel and answers its messages:

============  =============================================================================
received      what the party does, and its reply
============  =============================================================================
setup         opens its own file, builds the model from the shared seed and sharing plan,
              loads the party key; replies ``ready`` (window counts, parameter counts)
round         trains ``local_steps`` steps, encrypts ``[w * delta, w]`` (``delta`` = its
              shared weights minus the last global ones, ``w`` its FedAvg weight); ``update``
reupload      encrypts the same vector again for a new participant set (after a dropout,
              for schemes whose aggregate needs exactly the announced uploads); ``update``
aggregate     decrypts the sum, sets shared = global + sum[:-1] / sum[-1], saves
              ``global.pt`` atomically; ``ack``
abort         restores the last global shared weights and stops (nothing written)
finish        fine-tunes (target parties), forecasts its test split, writes its scorecard;
              ``result``
============  =============================================================================

``update`` and ``ack`` carry the party's own timings (compute, encrypt, serialise,
decrypt) for the cost profiler; nothing of the data or of the plaintext update leaves
the party. Run as a process with ``python -m physforecast.federated.party``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import files
from .channels import ChannelClosed, connect
from .secure import RoundContext, create_scheme
from .sharing import get_vector, set_vector, shared_names
from .wire import Message, WireError, clock

__all__ = ["Party", "FAULTS", "main"]


class _Stop(Exception):
    """Internal: the party's conversation is over."""


class Party:
    """One party of a federation.

    Parameters
    ----------
    name : str
        Its name (unique in the federation).
    data_path : path
        Its own dataset file; the only data it reads.
    key : bytes
        The parties' key material (:attr:`~physforecast.federated.secure.KeyMaterial.party`).
    channel : SocketChannel or QueueChannel
        Its connection to the coordinator.
    out_dir : path, optional
        Its directory (scorecard, checkpoints); nothing is written when omitted.
    fault : callable, optional
        ``fault(round)`` called just before uploading each round's update: fault
        injection for testing how the coordinator handles a party that dies or hangs.
    """

    def __init__(
        self,
        name: str,
        data_path: str | os.PathLike,
        key: bytes,
        channel: Any,
        *,
        out_dir: str | os.PathLike | None = None,
        fault: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.data_path = os.fspath(data_path)
        self.key = key
        self.channel = channel
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.fault = fault
        self.global_vector: np.ndarray | None = None
        self.committed_round = 0
        self._pending: tuple[int, np.ndarray] | None = None
        self._handlers: dict[str, Callable[[Message], None]] = {
            "setup": self._setup,
            "round": self._round,
            "reupload": self._reupload,
            "aggregate": self._aggregate,
            "abort": self._abort,
            "finish": self._finish,
        }

    # -- the conversation ----------------------------------------------------------
    def serve(self, idle_timeout: float = 600.0) -> None:
        """Say hello, then answer messages until ``finish`` or ``abort``.

        Raises
        ------
        TimeoutError
            No message from the coordinator for ``idle_timeout`` seconds.
        ChannelClosed
            The coordinator went away.
        """
        self.channel.send(Message("hello", {"name": self.name}))
        try:
            while True:
                msg = self.channel.recv(idle_timeout)
                handler = self._handlers.get(msg.kind)
                if handler is None:
                    raise WireError(f"party {self.name!r} got an unknown message {msg.kind!r}")
                handler(msg)
        except _Stop:
            pass
        finally:
            self.channel.close()

    def _setup(self, msg: Message) -> None:
        from .local import LocalTrainer, build_model, load_local_data

        t0 = clock()
        cfg = msg.meta["config"]
        self.role = str(msg.meta["role"])
        self.cfg = cfg
        self.data = load_local_data(
            self.data_path,
            variables=cfg["variables"],
            in_steps=cfg["model"]["in_steps"],
            out_steps=cfg["model"]["out_steps"],
            split=cfg["split"],
            seed=cfg["split_seed"],
        )
        self.model = build_model(cfg["model"], self.data.channels)
        example = self.data.train[0]["x"][None]
        self.shared = shared_names(cfg["sharing"], self.model, example)
        scheme = create_scheme(cfg["scheme"]["name"], **cfg["scheme"].get("options", {}))
        self.cipher = scheme.party(self.key)
        self.trainer = LocalTrainer(
            self.model,
            self.data.train_samples,
            lr=cfg["lr"],
            batch_size=cfg["batch_size"],
            seed=cfg["seed"],
        )
        self.global_vector = get_vector(self.model, self.shared)
        self._save_global()
        n_params = sum(p.numel() for p in self.model.parameters())
        self.channel.send(
            Message(
                "ready",
                {
                    "name": self.name,
                    "variables": self.data.variables,
                    "n_train": len(self.data.train),
                    "n_val": len(self.data.val),
                    "n_test": len(self.data.test),
                    "n_params": int(n_params),
                    "n_shared": int(self.global_vector.size),
                    # the initial shared weights come from the public seed: their digest
                    # lets the coordinator check that every party starts from the same ones
                    "initial_digest": hashlib.sha256(self.global_vector.tobytes()).hexdigest(),
                    "setup_s": clock() - t0,
                },
            )
        )

    def _round(self, msg: Message) -> None:
        r = int(msg.meta["round"])
        t0 = clock()
        loss = self.trainer.run(int(self.cfg["local_steps"]))
        assert self.global_vector is not None
        delta = get_vector(self.model, self.shared) - self.global_vector
        weight = float(msg.meta["weight"])
        values = np.concatenate([weight * delta, [weight]])
        t1 = clock()
        self._pending = (r, values)
        self._upload(msg, r, tuple(msg.meta["participants"]), {"compute": t1 - t0, "loss": loss})

    def _reupload(self, msg: Message) -> None:
        r = int(msg.meta["round"])
        if self._pending is None or self._pending[0] != r:
            raise WireError(f"party {self.name!r}: reupload for round {r} without an update")
        self._upload(msg, r, tuple(msg.meta["participants"]), {"compute": 0.0})

    def _upload(self, trigger: Message, r: int, participants: tuple, timing: dict) -> None:
        assert self._pending is not None
        values = self._pending[1]
        t1 = clock()
        attempt = int(trigger.meta.get("attempt", 0))
        ct = self.cipher.encrypt(values, RoundContext(r, self.name, participants, attempt))
        t2 = clock()
        blobs = self.cipher.serialize(ct)
        t3 = clock()
        if self.fault is not None:
            self.fault(r)
        self.channel.send(
            Message(
                "update",
                {
                    "round": r,
                    "name": self.name,
                    "n_values": int(values.size),
                    "plain_bytes": 4 * int(values.size),
                    "trigger": trigger.kind,
                    "attempt": attempt,
                    "received_at": trigger.received_at,
                    "trigger_sent_at": trigger.sent_at,
                    "timing": {**timing, "encrypt": t2 - t1, "serialise": t3 - t2},
                },
                blobs,
            )
        )

    def _aggregate(self, msg: Message) -> None:
        r = int(msg.meta["round"])
        t0 = clock()
        ct = self.cipher.deserialize(msg.blobs)
        t1 = clock()
        total = self.cipher.decrypt(ct, int(msg.meta["n_values"]), int(msg.meta["n_summed"]))
        t2 = clock()
        weight = float(total[-1])
        if not weight > 0:
            raise WireError(f"round {r}: the aggregate's total weight is {weight}; expected > 0")
        assert self.global_vector is not None
        self.global_vector = self.global_vector + total[:-1] / weight
        set_vector(self.model, self.shared, self.global_vector)
        self.committed_round = r
        self._pending = None
        self._save_global()
        t3 = clock()
        self.channel.send(
            Message(
                "ack",
                {
                    "round": r,
                    "name": self.name,
                    "received_at": msg.received_at,
                    "timing": {"serialise": t1 - t0, "decrypt": t2 - t1, "compute": t3 - t2},
                },
            )
        )

    def _abort(self, msg: Message) -> None:
        if self.global_vector is not None:
            set_vector(self.model, self.shared, self.global_vector)
        raise _Stop

    def _finish(self, msg: Message) -> None:
        from .local import forecast_test, overall_rmse

        t0 = clock()
        steps = int(msg.meta["finetune_steps"]) if self.role == "target" else 0
        if steps:
            self.trainer.set_lr(float(msg.meta["finetune_lr"]))
            self.trainer.run(steps)
        t1 = clock()
        forecast, truth = forecast_test(self.model, self.data)
        rmse = overall_rmse(forecast, truth, self.data.variables)
        written = self._write_results(forecast, truth, rmse, steps)
        t2 = clock()
        self.channel.send(
            Message(
                "result",
                {
                    "name": self.name,
                    "role": self.role,
                    "test_rmse": rmse,
                    "n_train": len(self.data.train),
                    "n_test": len(self.data.test),
                    "finetune_steps": steps,
                    "finetune_s": t1 - t0,
                    "evaluate_s": t2 - t1,
                    "committed_round": self.committed_round,
                    "files": written,
                },
            )
        )
        raise _Stop

    # -- files -----------------------------------------------------------------------
    def _save_global(self) -> None:
        if self.out_dir is None or self.global_vector is None:
            return
        import torch

        from physforecast.checkpoint import save_checkpoint

        save_checkpoint(
            {
                "round": self.committed_round,
                "shared": torch.from_numpy(self.global_vector.copy()),
                "names": list(self.shared),
            },
            files.global_checkpoint_path(self.out_dir),
        )

    def _write_results(self, forecast: Any, truth: Any, rmse: float, steps: int) -> list[str]:
        if self.out_dir is None:
            return []
        from physforecast.checkpoint import save_checkpoint
        from physforecast.metrics import score, write_scorecard

        card = score(forecast, truth)
        with files.HDF5_LOCK:  # other parties may be threads of this process
            paths = list(write_scorecard(card, self.out_dir))
        norm_path = files.party_normalization_path(self.out_dir)
        files.atomic_write(norm_path, lambda tmp: _save_normalizer(self.data.normalizer, tmp))
        model_path = save_checkpoint(
            {"model": self.model.state_dict(), "config": _json(self.cfg["model"])},
            files.model_checkpoint_path(self.out_dir),
        )
        summary = files.write_json(
            files.party_summary_path(self.out_dir),
            {
                "name": self.name,
                "role": self.role,
                "data": self.data_path,
                "variables": self.data.variables,
                "n_train": len(self.data.train),
                "n_val": len(self.data.val),
                "n_test": len(self.data.test),
                "shared_parameters": int(self.global_vector.size)
                if self.global_vector is not None
                else 0,
                "finetune_steps": steps,
                "committed_round": self.committed_round,
                "test_rmse": rmse,
            },
        )
        return [str(p) for p in (*paths, norm_path, model_path, summary)]


def _save_normalizer(normalizer: Any, tmp: str) -> None:
    import json

    Path(tmp).write_text(json.dumps(normalizer.to_dict(), indent=2))


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


# -- fault injection (for tests of dropout handling) ---------------------------------
def _exit_now(round: int) -> None:
    os._exit(3)


def _hang(round: int) -> None:
    time.sleep(3600)


#: Faults a party process can be started with (``--fault KIND:ROUND``).
FAULTS: dict[str, Callable[[int], None]] = {"exit": _exit_now, "hang": _hang}


def _fault_from(spec: str | None) -> Callable[[int], None] | None:
    if not spec:
        return None
    kind, _, at = spec.partition(":")
    if kind not in FAULTS or not at.isdigit():
        raise SystemExit(f"--fault must be KIND:ROUND with KIND in {sorted(FAULTS)}; got {spec!r}")
    action, at_round = FAULTS[kind], int(at)

    def fault(round: int) -> None:
        if round == at_round:
            action(round)

    return fault


def main(argv: list[str] | None = None) -> int:
    """Entry point of a party process (started by :func:`~physforecast.federated.runner.run_federated`)."""
    p = argparse.ArgumentParser(prog="python -m physforecast.federated.party")
    p.add_argument("--port", type=int, required=True, help="coordinator port on 127.0.0.1")
    p.add_argument("--name", required=True)
    p.add_argument("--data", required=True, help="this party's dataset file")
    p.add_argument("--keys", required=True, help="file with the parties' key material")
    p.add_argument("--out", help="this party's output directory")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--idle-timeout", type=float, default=600.0)
    p.add_argument("--fault", help="fault injection for tests: exit:ROUND or hang:ROUND")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    key = Path(args.keys).read_bytes()
    channel = connect(args.port)
    party = Party(
        args.name, args.data, key, channel, out_dir=args.out, fault=_fault_from(args.fault)
    )
    try:
        party.serve(args.idle_timeout)
    except (ChannelClosed, TimeoutError) as err:
        print(f"party {args.name}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
