"""Key dealing: make a federation's keys in a process of their own.

The parties' secret material and the coordinator's public parameters are written to two
files. Run as ``python -m physforecast.federated.keys SCHEME OPTIONS_JSON PARTY_FILE
COORDINATOR_FILE`` by :func:`~physforecast.federated.runner.run_federated`, so the
coordinator's process never holds the secret key; the party file is created readable by
its owner only. In a real deployment the parties agree on keys out of band (one of them
generates them and hands them to the others over a secure channel); this module plays
that role on one machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .secure import create_scheme

__all__ = ["deal_keys", "deal_keys_in_subprocess", "main"]


def deal_keys(
    scheme: str,
    options: dict[str, Any],
    party_file: str | os.PathLike,
    coordinator_file: str | os.PathLike,
) -> dict[str, Any]:
    """Generate keys and write them; returns the keygen time and the two sizes in bytes."""
    t0 = time.perf_counter()
    keys = create_scheme(scheme, **options).keygen()
    keygen_s = time.perf_counter() - t0
    fd = os.open(party_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(keys.party)
    Path(coordinator_file).write_bytes(keys.coordinator)
    return {
        "keygen_s": keygen_s,
        "party_key_bytes": len(keys.party),
        "coordinator_key_bytes": len(keys.coordinator),
    }


def deal_keys_in_subprocess(
    scheme: str,
    options: dict[str, Any],
    party_file: str | os.PathLike,
    coordinator_file: str | os.PathLike,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """:func:`deal_keys` in a child process; returns its report."""
    cmd = [
        sys.executable,
        "-m",
        "physforecast.federated.keys",
        scheme,
        json.dumps(options),
        os.fspath(party_file),
        os.fspath(coordinator_file),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"key generation for {scheme!r} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``SCHEME OPTIONS_JSON PARTY_FILE COORDINATOR_FILE``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    report = deal_keys(args[0], json.loads(args[1]), args[2], args[3])
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
