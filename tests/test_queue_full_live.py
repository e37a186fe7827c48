"""``--queue-full disconnect`` against a real ``twistd`` broker: a v5 subscriber that
never reads is closed once its queue overflows (counted under
``$SYS/broker/limits/queue_full``); a subscriber that reads gets every message, and a
bad value is a one-line usage error (tests/test_twistd_run.py; docs/limits.md)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from mqtt_twisted.codec import Publish, Subscribe, Subscription, encode
from tests.livebroker import LiveBroker, connect, sys_value

COUNT, SIZE = 20_000, 1024


def test_a_subscriber_that_never_reads_is_closed(tmp_path: Path) -> None:
    broker = LiveBroker(tmp_path, "--queue-full", "disconnect",
                        "--sys-interval", "1")
    try:
        slow = connect(broker.port, "slow", version=5)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(encode(Subscribe(1, [Subscription("t", 1)]), 5))
        reader = connect(broker.port, "reader")
        reader.sendall(encode(Subscribe(1, [Subscription("t", 0)])))
        assert reader.recv(5)[:1] == b"\x90"
        pub = connect(broker.port, "pub")
        flood = encode(Publish("t", bytes(SIZE)), 4) * COUNT
        threading.Thread(target=pub.sendall, args=(flood,), daemon=True).start()
        expected, got = COUNT * len(encode(Publish("t", bytes(SIZE)), 4)), 0
        reader.settimeout(10)
        while got < expected:
            data = reader.recv(1 << 20)
            assert data, broker.log()[-2000:]  # the reader was cut off
            got += len(data)
        assert got == expected
        slow.settimeout(20)  # closed: what it did not read, then its end (or a reset:
        try:               # the broker aborts a socket still full after its close grace)
            while slow.recv(1 << 16):
                pass
        except ConnectionResetError:
            pass
        assert sys_value(broker.port, "limits/queue_full") == "1"
        assert "queue full" in broker.log()
    finally:
        broker.stop()
