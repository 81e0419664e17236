"""Messages and channels: the byte format, loopback sockets, timeouts, closed peers."""

from __future__ import annotations

import threading

import pytest

from physforecast.federated.channels import (
    LOOPBACK,
    ChannelClosed,
    QueueChannel,
    accept,
    connect,
    listen,
)
from physforecast.federated.wire import Message, WireError, decode, encode


def test_frame_round_trip_keeps_kind_meta_and_blobs():
    msg = Message("update", {"round": 3, "timing": {"encrypt": 0.5}}, [b"\x00\x01", b"", b"xyz"])
    msg.sent_at = 12.5
    back = decode(encode(msg))
    assert (back.kind, back.meta, back.blobs, back.sent_at) == (
        "update",
        {"round": 3, "timing": {"encrypt": 0.5}},
        [b"\x00\x01", b"", b"xyz"],
        12.5,
    )


@pytest.mark.parametrize(
    "frame, problem",
    [
        (b"XXXX\x00\x00\x00\x02{}", "bad magic"),
        (b"PFM1\x00\x00\x00\xff{}", "runs past"),
        (encode(Message("a", {}, [b"abc"]))[:-1], "run past"),
        (encode(Message("a")) + b"!", "trailing"),
    ],
)
def test_malformed_frames_are_refused_with_the_reason(frame, problem):
    with pytest.raises(WireError, match=problem):
        decode(frame)


def test_loopback_socket_carries_frames_and_stamps_sizes_and_times():
    server = listen()
    host, port = server.getsockname()
    assert host == LOOPBACK
    seen = []
    box = {}
    t = threading.Thread(
        target=lambda: box.setdefault(
            "ch", accept(server, 10, tap=lambda d, f, m: seen.append((d, len(f))))
        )
    )
    t.start()
    client = connect(port)
    t.join(10)
    coordinator = box["ch"]
    blob = bytes(range(256)) * 4000  # ~1 MB: several socket reads
    sent = client.send(Message("update", {"round": 1}, [blob]))
    got = coordinator.recv(timeout=10)
    assert got.blobs == [blob] and got.nbytes == sent
    assert got.received_at >= got.sent_at > 0
    assert seen == [("received", sent - 8)]
    with pytest.raises(TimeoutError):
        coordinator.recv(timeout=0.05)
    client.close()
    with pytest.raises(ChannelClosed):
        coordinator.recv(timeout=5)
    server.close()


def test_queue_channel_reports_timeouts_and_a_closed_peer():
    a, b = QueueChannel.pair()
    a.send(Message("hello", {"name": "x"}))
    assert b.recv(1).meta == {"name": "x"}
    with pytest.raises(TimeoutError):
        b.recv(0.01)
    a.close()
    with pytest.raises(ChannelClosed):
        b.recv(1)
