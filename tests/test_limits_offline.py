"""The broker-wide bound on what offline sessions' queues hold together
(``--max-offline-queued-bytes``, ``core/offline.py``; issue 14): sans-IO, on a fake clock."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from mqtt_twisted.codec import (
    Connect,
    PubAck,
    Publish,
    StreamDecoder,
    Subscribe,
    Subscription,
    encode,
)
from mqtt_twisted.core.offline import OFFLINE_COPY_COST
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.message import Message
from mqtt_twisted.records import Outbound
from mqtt_twisted.testing import FakeClient, make_broker
from tests.livebroker import LiveBroker, sys_value

#: One 100-byte payload on topic "t", as the offline total counts it.
COPY = 100 + 1 + OFFLINE_COPY_COST


def publishes(packets: list) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


def offline_subscribers(broker, names: list[str]) -> None:
    for name in names:
        sub = FakeClient(broker, 4)
        sub.connect(name, clean=False)
        sub.subscribe("t", qos=1)
        sub.drop()


def publish(broker, count: int, first: int = 0) -> None:
    pub = FakeClient(broker, 4)
    pub.connect(f"pub-{first}")
    for i in range(first, first + count):
        pub.publish("t", b"%03d" % i + bytes(97), qos=1)
    pub.disconnect()


def test_default_is_1_gib() -> None:
    """1 GiB for every offline queue together by default (docs/limits.md says why)."""
    assert BrokerSettings().max_offline_queued_bytes == 1 << 30


def test_new_messages_for_offline_sessions_are_dropped_past_the_bound() -> None:
    """Two offline sessions, room for five copies in all: the first five copies are
    queued, every later one is dropped and counted in limit_hits["offline_queue"]; each
    session's own queue (1,000 messages, 16 MiB) was far from full."""
    broker, _ = make_broker(BrokerSettings(max_offline_queued_bytes=5 * COPY))
    offline_subscribers(broker, ["a", "b"])
    publish(broker, 4)  # 8 copies offered
    a, b = broker.sessions["a"], broker.sessions["b"]
    assert (len(a.queue), len(b.queue)) == (3, 2)
    assert broker.offline.total == 5 * COPY
    assert broker.stats.limit_hits["offline_queue"] == 3
    assert broker.stats.messages_dropped == 0  # no session queue overflowed
    # The oldest are kept: what a returning client gets is the start of the stream.
    back = FakeClient(broker, 4)
    assert [p.payload[:3] for p in publishes(back.connect("a", clean=False))] == \
        [b"000", b"001", b"002"]


def test_a_returning_client_gives_its_part_back() -> None:
    """When a client is back, its queue leaves the total, and the others can queue again;
    when it leaves again, what it still holds counts again."""
    broker, _ = make_broker(BrokerSettings(max_offline_queued_bytes=4 * COPY,
                                           max_inflight=1))
    offline_subscribers(broker, ["a", "b"])
    publish(broker, 2)
    assert broker.offline.total == 4 * COPY
    publish(broker, 1, first=2)
    assert broker.stats.limit_hits["offline_queue"] == 2
    back = FakeClient(broker, 4)
    got = publishes(back.connect("a", clean=False))  # 1 in flight, 1 still queued
    assert len(got) == 1 and len(broker.sessions["a"].queue) == 1
    assert broker.offline.total == 2 * COPY  # b's two only
    publish(broker, 1, first=3)  # b gets one more, a (online) queues one
    assert len(broker.sessions["b"].queue) == 3
    assert broker.offline.total == 3 * COPY
    back.drop()  # a leaves with one in flight and two queued: those two count
    assert broker.offline.total == 5 * COPY


def test_an_ended_session_gives_its_part_back() -> None:
    """An expired or discarded session's queue leaves the total with it."""
    broker, clock = make_broker(BrokerSettings(max_offline_queued_bytes=10 * COPY,
                                               max_session_expiry=60))
    offline_subscribers(broker, ["a"])
    publish(broker, 3)
    assert broker.offline.total == 3 * COPY
    clock.advance(61)
    assert "a" not in broker.sessions and broker.offline.total == 0
    offline_subscribers(broker, ["b"])
    publish(broker, 2)
    FakeClient(broker, 4).connect("b", clean=True)  # clean start discards it
    assert broker.offline.total == 0


def test_session_queue_drops_free_their_part() -> None:
    """A session's own bound dropping its oldest copies takes them off the total too."""
    broker, _ = make_broker(BrokerSettings(max_offline_queued_bytes=100 * COPY,
                                           max_queued=2))
    offline_subscribers(broker, ["a"])
    publish(broker, 5)
    assert len(broker.sessions["a"].queue) == 2
    assert broker.offline.total == 2 * COPY
    assert broker.stats.limit_hits["offline_queue"] == 0


def test_zero_means_no_bound() -> None:
    """0 switches the bound off (as for the other count and byte limits)."""
    broker, _ = make_broker(BrokerSettings(max_offline_queued_bytes=0))
    offline_subscribers(broker, ["a"])
    publish(broker, 50)
    assert len(broker.sessions["a"].queue) == 50
    assert broker.stats.limit_hits["offline_queue"] == 0


def test_sessions_restored_at_start_count() -> None:
    """Sessions a store brings back at start-up are offline: their queues count."""
    broker, _ = make_broker(BrokerSettings(max_offline_queued_bytes=10 * COPY))
    offline_subscribers(broker, ["a"])
    loaded = []
    broker.store.loadSession("a").addCallback(loaded.append)
    state = loaded[0]
    state.outbound = [Outbound(Message("t", bytes(100), 1), 1, False, None, None, 0, None, n)
                      for n in (1, 2, 3)]
    again, _ = make_broker(BrokerSettings(max_offline_queued_bytes=10 * COPY))
    again.restore_session(state)
    assert len(again.sessions["a"].queue) == 3
    assert again.offline.total == 3 * COPY


# --- live: a real twistd broker ------------------------------------------------------


def _session(port: int, client_id: str, topic_filter: str | None = None) -> socket.socket:
    """A v3.1.1 persistent session's connection (clean session 0), CONNACK read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(encode(Connect(client_id, 4, False, 0), 4))
    assert sock.recv(4)[:1] == b"\x20"
    if topic_filter is not None:
        sock.sendall(encode(Subscribe(1, [Subscription(topic_filter, 1)]), 4))
        assert sock.recv(5)[:1] == b"\x90"
    return sock


def _read_publishes(sock: socket.socket, idle: float = 1.0) -> list[Publish]:
    """Every PUBLISH that comes within ``idle`` s of the last, each acknowledged."""
    decoder, got = StreamDecoder(4), []
    sock.settimeout(idle)
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return got
        if not data:
            return got
        for packet in decoder.feed(data):
            if isinstance(packet, Publish):
                got.append(packet)
                sock.sendall(encode(PubAck(packet.packet_id), 4))


def test_live_offline_queues_are_bounded_together(tmp_path: Path) -> None:
    """twistd with room for 100 queued copies in all: 4 offline subscribers, 100 QoS 1
    messages (400 copies offered).  The first 25 go to each, 300 are refused and
    counted in $SYS/broker/limits/offline_queue; each client, back, gets its 25."""
    size = 1000
    copy = size + len("q/x") + OFFLINE_COPY_COST
    broker = LiveBroker(tmp_path, "--sys-interval", "1",
                        "--max-offline-queued-bytes", str(100 * copy))
    try:
        names = [f"away-{n}" for n in range(4)]
        for name in names:
            _session(broker.port, name, "q/#").close()
        time.sleep(0.2)  # the broker saw them go
        pub = _session(broker.port, "pub")
        pub.sendall(b"".join(encode(Publish("q/x", b"%03d" % i + bytes(size - 3), 1,
                                            packet_id=i + 1), 4) for i in range(100)))
        acked, decoder = 0, StreamDecoder(4)
        while acked < 100:
            acked += sum(isinstance(p, PubAck) for p in decoder.feed(pub.recv(65536)))
        pub.close()
        time.sleep(1.5)  # a $SYS tick
        assert sys_value(broker.port, "limits/offline_queue") == "300"
        for name in names:
            sock = _session(broker.port, name)
            got = _read_publishes(sock)
            sock.close()
            assert [p.payload[:3] for p in got] == [b"%03d" % i for i in range(25)], name
        assert broker.unhandled() == []
    finally:
        broker.stop()
