"""A client of a node that is gone, reconnecting to a survivor while the cluster moves
its session (issue 16): it is admitted once the survivor has adopted (or is adopting)
the gone node, never refused with "server unavailable" (v3 0x03) because its session's
home moved on while the survivor waited.

Real ``twistd --cluster`` nodes on a real redis-server; the node is paused with a real
SIGSTOP (it stays subscribed to its control channel, so the survivor asks it and
waits; meanwhile its lease runs out and it is adopted).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from mqtt_twisted.codec import ConnAck, Connect, StreamDecoder, encode
from tests.livebroker import LiveBroker
from tests.test_cluster_e2e import Client, Redis, redis
from tests.test_cluster_fence import home_of

__all__ = ["redis"]  # the fixture, used by name


def connack(port: int, client_id: str, timeout: float) -> ConnAck | None:
    """CONNECT (persistent session, MQTT 3.1.1) and the CONNACK, or None when the
    connection closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(encode(Connect(client_id, 4, False, 600)))
        decoder = StreamDecoder(4)
        while True:
            data = sock.recv(4096)
            if not data:
                return None
            for packet in decoder.feed(data):
                if isinstance(packet, ConnAck):
                    return packet


@pytest.mark.slow
def test_paused_home_adopted_while_asked(tmp_path: Path, redis: Redis) -> None:
    """B, the home of a persistent session, is paused; its client connects to C at once.
    C asks B to let the session go and waits (B still listens); B's lease runs out and
    A or C adopts B, taking the session's home.  C must then resume the session from
    its new home, not answer 0x03 because the home is no longer the one it asked."""
    nodes: dict[str, LiveBroker] = {}
    try:
        for name in "ABC":
            directory = tmp_path / name
            directory.mkdir()
            nodes[name] = LiveBroker(directory, "--store", redis.url, "--cluster", name)
        durable = Client(nodes["B"].port, "durable", clean=False)
        durable.subscribe("d/#", 1)
        time.sleep(0.5)  # the SUBACK's session save reaches Redis
        durable.client.loop_stop()
        durable.client.socket().close()
        deadline = time.monotonic() + 10
        while home_of(redis, "durable") != "B":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(nodes["B"].proc.pid, signal.SIGSTOP)
        answer = connack(nodes["C"].port, "durable", timeout=30)
        assert answer is not None and answer.reason_code == 0, (
            answer, [line for line in nodes["C"].log().splitlines() if "durable" in line])
        assert answer.session_present
        assert home_of(redis, "durable") == "C"
    finally:
        for broker in nodes.values():
            if broker.alive():
                os.kill(broker.proc.pid, signal.SIGCONT)
            broker.stop()
