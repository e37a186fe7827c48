"""Issue 14's stall chain against a real ``twistd`` broker: an attacker connects a new
subscriber that never reads every 2 s while a publisher floods its topic.  Each new
congested subscriber used to pause the publishers routed to it for a fresh 2 s grace:
330,700 messages got through in 30 s (Mosquitto: 4,994,800), 13 of the 30 seconds at
zero, bystander p50 781 ms.  Flow control's hold budget per publisher
(core/flow.py) bounds what the chain can take (docs/limits.md)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from mqtt_twisted.codec import Connect, Publish, Subscribe, Subscription, encode
from tests.livebroker import Bystander, LiveBroker, connect, judge

SECONDS = 12


@pytest.mark.slow
@pytest.mark.timing
def test_stall_chain_keeps_the_publisher_going(tmp_path: Path) -> None:
    """A new non-reading subscriber every 2 s for 12 s: a subscriber that keeps up gets
    more than the issue's 11,000 messages a second of the flood (330,700 in 30 s), never
    a second at zero more than twice in a row (a hold is a 2 s grace at most, and the
    publisher's budget allows about one in 20 s); the bystander's p99 stays under
    50 ms."""
    broker = LiveBroker(tmp_path)
    attackers: list[socket.socket] = []
    try:
        bystander = Bystander(broker.port)
        rss_before = broker.rss_kib()
        pub = connect(broker.port, "flooder")
        batch = encode(Publish("flood", b"x"), 4) * 1000
        per_second = [0] * (SECONDS + 1)
        start = time.monotonic()

        def flood() -> None:
            pub.settimeout(0.05)
            while time.monotonic() - start < SECONDS:
                try:  # (what the socket takes is no measure: kernel buffers hold megabytes)
                    pub.send(batch)
                except TimeoutError:
                    continue

        reader = connect(broker.port, "reader")  # a subscriber that keeps up: what got through
        reader.sendall(encode(Subscribe(1, [Subscription("flood", 0)])))
        reader.recv(5)
        reader.settimeout(0.05)

        def read() -> None:
            while (elapsed := time.monotonic() - start) < SECONDS + 1:
                try:
                    per_second[min(SECONDS, int(elapsed))] += len(reader.recv(1 << 20)) // 10
                except TimeoutError:
                    pass

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        reading = threading.Thread(target=read, daemon=True)
        reading.start()
        next_attacker = 0.0
        while time.monotonic() - start < SECONDS:
            if time.monotonic() - start >= next_attacker:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", broker.port))
                sock.sendall(encode(Connect(f"slow-{len(attackers)}", 4)))
                sock.sendall(encode(Subscribe(1, [Subscription("flood", 0)])))
                attackers.append(sock)  # never read
                next_attacker += 2
            bystander.round_trip()
            time.sleep(0.005)
        thread.join()
        reading.join()
        total = sum(per_second)
        zero_run = longest = 0
        for count in per_second[:SECONDS]:
            zero_run = zero_run + 1 if count == 0 else 0
            longest = max(longest, zero_run)
        print(f"stall chain: {total} messages in {SECONDS} s ({total // SECONDS}/s), "
              f"per second {per_second[:SECONDS]}")
        assert total > 11_000 * SECONDS, per_second
        assert longest <= 2, per_second
        judge(broker, bystander, rss_before, "stall chain",
              allowance_kib=len(attackers) * 2 * 16 * 1024)  # each may hold 2 x 16 MiB
        pub.close()
        reader.close()
        bystander.close()
    finally:
        for sock in attackers:
            sock.close()
        broker.stop()
