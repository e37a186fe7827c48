"""Plain QoS 0 PUBLISHes crossing nodes as their publisher's bytes (cluster/rawlane.py,
cluster/inbox0.py, qos0.deliver_raw), sans-IO: two brokers on fake clocks, node A's
cluster router on a real ``Outbox`` whose pub/sub messages are handed to node B's
receiving end, as Redis would.

Each scenario runs with the lanes (pure, then compiled where built) and without them
(every message a ``Message`` record through the general path, as before): node B's
clients must get the same bytes in the same order.  Others check that the lanes are
taken (one raw pub/sub message per node per turn), the order against records of the
same turn, a paused receiver on B, and bytes that are not plain PUBLISHes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from twisted.internet.task import Clock

from mqtt_twisted.cluster.batch import Outbox
from mqtt_twisted.cluster.inbox0 import receive_push
from mqtt_twisted.cluster.rawlane import RAW, RAW_MAX, decode
from mqtt_twisted.cluster.router import ClusterRouter
from mqtt_twisted.cluster.routes import ADD
from mqtt_twisted.codec import Publish, encode
from mqtt_twisted.constants import PacketType, PropertyId
from mqtt_twisted.core import connection, fastpath
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.testing import FakeClient, make_broker

IMPLS = ["pure", "compiled"]


@contextmanager
def handling(impl: str) -> Iterator[None]:
    """PUBLISHes handled by ``impl``'s QoS 0 module (inbox0 follows the handler)."""
    if impl == "compiled" and fastpath.compiled is None:
        pytest.skip("core/_qos0.pyx is not built here")
    saved = connection._HANDLERS[PacketType.PUBLISH]
    connection._HANDLERS[PacketType.PUBLISH] = fastpath.handler(impl == "compiled")
    try:
        yield
    finally:
        connection._HANDLERS[PacketType.PUBLISH] = saved


class NullLink:
    """What node B's router asks of Redis (nothing crosses back here)."""

    def register(self, f: str) -> None:
        pass

    def unregister(self, f: str) -> None:
        pass

    def register_many(self, filters: list[str]) -> None:
        pass


class OutboxLink:
    """Node A's link: a real ``Outbox``; its pub/sub messages recorded for B."""

    def __init__(self, clock: Clock) -> None:
        self.pushed: list[tuple[str, bytes]] = []
        self.outbox = Outbox(clock, "A", self._add, self._push)

    def _add(self, to: str, *fields: Any) -> Any:
        raise AssertionError("no QoS 1/2 here")

    def _push(self, to: str, data: bytes) -> None:
        self.pushed.append((to, data))

    def publish(self, to: str, message: Any, groups: Any = None, resent: bool = False) -> None:
        self.outbox.publish(to, message, groups, resent)

    def register(self, f: str) -> None:
        pass

    def unregister(self, f: str) -> None:
        pass


class Pair:
    """Nodes A and B; B has a subscriber to ``#`` as far as A's route table knows."""

    def __init__(self, lanes: bool, settings: BrokerSettings | None = None) -> None:
        self.a, self.clock_a = make_broker(settings)
        self.b, self.clock_b = make_broker(settings)
        self.link = OutboxLink(self.clock_a)
        self.router_a = ClusterRouter(self.a.router, "A", self.link, lambda w: None)
        if not lanes:
            self.router_a.raw_lanes = None
        self.router_a.routes.apply(ADD, "B", "#")
        self.a.router = self.router_a
        self.router_b = ClusterRouter(self.b.router, "B", NullLink(), lambda w: None)
        self.b.router = self.router_b

    def turn(self) -> list[bytes]:
        """End A's turn; B receives its pub/sub messages, in order.  Returns them."""
        self.clock_a.advance(0)
        pushed, self.link.pushed = self.link.pushed, []
        for to, data in pushed:
            assert to == "B"
            receive_push(self.b, self.router_b, data)
        return [data for _, data in pushed]


def pub(topic: str, payload: bytes = b"x", retain: bool = False,
        props: dict | None = None) -> Publish:
    return Publish(topic, payload, 0, retain, False, None, props or {})


def read(client: FakeClient, *packets: Publish) -> None:
    client.send_bytes(b"".join(encode(p, client.version) for p in packets))


def scenario(pair: Pair) -> dict[str, FakeClient]:
    """v3 and v5 publishers on A; on B v3 and v5 subscribers, one with the v3
    publisher's client id and no-local, one with a small maximum packet size, one
    paused for a while."""
    b = pair.b
    subs = {}
    for name, version, props in [("s4", 4, {}), ("s5", 5, {}), ("p4", 5, {}),
                                 ("small", 5, {PropertyId.MAXIMUM_PACKET_SIZE: 40}),
                                 ("slow", 4, {})]:
        subs[name] = FakeClient(b, version)
        subs[name].connect(name, properties=props) if version == 5 else subs[name].connect(name)
    subs["s4"].subscribe("t/#")
    subs["s5"].subscribe("t/#")
    subs["p4"].subscribe("t/#", no_local=True)  # the v3 publisher's id: not its own
    subs["small"].subscribe("t/#")
    subs["slow"].subscribe("t/slow/#")
    p4, p5 = FakeClient(pair.a, 4), FakeClient(pair.a, 5)
    p4.connect("p4")
    p5.connect("p5")
    for i in range(3):
        read(p4, pub("t/a", b"%d" % i), pub("t/a", b"big" * 20), pub("t/b"),
             pub("t/r", b"kept", retain=True), pub("t/a", b"after"), pub("$SYS/x"),
             pub("t/slow/x", b"s%d" % i))
        read(p5, pub("t/a", b"v5-%d" % i), pub("t/p", props={PropertyId.CONTENT_TYPE: "x"}),
             pub("t/a", b"v5-end"), pub("t/slow/y", b"s5"))
        pair.turn()
        if i == 0:
            subs["slow"].connection.pauseWriting()
        if i == 1:
            subs["slow"].connection.resumeWriting()
    return subs


def ends(pair: Pair) -> tuple[FakeClient, FakeClient]:
    """A subscriber to ``t/#`` on B and a publisher on A (both MQTT 3.1.1)."""
    sub, publisher = FakeClient(pair.b, 4), FakeClient(pair.a, 4)
    sub.connect("s")
    sub.subscribe("t/#")
    publisher.connect("p")
    return sub, publisher


def outcome(pair: Pair, subs: dict[str, FakeClient]) -> dict[str, Any]:
    stats = pair.b.stats
    return {
        "bytes": {name: bytes(c.transport.written) for name, c in subs.items()},
        "b": (stats.messages_sent, stats.bytes_sent, stats.deliveries,
              pair.router_b.received),
        "a": (pair.a.stats.messages_received, pair.a.stats.messages_sent,
              pair.router_a.forwarded),
    }


@pytest.mark.parametrize("impl", IMPLS)
def test_same_bytes_as_records(impl: str) -> None:
    with handling(impl):
        general = Pair(lanes=False)
        expected = outcome(general, scenario(general))
        fast = Pair(lanes=True)
        got = outcome(fast, scenario(fast))
    assert got == expected
    assert expected["bytes"]["s4"] and expected["bytes"]["slow"]


@pytest.mark.parametrize("impl", IMPLS)
def test_a_turn_is_one_raw_message_per_node(impl: str) -> None:
    """100 plain PUBLISHes in one read cross as one raw pub/sub message holding the
    publisher's very bytes; counted as forwarded on A, sent on B."""
    with handling(impl):
        pair = Pair(lanes=True)
        sub, publisher = ends(pair)
        local = FakeClient(pair.a, 4)
        local.connect("local")
        local.subscribe("t/#")
        packets = [pub("t/x", b"%d" % i) for i in range(100)]
        data = b"".join(encode(p, 4) for p in packets)
        publisher.send_bytes(data)
        pushed = pair.turn()
    assert len(pushed) == 1 and pushed[0][:1] == RAW
    assert decode(pushed[0]) == ("A", ["p", False, data])
    assert [p.payload for p in sub.received()] == [b"%d" % i for i in range(100)]
    assert pair.router_a.forwarded == 100
    assert pair.a.stats.messages_sent == 100  # the local subscriber's only
    assert pair.b.stats.messages_sent == 100
    assert pair.router_b.received == 100


@pytest.mark.parametrize("impl", IMPLS)
def test_records_between_runs_keep_the_order(impl: str) -> None:
    """A retained message between plain ones goes as a record, in a pub/sub message
    of its own between the two lanes': B's subscriber gets all three in order."""
    with handling(impl):
        pair = Pair(lanes=True)
        sub, publisher = ends(pair)
        read(publisher, pub("t/x", b"1"), pub("t/x", b"2", retain=True), pub("t/x", b"3"))
        pushed = pair.turn()
    assert [data[:1] == RAW for data in pushed] == [True, False, True]
    assert [p.payload for p in sub.received()] == [b"1", b"2", b"3"]


@pytest.mark.parametrize("impl", IMPLS)
def test_a_full_lane_leaves_before_the_turn_ends(impl: str) -> None:
    with handling(impl):
        pair = Pair(lanes=True)
        sub, publisher = ends(pair)
        count = 3 * RAW_MAX // 1000
        for i in range(count):
            read(publisher, pub("t/x", b"%06d" % i + b"." * 990))
        assert pair.link.pushed  # (sent before the turn's end)
        pushed = pair.turn()
    assert len(pushed) >= 3 and all(len(d) < RAW_MAX + 20_000 for d in pushed)
    assert [p.payload[:6] for p in sub.received()] == [b"%06d" % i for i in range(count)]


@pytest.mark.parametrize("impl", IMPLS)
def test_a_paused_receiver_takes_bytes_through_then_queues(impl: str) -> None:
    """On B nobody can be held back for a paused subscriber: a peer's runs are written
    through to it within the queue's byte limit, then queued; it gets every one, in
    order, once it drains, and the bystander all of them at once."""
    with handling(impl):
        pair = Pair(lanes=True, settings=BrokerSettings(max_queued_bytes=30_000))
        slow, bystander = FakeClient(pair.b, 4), FakeClient(pair.b, 4)
        slow.connect("slow")
        slow.subscribe("t/#")
        bystander.connect("by")
        bystander.subscribe("t/#")
        publisher = FakeClient(pair.a, 4)
        publisher.connect("p")
        slow.connection.pauseWriting()
        for i in range(40):  # 41 KB: a run (16 KB) through, the next one queued
            read(publisher, *(pub("t/x", b"%03d" % (i * 10 + j) + b"." * 97)
                              for j in range(10)))
        pair.turn()
        written = len(slow.transport.written)
        assert 10_000 < written < 30_000
        assert len(slow.connection.session.queue) > 100
        assert len(bystander.received()) == 400
        slow.connection.resumeWriting()
    assert [p.payload[:3] for p in slow.received()] == [b"%03d" % i for i in range(400)]


@pytest.mark.parametrize("impl", IMPLS)
def test_bytes_that_are_not_plain_publishes_are_logged_and_skipped(impl: str) -> None:
    """A raw message's run that is not plain PUBLISHes is delivered up to the bad bytes
    and skipped from there, with a warning; the next run and message are delivered."""
    from mqtt_twisted.cluster.rawlane import _pack

    good = encode(pub("t/x", b"ok"), 4)
    qos1 = encode(Publish("t/x", b"q", 1, False, False, 7, {}), 4)
    with handling(impl):
        pair = Pair(lanes=True)
        sub = FakeClient(pair.b, 4)
        sub.connect("s")
        sub.subscribe("t/#")
        for data in (RAW + b"\xc1", RAW + _pack(["A", ["p", False]]),
                     RAW + _pack(["A", ["p", False, good + qos1 + good, "p", 0, good]]),
                     RAW + _pack(["A", ["p", False, good[:-1], 7, False, b"x"]])):
            receive_push(pair.b, pair.router_b, data)
    assert [p.payload for p in sub.received()] == [b"ok", b"ok"]


@pytest.mark.parametrize("impl", IMPLS)
def test_a_run_one_receiver_refuses_counts_for_none(impl: str) -> None:
    """Two paused receivers, the second at its byte limit: the run is refused, and the
    first has nothing counted for it (it would queue earlier for bytes never written)."""
    from mqtt_twisted.core import qos0

    module = fastpath.compiled if impl == "compiled" else qos0
    if module is None:
        pytest.skip("core/_qos0.pyx is not built here")
    broker, _ = make_broker(BrokerSettings(max_queued_bytes=1000))
    first, second = FakeClient(broker, 4), FakeClient(broker, 4)
    for name, client in (("first", first), ("second", second)):
        client.connect(name)
        client.connection.pauseWriting()
    links = [first.connection, second.connection]
    assert broker.flow.take_through(second.connection, 900)
    assert not module._taken_through(broker, links, 200)
    assert broker.flow.congested.get(first.connection) is None or (
        broker.flow.congested[first.connection].written == 0)
    assert module._taken_through(broker, links, 100)
    assert broker.flow.congested[first.connection].written == 100
    assert broker.flow.congested[second.connection].written == 1000
