"""Retained messages for a new subscription go out in slices that yield to the reactor
and wait while the subscriber's queue is long (issue: a new ``#`` subscriber over
100,000 retained messages stalled every other client for up to 2 s).

The sans-IO tests drive the slices with a fake clock; the slow one measures, against a
real ``twistd`` broker, the round trips of a bystander client while a ``#`` subscriber
receives 50,000 retained messages."""

from __future__ import annotations

import select
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.codec import Connect, Publish, StreamDecoder, Subscribe, Subscription, encode
from mqtt_twisted.core import delivery
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.testing import FakeClient, make_broker
from tests.redisserver import free_port
from tests.test_twistd_run import _env, twistd_command

SLICE = delivery.RETAINED_SLICE


def publishes(packets: list) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


class SliceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.broker, self.clock = make_broker(BrokerSettings(max_queued=100_000))
        loader = FakeClient(self.broker)
        loader.connect("loader")
        self.count = SLICE * 3 + 17
        for n in range(self.count):
            loader.publish(f"r/{n:05d}", b"v", 0, retain=True)

    def test_slices(self) -> None:
        """One slice at SUBSCRIBE, the rest on later reactor turns, all in order."""
        sub = FakeClient(self.broker)
        sub.connect("sub")
        got = publishes(sub.subscribe("r/#"))
        self.assertEqual(len(got), SLICE)
        (rest,) = self.clock.getDelayedCalls()
        self.assertEqual(rest.getTime(), self.clock.seconds())  # the next reactor turn
        self.clock.advance(0)
        got += publishes(sub.received())
        self.assertEqual([p.topic for p in got], [f"r/{n:05d}" for n in range(self.count)])
        self.assertTrue(all(p.retain for p in got))

    def test_waits_for_a_paused_client(self) -> None:
        """A client that does not read gets no more slices until its transport drains."""
        sub = FakeClient(self.broker)
        sub.connect("slow")
        sub.connection.pauseWriting()
        sub.subscribe("r/#", qos=1)
        session = self.broker.sessions["slow"]
        self.assertEqual(len(session.queue), SLICE)
        for _ in range(5):
            self.clock.advance(0)
        self.assertEqual(len(session.queue), SLICE)  # parked, not growing
        sub.connection.resumeWriting()
        self.assertEqual(len(session.queue), 0)
        for _ in range(5):
            self.clock.advance(0)
        got = publishes(sub.received())
        self.assertEqual(len(got), self.count)

    def test_stops_when_session_goes(self) -> None:
        """A session discarded mid-way gets nothing more, and nothing is left scheduled."""
        sub = FakeClient(self.broker)
        sub.connect("gone")
        sub.subscribe("r/#")
        sub.disconnect()
        self.clock.advance(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNotIn("gone", self.broker.sessions)


def _connect(port: int, client_id: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(encode(Connect(client_id, 4, True, 0)))
    assert sock.recv(4)[:1] == b"\x20"  # CONNACK
    return sock


def _wait_for_broker(port: int, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, "twistd exited"
        try:
            _connect(port, "probe").close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the broker did not start")


@pytest.mark.slow
def test_bystander_round_trips_while_retained_flow(tmp_path: Path) -> None:
    """50,000 retained 1 KiB messages to a new '#' subscriber: a bystander's round trip
    through the broker stays short (it was stalled for the whole delivery before)."""
    retained, size = 50_000, 1024
    port = free_port()
    log = open(tmp_path / "twistd.log", "wb")
    proc = subprocess.Popen([*twistd_command(), "-n", "--pidfile=", "mqttbroker", "--listen",
                             f"tcp:{port}:interface=127.0.0.1", "--max-queued", "100000",
                             "--sys-interval", "0"], env=_env(), cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_broker(port, proc)
        loader = _connect(port, "loader")
        body = b"x" * size
        batch = b"".join(encode(Publish(f"load/{n}", body, 0, True), 4) for n in range(retained))
        loader.sendall(batch)
        loader.sendall(b"\xc0\x00")  # PINGREQ: answered once every PUBLISH before it is handled
        assert loader.recv(2) == b"\xd0\x00"

        echo = _connect(port, "bystander")
        echo.sendall(encode(Subscribe(1, [Subscription("by/echo", 0)])))
        assert echo.recv(5)[:1] == b"\x90"
        pinger = _connect(port, "pinger")
        decoder = StreamDecoder(4)

        def round_trip() -> float:
            start = time.perf_counter()
            pinger.sendall(encode(Publish("by/echo", b"p", 0)))
            while True:
                ready, _, _ = select.select([echo], [], [], 5)
                assert ready, "the bystander's message never came back"
                if decoder.feed(echo.recv(65536)):
                    return (time.perf_counter() - start) * 1000

        baseline = [round_trip() for _ in range(20)]
        expected = 5 + sum(len(encode(Publish(f"load/{n}", body, 0, True), 4))  # SUBACK
                           for n in range(retained))                         # + PUBLISHes
        received = [0]

        def read_all() -> None:
            wildcard = _connect(port, "wildcard")
            wildcard.settimeout(60)
            wildcard.sendall(encode(Subscribe(1, [Subscription("load/#", 0)])))
            while received[0] < expected:
                data = wildcard.recv(1 << 20)
                if not data:
                    break
                received[0] += len(data)
            wildcard.close()

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        during = []
        while reader.is_alive() and len(during) < 5000:
            during.append(round_trip())
            time.sleep(0.001)
        reader.join(60)
        assert received[0] == expected, (received[0], expected)
        assert len(during) >= 100, f"only {len(during)} round trips during the flow"
        during.sort()
        p99 = during[int(len(during) * 0.99) - 1]
        print(f"bystander round trip: baseline median {statistics.median(baseline):.2f} ms; "
              f"during the retained flow median {statistics.median(during):.2f} ms, "
              f"p99 {p99:.2f} ms, max {during[-1]:.2f} ms over {len(during)} round trips")
        assert p99 < 50, during[-10:]
    finally:
        proc.kill()
        proc.wait()
        log.close()
