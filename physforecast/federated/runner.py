"""Run a federation: parties as real processes on 127.0.0.1, or as threads in-process.

:func:`run_federated` is the one entry point. With ``processes=True`` (the default) it

1. deals the keys in a child process (:mod:`~physforecast.federated.keys`): a party key
   file (secret, mode 0600) and a coordinator key file (public parameters);
2. listens on ``127.0.0.1`` and starts one ``python -m physforecast.federated.party``
   process per dataset file; each opens only its own file;
3. acts as the coordinator (it reads only the coordinator key file): setup, ``rounds``
   rounds of local training and secure aggregation, then fine-tuning on the target
   parties and a scorecard per party;
4. writes the cost profile and a run summary, and stops every process it started.

With ``processes=False`` the parties run as threads of this process over in-memory
channels (same messages, same bytes), which is what most tests use.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import files
from .channels import QueueChannel, accept, listen
from .coordinator import Coordinator, FederatedRoundError
from .network import network
from .profile import RunProfile
from .secure import SCHEMES, create_scheme
from .sharing import SHARING
from .wire import Message

__all__ = ["FederatedConfig", "FederatedResult", "run_federated", "party_names"]


@dataclass
class FederatedConfig:
    """Settings of a federated run.

    Attributes
    ----------
    backbone : str
        Backbone name (``physforecast list backbones``); every party builds the same one
        from ``seed``.
    backbone_options : dict
        Its options (``hidden``, ``padding_mode``...).
    variables : list of str, optional
        Forecast variables; default: every variable with a time dim.
    in_steps, out_steps : int
        ``T_in`` and ``T_out``.
    split : tuple of float
        Train / validation / test fractions of each party's trajectories.
    split_seed : int
        Seed of the splits.
    sharing : str
        ``"transfer"`` (encoder trunk shared, heads local) or ``"fedavg"`` (everything).
    scheme : str
        ``"ckks"``, ``"paillier"``, ``"masking"`` or ``"none"``.
    scheme_options : dict
        Options of the scheme (``key_bits``, ``poly_modulus_degree``...).
    rounds : int
        Federated rounds.
    local_steps : int
        Optimisation steps per party per round.
    batch_size : int
        Windows per step.
    lr : float
        Learning rate of the rounds.
    finetune_steps : int
        Steps of target-side fine-tuning after the rounds (0: none).
    finetune_lr : float
        Its learning rate.
    seed : int
        Seed of the model initialisation and of the sampling order.
    round_timeout : float
        Seconds a party may take to answer within a round.
    setup_timeout : float
        Seconds for a party to start, load its data, and to fine-tune and score at the end.
    on_dropout : {"fail", "proceed"}
        What a dropout does to the round.
    min_parties : int
        Fewest parties a round may aggregate.
    networks : tuple of str
        Network presets for the WAN estimates.
    party_threads : int
        Torch threads per party process.
    """

    backbone: str = "unet"
    backbone_options: dict[str, Any] = field(
        default_factory=lambda: {"hidden": 8, "padding_mode": "circular"}
    )
    variables: list[str] | None = None
    in_steps: int = 2
    out_steps: int = 2
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_seed: int = 0
    sharing: str = "transfer"
    scheme: str = "ckks"
    scheme_options: dict[str, Any] = field(default_factory=dict)
    rounds: int = 5
    local_steps: int = 10
    batch_size: int = 8
    lr: float = 2e-3
    finetune_steps: int = 30
    finetune_lr: float = 1e-3
    seed: int = 0
    round_timeout: float = 120.0
    setup_timeout: float = 600.0
    on_dropout: str = "fail"
    min_parties: int = 2
    networks: tuple[str, ...] = ("lan", "wan", "intercontinental")
    party_threads: int = 1

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the first bad setting."""
        SCHEMES.entry(self.scheme)
        SHARING.entry(self.sharing)
        for name in self.networks:
            network(name)
        for key in ("rounds", "local_steps", "batch_size", "min_parties"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1; got {getattr(self, key)}")
        if self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be >= 0; got {self.finetune_steps}")
        if self.on_dropout not in ("fail", "proceed"):
            raise ValueError(f"on_dropout must be 'fail' or 'proceed'; got {self.on_dropout!r}")
        if self.round_timeout <= 0 or self.setup_timeout <= 0:
            raise ValueError("round_timeout and setup_timeout must be positive")

    def party_config(self) -> dict[str, Any]:
        """What the coordinator sends every party at setup (no data, no keys)."""
        return {
            "model": {
                "backbone": self.backbone,
                "options": dict(self.backbone_options),
                "in_steps": self.in_steps,
                "out_steps": self.out_steps,
                "seed": self.seed,
            },
            "variables": list(self.variables) if self.variables else None,
            "split": list(self.split),
            "split_seed": self.split_seed,
            "sharing": self.sharing,
            "scheme": {"name": self.scheme, "options": dict(self.scheme_options)},
            "local_steps": self.local_steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "seed": self.seed,
        }


@dataclass
class FederatedResult:
    """What a federated run produced.

    Attributes
    ----------
    parties : dict
        Party name -> its ``result`` (role, ``test_rmse``, window counts, files written).
    profile : RunProfile
        The cost profile.
    dropped : dict
        Party name -> why it dropped out.
    out : Path or None
        The output directory.
    """

    parties: dict[str, dict[str, Any]]
    profile: RunProfile
    dropped: dict[str, str]
    out: Path | None

    def rmse(self, name: str) -> float:
        """Test RMSE of party ``name``."""
        return float(self.parties[name]["test_rmse"])


def party_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Party names from file names (their stems); a ``ValueError`` on duplicates."""
    names = [Path(p).stem for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"party files must have distinct names; {dupes} appear more than once")
    return names


Tap = Callable[[str, bytes, Message], None]


def run_federated(
    parties: Sequence[str | os.PathLike],
    targets: Sequence[str | os.PathLike],
    config: FederatedConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    processes: bool = True,
    faults: Mapping[str, str] | None = None,
    tap: Tap | None = None,
    progress: bool = False,
) -> FederatedResult:
    """Run federated (transfer) learning over one dataset file per party.

    Parameters
    ----------
    parties : sequence of path
        One dataset file per party (same variables and grid); names are the file stems.
    targets : sequence of path
        The data-poor target parties (a subset of ``parties``); they fine-tune at the end.
        The others are sources.
    config : FederatedConfig, optional
        Defaults: U-Net, CKKS, transfer sharing, 5 rounds.
    out : path, optional
        Output directory (per-party scorecards, profile); nothing is written when omitted.
    processes : bool
        Real processes over 127.0.0.1 sockets (True) or threads over in-memory channels.
    faults : dict, optional
        Party name -> ``"exit:ROUND"`` or ``"hang:ROUND"``: that party dies (or stops
        answering) just before uploading in that round. For testing dropout handling.
    tap : callable, optional
        ``tap(direction, frame, message)`` for every frame at the coordinator's end.
    progress : bool
        Show a progress bar over rounds.

    Returns
    -------
    FederatedResult

    Raises
    ------
    FederatedRoundError
        A party dropped out (``on_dropout="fail"``) or too few remain; every party
        process has been stopped and the saved global model is the last complete round's.
    """
    config = config or FederatedConfig()
    config.validate()
    paths = [os.fspath(p) for p in parties]
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"party dataset {p!r} does not exist")
    names = party_names(paths)
    if len(names) < config.min_parties:
        raise ValueError(
            f"need at least min_parties={config.min_parties} parties; got {len(names)}"
        )
    target_names = party_names(targets)
    unknown = [t for t in target_names if t not in names]
    if unknown or not target_names:
        raise ValueError(
            f"targets {unknown or '(none)'} must be among the parties {names}; pass --target "
            "with one of the --parties files"
        )
    roles = {n: "target" if n in target_names else "source" for n in names}
    scheme = create_scheme(config.scheme, **config.scheme_options)
    out_dir = Path(out) if out is not None else None
    faults = dict(faults or {})
    with tempfile.TemporaryDirectory(prefix="physforecast-keys-") as key_dir:
        launch = _launch_processes if processes else _launch_threads
        with launch(names, paths, scheme, config, key_dir, out_dir, faults, tap) as session:
            session.progress = progress
            result = _drive(session, scheme, config, roles)
    if out_dir is not None:
        _write_run(out_dir, result, config, roles, paths)
    return result


# -- sessions: who the coordinator talks to -----------------------------------------------
class _Session:
    """Connected channels, the coordinator key, setup costs, and how to stop the parties."""

    def __init__(self) -> None:
        self.channels: dict[str, Any] = {}
        self.coordinator_key = b""
        self.setup: dict[str, Any] = {}
        self.describe: Callable[[str], str] = lambda name: ""
        self._stop: list[Callable[[], None]] = []
        self.progress = False

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        for ch in self.channels.values():
            ch.close()
        for stop in self._stop:
            stop()


def _hello(channel: Any, timeout: float) -> str:
    msg = channel.recv(timeout)
    if msg.kind != "hello":
        raise ConnectionError(f"expected a 'hello' from a new party, got {msg.kind!r}")
    return str(msg.meta["name"])


def _launch_processes(names, paths, scheme, config, key_dir, out_dir, faults, tap) -> _Session:
    from .keys import deal_keys_in_subprocess

    session = _Session()
    party_key = Path(key_dir) / "party.key"
    coord_key = Path(key_dir) / "coordinator.key"
    session.setup = deal_keys_in_subprocess(
        config.scheme, config.scheme_options, party_key, coord_key, timeout=config.setup_timeout
    )
    session.coordinator_key = coord_key.read_bytes()
    server = listen()
    port = server.getsockname()[1]
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    log_root = Path(key_dir) / "logs"
    try:
        for name, path in zip(names, paths):
            pdir = files.party_dir(out_dir, name) if out_dir is not None else None
            log = files.party_log_path(pdir) if pdir is not None else log_root / f"{name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            logs[name] = log
            cmd = [
                sys.executable,
                "-m",
                "physforecast.federated.party",
                "--port",
                str(port),
                "--name",
                name,
                "--data",
                path,
                "--keys",
                str(party_key),
                "--threads",
                str(config.party_threads),
                "--idle-timeout",
                str(config.setup_timeout + config.round_timeout),
            ]
            if pdir is not None:
                cmd += ["--out", str(pdir)]
            if name in faults:
                cmd += ["--fault", faults[name]]
            with open(log, "wb") as fh:
                procs[name] = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)

        def describe(name: str) -> str:
            proc = procs.get(name)
            if proc is None:
                return ""
            try:
                code = proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                return "its process is still running"
            tail = logs[name].read_text(errors="replace").strip().splitlines()[-3:]
            return f"its process exited with code {code}" + (
                f" ({' | '.join(tail)})" if tail else ""
            )

        session.describe = describe

        def stop() -> None:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            server.close()

        session._stop.append(stop)
        for _ in names:
            try:
                channel = accept(server, config.setup_timeout, tap)
            except TimeoutError:
                dead = {n: describe(n) for n, p in procs.items() if p.poll() is not None}
                raise FederatedRoundError(
                    f"not every party connected within setup_timeout={config.setup_timeout:g} s"
                    + (f"; exited: {dead}" if dead else "")
                ) from None
            session.channels[_hello(channel, config.setup_timeout)] = channel
    except BaseException:
        session.__exit__(None, None, None)
        raise
    return session


class _InjectedCrash(ConnectionAbortedError):
    """A fault injected into an in-process party."""


def _launch_threads(names, paths, scheme, config, key_dir, out_dir, faults, tap) -> _Session:
    import time

    from physforecast.registry import BACKBONES, METRICS

    from .party import Party

    # Registry population is not thread-safe: fill them before the party threads start
    BACKBONES.names()
    METRICS.names()
    session = _Session()
    t0 = time.perf_counter()
    keys = scheme.keygen()
    session.setup = {
        "keygen_s": time.perf_counter() - t0,
        "party_key_bytes": len(keys.party),
        "coordinator_key_bytes": len(keys.coordinator),
    }
    session.coordinator_key = keys.coordinator
    release = threading.Event()

    def thread_fault(spec: str) -> Callable[[int], None]:
        kind, _, at = spec.partition(":")

        def fault(r: int) -> None:
            if r != int(at):
                return
            if kind == "hang":
                release.wait()
            raise _InjectedCrash(f"injected fault {spec!r}")

        return fault

    threads = []
    errors: dict[str, str] = {}
    session.describe = lambda name: errors.get(name, "")
    for name, path in zip(names, paths):
        coord_end, party_end = QueueChannel.pair(tap)
        pdir = files.party_dir(out_dir, name) if out_dir is not None else None
        party = Party(
            name,
            path,
            keys.party,
            party_end,
            out_dir=pdir,
            fault=thread_fault(faults[name]) if name in faults else None,
        )

        def serve(party: Party = party) -> None:
            try:
                party.serve(config.setup_timeout + config.round_timeout)
            except Exception as err:  # the coordinator sees the closed channel
                errors[party.name] = f"it raised {type(err).__name__}: {err}"

        t = threading.Thread(target=serve, name=f"party-{name}", daemon=True)
        t.start()
        threads.append(t)
        session.channels[_hello(coord_end, config.setup_timeout)] = coord_end

    def stop() -> None:
        release.set()
        for t in threads:
            t.join(timeout=30)

    session._stop.append(stop)
    return session


# -- the coordinator's part ------------------------------------------------------------------
def _drive(session: _Session, scheme, config: FederatedConfig, roles) -> FederatedResult:
    networks = {n: network(n) for n in config.networks}
    coord = Coordinator(
        session.channels,
        scheme,
        scheme.aggregator(session.coordinator_key),
        round_timeout=config.round_timeout,
        setup_timeout=config.setup_timeout,
        on_dropout=config.on_dropout,
        min_parties=config.min_parties,
        networks=networks,
        describe_dropout=session.describe,
    )
    info = coord.setup(config.party_config(), roles)
    first = next(iter(info.values()))
    profile = RunProfile(
        scheme=scheme.describe(),
        model={
            "backbone": config.backbone,
            "options": dict(config.backbone_options),
            "sharing": config.sharing,
            "n_params": first["n_params"],
            "n_shared": first["n_shared"],
        },
        setup={**session.setup, "parties": {n: {"setup_s": m["setup_s"]} for n, m in info.items()}},
        networks={n: m.to_dict() for n, m in networks.items()},
    )
    try:
        for r in tqdm(
            range(1, config.rounds + 1), desc="federated rounds", disable=not session.progress
        ):
            profile.rounds.append(coord.run_round(r))
        results = coord.finish(config.finetune_steps, config.finetune_lr)
    except FederatedRoundError as err:
        err.profile = profile  # the rounds that did complete
        raise
    return FederatedResult(results, profile, dict(coord.dropped), None)


def _write_run(out: Path, result: FederatedResult, config, roles, paths) -> None:
    from .report import profile_figure, profile_markdown

    result.out = out
    files.write_json(files.profile_json_path(out), result.profile.to_dict())
    files.write_text(files.profile_markdown_path(out), profile_markdown({"run": result.profile}))
    fig = profile_figure({"run": result.profile})
    files.atomic_write(
        files.profile_plot_path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=110)
    )
    files.write_json(
        files.run_summary_path(out),
        {
            "config": asdict(config),
            "roles": roles,
            "files": dict(zip(party_names(paths), paths)),
            "parties": result.parties,
            "dropped": result.dropped,
            "setup": result.profile.setup,
        },
    )
