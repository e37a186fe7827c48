"""Reconnect storm (issue 16, part 2): 5,000 persistent clients of a node that is killed
with SIGKILL reconnect to the two survivors at once.

Three real ``twistd --cluster`` nodes on a real redis-server; the clients are raw
non-blocking sockets driven by one ``selectors`` loop in this process (5,000 paho
threads would measure paho).  Each client has a persistent session on A subscribed to
its own topic; A is killed; a publisher on B sends one QoS 1 message per client while
they are away; then every client reconnects at once, half to B and half to C.  Every
session must be resumed (CONNACK session present) with its queued message delivered,
and a bystander on each survivor keeps measuring round trips meanwhile.
"""

from __future__ import annotations

import heapq
import os
import random
import re
import selectors
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from mqtt_twisted.codec import (
    ConnAck,
    Connect,
    PubAck,
    Publish,
    StreamDecoder,
    SubAck,
    Subscribe,
    Subscription,
    encode,
)
from tests.livebroker import Bystander, LiveBroker, connect
from tests.test_cluster_e2e import Redis

#: The issue's figure is 5,000.  Before the adoption was paced (``cluster/pace.py``), the
#: node adopting the dead one answered every CONNECT and handover request waiting for
#: it in one 7-18 s reactor turn, past its 3 s lease: it was adopted in turn, and
#: messages were lost.  Now 5,000 passes at a moderate load (every session resumed,
#: every message delivered), but not every time under a heavy one (the bystanders' p99
#: past 500 ms; once the other survivor's turns let its lease lapse): docs/cluster.md,
#: "Reconnect storm" and "Not yet".  CI runs 1,000; 5,000 by hand (STORM_CLIENTS=5000;
#: STORM_KEEP=1 keeps the nodes' logs).
STORM_SIZES = [1000]


class Swarm:
    """``n`` raw MQTT 3.1.1 clients on one selector: connect them all, read what comes."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.ids = [f"storm-{i}" for i in range(n)]
        self.selector = selectors.DefaultSelector()
        self.socks: dict[int, socket.socket] = {}
        self.decoders: dict[int, StreamDecoder] = {}
        self.outbox: dict[int, bytes] = {}
        #: Per client: CONNACKs (session present), SUBACKs and PUBLISH payloads seen.
        self.connacks: dict[int, bool] = {}
        self.subacks: set[int] = set()
        self.payloads: dict[int, list[bytes]] = {}
        self.closed: set[int] = set()
        #: Clients refused (a CONNACK with a failure code): index -> the code.
        self.refused: dict[int, int] = {}
        #: Connection attempts per client, and (when, client) of the retries to come.
        self.attempts: dict[int, int] = {}
        self.reopen: list[tuple[float, int]] = []
        self.retry = True

    def open(self, ports: list[int], first: list[bytes], indices: range | None = None) -> None:
        """Connect client i to ports[i % len(ports)] and send it first[i] (its CONNECT,
        perhaps more), all at once (non-blocking connects).  A client whose connection
        closes before its CONNACK connects again after 0.5-2 s, as real clients do."""
        self.ports, self.first = ports, first
        for i in indices if indices is not None else range(self.n):
            self._open(i)

    def _open(self, i: int) -> None:
        self.attempts[i] = self.attempts.get(i, 0) + 1
        self.closed.discard(i)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect_ex(("127.0.0.1", self.ports[i % len(self.ports)]))
        self.socks[i] = sock
        self.decoders[i] = StreamDecoder(4)
        self.outbox[i] = self.first[i]
        self.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, i)

    def run_until(self, done: object, timeout: float) -> bool:
        """Serve the sockets until ``done()`` or ``timeout`` seconds; whether done."""
        deadline = time.monotonic() + timeout
        while not done():  # type: ignore[operator]
            now = time.monotonic()
            if now > deadline:
                return False
            while self.reopen and self.reopen[0][0] <= now:
                self._open(heapq.heappop(self.reopen)[1])
            for key, events in self.selector.select(0.05):
                i = key.data
                sock = self.socks[i]
                if events & selectors.EVENT_WRITE and self.outbox.get(i):
                    try:
                        sent = sock.send(self.outbox[i])
                    except BlockingIOError:
                        continue
                    except OSError:
                        self._close(i)
                        continue
                    self.outbox[i] = self.outbox[i][sent:]
                    if not self.outbox[i]:
                        self.selector.modify(sock, selectors.EVENT_READ, i)
                if events & selectors.EVENT_READ:
                    self._read(i, sock)
        return True

    def _read(self, i: int, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(i)
            return
        for packet in self.decoders[i].feed(data):
            if isinstance(packet, ConnAck):
                if packet.reason_code:
                    self.refused[i] = packet.reason_code
                    continue
                self.connacks[i] = packet.session_present
            elif isinstance(packet, SubAck):
                self.subacks.add(i)
            elif isinstance(packet, Publish):
                self.payloads.setdefault(i, []).append(packet.payload)
                if packet.qos == 1:
                    self._send(i, encode(PubAck(packet.packet_id)))

    def _send(self, i: int, data: bytes) -> None:
        sock = self.socks[i]
        if self.outbox.get(i):
            self.outbox[i] += data
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(i)
            return
        if sent < len(data):
            self.outbox[i] = data[sent:]
            self.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, i)

    def _close(self, i: int) -> None:
        if i in self.closed:
            return
        self.closed.add(i)
        try:
            self.selector.unregister(self.socks[i])
        except (KeyError, ValueError):
            pass
        self.socks[i].close()
        if self.retry and i not in self.connacks:
            heapq.heappush(self.reopen, (time.monotonic() + random.uniform(0.5, 2.0), i))

    def close(self) -> None:
        self.retry = False
        for i in list(self.socks):
            self._close(i)
        self.selector.close()


def connect_packet(client_id: str) -> bytes:
    return encode(Connect(client_id, 4, False, 600))


@pytest.mark.slow
@pytest.mark.timing
@pytest.mark.parametrize("clients", STORM_SIZES)
def test_reconnect_storm(clients: int) -> None:
    """The persistent sessions of a killed node resumed on the survivors at once: every
    CONNACK has session present, every queued QoS 1 message arrives, and bystanders on
    both survivors keep answering (their p99 is printed with the time to resume all)."""
    CLIENTS = int(os.environ.get("STORM_CLIENTS", clients))
    tmp_path = Path(tempfile.mkdtemp(prefix="mqtt-storm-"))
    redis = Redis(tmp_path / "redis")
    nodes: dict[str, LiveBroker] = {}
    first = second = None
    bystanders: list[Bystander] = []
    try:
        for name in "ABC":
            directory = tmp_path / name
            directory.mkdir()
            nodes[name] = LiveBroker(directory, "--store", redis.url, "--cluster", name,
                                     *os.environ.get("STORM_ARGS", "").split())
        a, b, c = nodes["A"], nodes["B"], nodes["C"]
        # The persistent sessions on A, each subscribed to its own topic.
        # (In batches of 500: setting them up is not what is measured.)
        first = Swarm(CLIENTS)
        packets = [connect_packet(cid) + encode(Subscribe(1, [Subscription(f"storm/{i}", 1)]))
                   for i, cid in enumerate(first.ids)]
        started = time.monotonic()
        for batch in range(0, CLIENTS, 500):
            size = min(500, CLIENTS - batch)
            first.open([a.port], packets, range(batch, batch + size))
            assert first.run_until(lambda b=batch + size: len(first.subacks) == b, 120), (
                len(first.connacks), len(first.subacks))
        print(f"{CLIENTS} sessions subscribed on A in {time.monotonic() - started:.1f} s")
        time.sleep(1.0)  # their filters reach B's and C's route tables
        a.stop()  # SIGKILL
        first.close()
        # While they are away: one QoS 1 message each, published on B.
        pub = connect(b.port, "storm-publisher")
        pub.settimeout(60)
        pub.sendall(b"".join(encode(Publish(f"storm/{i}", b"m%d" % i, 1, packet_id=i + 1))
                             for i in range(CLIENTS)))
        acked = 0
        decoder = StreamDecoder(4)
        while acked < CLIENTS:
            acked += sum(isinstance(p, PubAck) for p in decoder.feed(pub.recv(65536)))
        pub.close()
        bystanders = [Bystander(b.port, "by-b"), Bystander(c.port, "by-c")]
        stop = threading.Event()

        def measure() -> None:
            while not stop.is_set():
                for bystander in bystanders:
                    bystander.round_trip(timeout=30)
                time.sleep(0.005)

        measurer = threading.Thread(target=measure)
        measurer.start()
        # The storm: all at once, half to B, half to C.
        second = Swarm(CLIENTS)
        storm = time.monotonic()
        second.open([b.port, c.port], [connect_packet(cid) for cid in second.ids])

        def all_resumed() -> bool:
            if second.refused:
                return True  # (failed: reported below)
            return len(second.connacks) == CLIENTS and all(
                second.payloads.get(i) for i in range(CLIENTS))

        done = second.run_until(all_resumed, 180)
        took = time.monotonic() - storm
        connacked = time.monotonic()
        stop.set()
        measurer.join()
        times = sorted(t for bystander in bystanders for t in bystander.times)
        p50 = times[len(times) // 2] if times else float("nan")
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))] if times else float("nan")
        retried = sum(1 for n in second.attempts.values() if n > 1)
        print(f"storm: {len(second.connacks)} CONNACKs ({retried} clients needed more than "
              f"one attempt, {max(second.attempts.values())} at most), "
              f"{sum(second.connacks.values())} with session present, "
              f"{sum(1 for i in range(CLIENTS) if second.payloads.get(i))} got their "
              f"message, in {took:.1f} s; bystanders p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
              f"max {times[-1] if times else float('nan'):.1f} ms over {len(times)} "
              f"round trips")
        for name, bystander in zip("BC", bystanders):
            log = nodes[name].log()
            slow = [int(ms) for ms in re.findall(r"reactor turn took (\d+) ms", log)]
            said = re.findall(r"longest reactor turn[^)]*? (\d+) ms", log)
            print(f"node {name}: {len(slow)} reactor turns over 250 ms, longest "
                  f"{max(slow, default=0)} ms; adoption/drain said {said}; fenced "
                  f"{log.count('was adopted by another one')} times; bystander max "
                  f"{max(bystander.times, default=float('nan')):.0f} ms")
        absent = [i for i, present in second.connacks.items() if not present]
        unserved = [i for i in range(CLIENTS) if not second.payloads.get(i)]
        print(f"no session present: {absent[:10]}; no message: {unserved[:10]}")
        refusals = [line for node in nodes.values() for line in node.log().splitlines()
                    if "Refused CONNECT" in line]
        assert not second.refused and not refusals, (second.refused, refusals[:5])
        assert done, (len(second.connacks), len(second.closed))
        assert connacked >= storm
        assert sum(second.connacks.values()) == CLIENTS  # session present, every one
        for i in range(CLIENTS):
            assert set(second.payloads[i]) == {b"m%d" % i}, (i, second.payloads[i])
        assert p99 < 500, (p50, p99)
    finally:
        for swarm in (first, second):
            if swarm is not None:
                swarm.close()
        for bystander in bystanders:
            bystander.close()
        for node in nodes.values():
            node.stop()
        redis.stop()
    for name in "BC":
        assert nodes[name].unhandled() == [], nodes[name].log()[-5000:]
    if not os.environ.get("STORM_KEEP"):  # kept when a check failed, or asked, to read
        shutil.rmtree(tmp_path, ignore_errors=True)
