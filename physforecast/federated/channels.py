"""Channels that carry :class:`~physforecast.federated.wire.Message` frames.

- :class:`SocketChannel`: a TCP connection on the loopback interface (``127.0.0.1``
  only), each frame preceded by its length as an 8-byte big-endian integer. Used between
  real processes, so the profiler measures real inter-process communication.
- :class:`QueueChannel`: an in-memory pair for the in-process mode (threads); frames are
  still encoded to bytes, so what the coordinator receives is inspected the same way.

Both stamp ``sent_at`` and ``received_at`` on the shared :func:`~physforecast.federated.wire.clock`,
count the bytes of every frame, and can pass each frame to a ``tap`` callable
``tap(direction, frame_bytes, message)`` (``direction`` is ``"sent"`` or ``"received"``),
which the tests use to inspect everything that reached the coordinator.
"""

from __future__ import annotations

import queue
import socket
import struct
from collections.abc import Callable

from .wire import MAX_FRAME_BYTES, Message, clock, decode, encode

__all__ = [
    "LOOPBACK",
    "ChannelClosed",
    "SocketChannel",
    "QueueChannel",
    "listen",
    "accept",
    "connect",
]

#: The only address the federated runtime binds or connects to.
LOOPBACK = "127.0.0.1"
_LEN = struct.Struct(">Q")

Tap = Callable[[str, bytes, Message], None]


class ChannelClosed(ConnectionError):
    """The other end closed the channel (or its process exited)."""


class SocketChannel:
    """Length-prefixed frames over a connected TCP socket.

    Parameters
    ----------
    sock : socket.socket
        A connected socket; the channel owns it.
    tap : callable, optional
        Called with every frame sent and received.
    """

    def __init__(self, sock: socket.socket, tap: Tap | None = None) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.tap = tap
        self.closed = False

    def send(self, msg: Message) -> int:
        """Send ``msg``; returns the bytes written (length prefix included)."""
        if self.closed:
            raise ChannelClosed("send on a closed channel")
        msg.sent_at = clock()
        frame = encode(msg)
        try:
            self.sock.sendall(_LEN.pack(len(frame)))
            self.sock.sendall(frame)
        except OSError as err:
            raise ChannelClosed(f"the peer went away while sending {msg.kind!r}: {err}") from None
        msg.nbytes = len(frame) + _LEN.size
        if self.tap is not None:
            self.tap("sent", frame, msg)
        return msg.nbytes

    def _read(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ChannelClosed("the peer closed the connection")
            got += k
        return buf

    def recv(self, timeout: float | None = None) -> Message:
        """The next message; ``TimeoutError`` when none starts within ``timeout`` seconds.

        Raises
        ------
        ChannelClosed
            The peer closed the connection (or died).
        TimeoutError
            Nothing arrived in time; a frame cut off by the timeout also closes the channel.
        """
        if self.closed:
            raise ChannelClosed("recv on a closed channel")
        self.sock.settimeout(timeout)
        try:
            (size,) = _LEN.unpack(self._read(_LEN.size))
        except TimeoutError:
            raise TimeoutError(f"no message within {timeout} s") from None
        except OSError as err:
            if isinstance(err, ChannelClosed):
                raise
            raise ChannelClosed(f"connection failed: {err}") from None
        if size > MAX_FRAME_BYTES:
            self.close()
            raise ChannelClosed(f"frame of {size} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
        try:
            frame = self._read(size)
        except (TimeoutError, OSError) as err:
            self.close()
            if isinstance(err, ChannelClosed):
                raise
            raise ChannelClosed(f"a frame was cut off: {err}") from None
        msg = decode(frame)
        msg.received_at = clock()
        msg.nbytes = size + _LEN.size
        if self.tap is not None:
            self.tap("received", bytes(frame), msg)
        return msg

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if not self.closed:
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()


class QueueChannel:
    """One end of an in-memory channel pair; build both ends with :meth:`pair`."""

    def __init__(self, inbox: queue.Queue, outbox: queue.Queue, tap: Tap | None = None) -> None:
        self.inbox, self.outbox = inbox, outbox
        self.tap = tap
        self.closed = False

    @classmethod
    def pair(cls, tap_a: Tap | None = None) -> tuple[QueueChannel, QueueChannel]:
        """Two connected ends; ``tap_a`` watches the first end's traffic."""
        a_to_b: queue.Queue = queue.Queue()
        b_to_a: queue.Queue = queue.Queue()
        return cls(b_to_a, a_to_b, tap_a), cls(a_to_b, b_to_a)

    def send(self, msg: Message) -> int:
        """Encode and enqueue ``msg``; returns its size as a socket frame would have."""
        if self.closed:
            raise ChannelClosed("send on a closed channel")
        msg.sent_at = clock()
        frame = encode(msg)
        self.outbox.put(frame)
        msg.nbytes = len(frame) + _LEN.size
        if self.tap is not None:
            self.tap("sent", frame, msg)
        return msg.nbytes

    def recv(self, timeout: float | None = None) -> Message:
        """The next message; ``TimeoutError`` or :class:`ChannelClosed` as for sockets."""
        if self.closed:
            raise ChannelClosed("recv on a closed channel")
        try:
            frame = self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no message within {timeout} s") from None
        if frame is None:
            self.closed = True
            raise ChannelClosed("the peer closed the channel")
        msg = decode(frame)
        msg.received_at = clock()
        msg.nbytes = len(frame) + _LEN.size
        if self.tap is not None:
            self.tap("received", frame, msg)
        return msg

    def close(self) -> None:
        """Tell the other end that this one is gone (idempotent)."""
        if not self.closed:
            self.closed = True
            self.outbox.put(None)


def listen(port: int = 0, backlog: int = 64) -> socket.socket:
    """A listening TCP socket on ``127.0.0.1`` (``port=0``: a free port; read ``getsockname()``)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((LOOPBACK, int(port)))
    server.listen(backlog)
    return server


def accept(server: socket.socket, timeout: float, tap: Tap | None = None) -> SocketChannel:
    """Accept one connection within ``timeout`` seconds; ``TimeoutError`` otherwise."""
    server.settimeout(timeout)
    try:
        conn, addr = server.accept()
    except TimeoutError:
        raise TimeoutError(f"no party connected within {timeout} s") from None
    if addr[0] != LOOPBACK:
        conn.close()
        raise ConnectionError(f"refused a connection from {addr[0]}: only {LOOPBACK} is accepted")
    conn.settimeout(None)
    return SocketChannel(conn, tap)


def connect(port: int, timeout: float = 30.0) -> SocketChannel:
    """Connect to the coordinator listening on ``127.0.0.1:port``."""
    sock = socket.create_connection((LOOPBACK, int(port)), timeout=timeout)
    sock.settimeout(None)
    return SocketChannel(sock)
