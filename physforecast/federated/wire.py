"""Messages between the coordinator and the parties, and their byte format.

A :class:`Message` is a kind (``"round"``, ``"update"``...), a small JSON ``meta`` dict and
a list of binary ``blobs`` (ciphertexts, encoded vectors). Nothing is pickled: a frame is ::

    b"PFM1" | uint32 header length | header (UTF-8 JSON) | blob 0 | blob 1 | ...

where the header holds ``kind``, ``meta``, the blob sizes and ``sent_at``, the sender's
:func:`clock` reading when it started sending. :func:`clock` is ``time.monotonic``, one
system-wide clock shared by every process on the machine, so the receiver can measure
how long a message was in flight (the IPC time of the cost profiler).
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Message", "WireError", "encode", "decode", "clock", "MAX_FRAME_BYTES"]

MAGIC = b"PFM1"
_HEAD = struct.Struct(">4sI")
#: Largest frame accepted (16 GiB): a corrupted length prefix fails fast instead of allocating.
MAX_FRAME_BYTES = 1 << 34


class WireError(ValueError):
    """A frame that is not a physforecast federated message."""


def clock() -> float:
    """Seconds on the system-wide monotonic clock (comparable across local processes)."""
    return time.monotonic()


@dataclass
class Message:
    """One message.

    Attributes
    ----------
    kind : str
        What the message is (``"hello"``, ``"round"``, ``"update"``, ``"aggregate"``...).
    meta : dict
        JSON-serialisable metadata (round number, timings, counts); never tensors.
    blobs : list of bytes
        Binary payloads (serialised ciphertexts).
    sent_at : float
        Sender's :func:`clock` when sending began (set by the channel).
    received_at : float
        Receiver's :func:`clock` when the whole frame had arrived (not on the wire).
    nbytes : int
        Size of the frame on the wire, length prefix included (set by the channel).
    """

    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    blobs: list[bytes] = field(default_factory=list)
    sent_at: float = 0.0
    received_at: float = 0.0
    nbytes: int = 0

    @property
    def payload_bytes(self) -> int:
        """Bytes of all blobs."""
        return sum(len(b) for b in self.blobs)


def encode(msg: Message) -> bytes:
    """The frame of ``msg`` (without the channel's length prefix)."""
    header = json.dumps(
        {
            "kind": msg.kind,
            "meta": msg.meta,
            "blobs": [len(b) for b in msg.blobs],
            "sent_at": msg.sent_at,
        },
        separators=(",", ":"),
    ).encode()
    return b"".join([_HEAD.pack(MAGIC, len(header)), header, *msg.blobs])


def decode(frame: bytes | bytearray | memoryview) -> Message:
    """Parse a frame written by :func:`encode`; a :class:`WireError` when it is malformed."""
    view = memoryview(frame)
    if len(view) < _HEAD.size:
        raise WireError(f"frame of {len(view)} bytes is shorter than the {_HEAD.size}-byte header")
    magic, size = _HEAD.unpack_from(view)
    if magic != MAGIC:
        raise WireError(f"bad magic {bytes(magic)!r}: not a physforecast federated message")
    start = _HEAD.size + size
    if start > len(view):
        raise WireError(f"header of {size} bytes runs past the frame ({len(view)} bytes)")
    try:
        header = json.loads(bytes(view[_HEAD.size : start]))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WireError(f"unreadable message header: {err}") from None
    blobs, offset = [], start
    for n in header["blobs"]:
        if offset + n > len(view):
            raise WireError("blob sizes in the header run past the end of the frame")
        blobs.append(bytes(view[offset : offset + n]))
        offset += n
    if offset != len(view):
        raise WireError(f"{len(view) - offset} trailing bytes after the last blob")
    return Message(header["kind"], header["meta"], blobs, float(header["sent_at"]))
