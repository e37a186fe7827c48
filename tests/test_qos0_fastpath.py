"""The plain QoS 0 path (core/qos0.py) against the general one (inbound.on_publish).

Each scenario runs twice on fresh sans-IO brokers, once with the general PUBLISH
handler and once with the fast one (pure, then compiled where built): every client
must get the same bytes in the same order, and the broker the same counters and
retained messages.  The reads mix what the fast path must leave to the general one
(retained, QoS 1 in the middle, v5 properties and aliases, ``$`` topics, queued and
paused receivers, share groups, subscription ids, no-local) with what it takes, and
subscriptions change between reads.  Other tests check that it is taken, or not, as
its conditions say.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from mqtt_twisted.codec import Publish, Subscribe, Subscription, _accel, encode
from mqtt_twisted.constants import PacketType, PropertyId
from mqtt_twisted.core import connection, fastpath, inbound, qos0
from mqtt_twisted.core.router import LocalRouter
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.testing import FakeClient, make_broker

_P = PropertyId
IMPLS = ["pure", "compiled"]


def handler_of(impl: str) -> Callable[..., None]:
    if impl == "general":
        return inbound.on_publish
    if impl == "compiled" and fastpath.compiled is None:
        pytest.skip("core/_qos0.pyx is not built here")
    return fastpath.handler(impl == "compiled")


@contextmanager
def handling(impl: str) -> Iterator[Any]:
    """PUBLISHes handled by ``impl``'s handler; yields the module whose fallback counts."""
    handler = handler_of(impl)
    module = (fastpath.compiled if impl == "compiled" else qos0)
    saved = connection._HANDLERS[PacketType.PUBLISH]
    connection._HANDLERS[PacketType.PUBLISH] = handler
    try:
        yield module
    finally:
        connection._HANDLERS[PacketType.PUBLISH] = saved


def pub(topic: str, payload: bytes = b"x", qos: int = 0, retain: bool = False,
        pid: int | None = None, props: dict | None = None) -> Publish:
    return Publish(topic, payload, qos, retain, False, pid if qos else None, props or {})


def subscribe_with_id(client: FakeClient, topic_filter: str, sid: int) -> None:
    client.send(Subscribe(client.pid(), [Subscription(topic_filter, 0)],
                          {_P.SUBSCRIPTION_IDENTIFIER: sid}))
    client.received()


def read(client: FakeClient, *packets: Publish) -> None:
    """One read holding all of ``packets``."""
    client.send_bytes(b"".join(encode(p, client.version) for p in packets))


COUNTERS = ("messages_received", "messages_sent", "bytes_sent", "deliveries",
            "dropped_too_large", "messages_dropped", "received_qos1", "sent_qos1",
            "protocol_errors")


def outcome(broker: Any, clients: dict[str, FakeClient]) -> dict[str, Any]:
    stats = broker.stats
    return {
        "bytes": {name: bytes(c.transport.written) for name, c in clients.items()},
        "stats": {name: getattr(stats, name) for name in COUNTERS},
        "topics": dict(stats.topics.counts),
        "retained": sorted((m.topic, m.payload) for m in broker.store._retained),
        "queued": {cid: len(s.queue) for cid, s in broker.sessions.items()},
    }


def scenario_v4(broker: Any) -> dict[str, FakeClient]:
    a, b, c, p = (FakeClient(broker, 4) for _ in range(4))
    a.connect("a")
    a.subscribe("s/#")
    b.connect("b")
    b.subscribe("s/t", "s/+", qos=1)  # overlapping: one copy, the higher QoS
    p.connect("p")
    p.subscribe("s/self")  # its own subscription (v3: no no-local)
    c.connect("c")
    for i in range(3):
        read(p, pub("s/t", b"%d" % i), pub("s/t", b"r", retain=True), pub("s/t", b"q1", 1, pid=1),
             pub("s/u"), pub("$SYS/x"), pub("s/self", b"me"), pub("s/none/deep"),
             pub("nobody"), pub("s/t", b"z" * 300))
        if i == 0:
            c.subscribe("s/t")  # a subscribe between two reads
        if i == 1:
            b.unsubscribe("s/+")
    for x in (a, b):
        for packet in x.received():
            if packet.qos:
                x.ack(packet)
    return {"a": a, "b": b, "c": c, "p": p}


def scenario_v5(broker: Any) -> dict[str, FakeClient]:
    clients = {}
    for name, version, props in [("v5", 5, {}), ("v4", 4, {}),
                                 ("ids", 5, {}), ("small", 5, {_P.MAXIMUM_PACKET_SIZE: 40}),
                                 ("alias", 5, {_P.TOPIC_ALIAS_MAXIMUM: 4}), ("p", 5, {})]:
        clients[name] = FakeClient(broker, version)
        clients[name].connect(name, properties=props)
    clients["v5"].subscribe("t/#")
    clients["v4"].subscribe("t/v4/#")
    subscribe_with_id(clients["ids"], "t/ids/#", 7)
    clients["small"].subscribe("t/#")
    clients["alias"].subscribe("t/alias")
    clients["p"].subscribe("t/nl", no_local=True)
    clients["p"].subscribe("t/half/#", no_local=True)
    clients["p"].subscribe("t/half/+")
    p = clients["p"]
    for i in range(2):
        read(p, pub("t/a", b"%d" % i), pub("t/a", b"big" * 20), pub("t/v4/x"), pub("t/nl"),
             pub("t/ids/x"),
             pub("t/half/x"), pub("t/alias"), pub("t/a", props={_P.CONTENT_TYPE: "x"}),
             pub("t/al", props={_P.TOPIC_ALIAS: 2}), pub("", props={_P.TOPIC_ALIAS: 2}),
             pub("t/a", b"q", 1, pid=3 + i), pub("t/a", b"end"))
    return clients


def scenario_flow(broker: Any) -> dict[str, FakeClient]:
    """A paused receiver, then one with a queue, then resumed; a share group later."""
    a, b, p, q = (FakeClient(broker, 4) for _ in range(4))
    a.connect("a")
    a.subscribe("f/#")
    b.connect("b")
    b.subscribe("f/x")
    q.connect("q")
    q.subscribe("f/q", qos=1)
    q.connection.send_quota = 1  # a second QoS 1 copy waits in its queue
    p.connect("p")
    read(p, pub("f/x", b"1"), pub("f/q", b"q1", 1, pid=1), pub("f/q", b"q2", 1, pid=2),
         pub("f/q", b"q3"), pub("f/x", b"2"))
    for packet in q.received():
        if packet.qos:
            q.ack(packet)
    read(p, pub("f/q", b"q4"))
    a.connection.pauseWriting()
    read(p, pub("f/x", b"3"), pub("f/y", b"4"))
    a.connection.resumeWriting()
    read(p, pub("f/x", b"5"))
    b.subscribe("$share/g/f/#")
    read(p, pub("f/x", b"6"), pub("f/z", b"7"))
    b.unsubscribe("$share/g/f/#")
    read(p, pub("f/x", b"8"))
    b.drop()
    read(p, pub("f/x", b"9"))
    return {"a": a, "b": b, "p": p, "q": q}


SCENARIOS = {"v4": scenario_v4, "v5": scenario_v5, "flow": scenario_flow}


def run(impl: str, scenario: str, settings: BrokerSettings | None = None,
        **kwargs: Any) -> dict[str, Any]:
    with handling(impl):
        broker, _ = make_broker(settings, **kwargs)
        clients = SCENARIOS[scenario](broker)
        return outcome(broker, clients)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_same_bytes_as_the_general_path(impl: str, scenario: str) -> None:
    """Every client gets the same bytes in the same order, the counters agree."""
    expected = run("general", scenario)
    got = run(impl, scenario)
    assert got == expected
    assert any(expected["bytes"].values())


@pytest.mark.parametrize("impl", IMPLS)
def test_same_bytes_with_aliases_on(impl: str) -> None:
    """Outbound topic aliases on: an aliasing receiver gets the general path's bytes."""
    settings = BrokerSettings(outbound_topic_aliases="lru")
    assert run(impl, "v5", settings) == run("general", "v5", settings)


class SubRouter(LocalRouter):
    __slots__ = ()


class Counting:
    """An ACL that answers the same every time (``stableAnswers``): grants are kept."""

    stableAnswers = True

    def __init__(self) -> None:
        self.asked: list[str] = []

    def mayPublish(self, identity: Any, clientId: Any, topic: str) -> bool:
        self.asked.append(topic)
        return topic != "s/u"

    def maySubscribe(self, identity: Any, clientId: Any, topicFilter: str) -> bool:
        return True


@pytest.mark.parametrize("impl", IMPLS)
def test_same_bytes_with_an_authorizer(impl: str) -> None:
    """With an authorizer whose answers are kept, refusals and grants are the same."""
    expected = run("general", "v4", authorizer=Counting())
    assert run(impl, "v4", authorizer=Counting()) == expected


@pytest.fixture(params=IMPLS)
def fast(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """The fast handler bound; yields the topics it handed to the general path."""
    general: list[str] = []
    with handling(request.param) as module:
        saved = module._general

        def counting(conn: Any, packet: Publish) -> None:
            general.append(packet.topic)
            saved(conn, packet)

        module._general = counting
        try:
            yield general
        finally:
            module._general = saved


def test_taken_for_plain_messages(fast: list[str]) -> None:
    """Plain QoS 0 to ready MQTT receivers never reaches the general path."""
    broker, _ = make_broker()
    a, b, p = FakeClient(broker, 4), FakeClient(broker, 4), FakeClient(broker, 4)
    a.connect("a")
    a.subscribe("x/#")
    b.connect("b")
    b.subscribe("x/y", "x/+")
    p.connect("p")
    read(p, *(pub("x/y", b"%d" % i) for i in range(50)), pub("x/z"), pub("nobody"))
    assert fast == []
    assert broker.stats.messages_received == 52
    assert [m.payload for m in b.received()][:3] == [b"0", b"1", b"2"]
    assert len(a.received()) == 51


@pytest.mark.parametrize("case", [
    "retain", "qos1", "props", "dollar", "long-topic", "v4-receiver", "paused", "queued",
    "share", "sub-id", "no-local-some", "too-large", "cluster", "debug", "grant-unknown",
    "alias-out", "read-check"])
def test_not_taken_when_a_condition_fails(fast: list[str], case: str) -> None:
    """Each condition, failing alone, sends the message down the general path."""
    settings = (BrokerSettings(max_topic_length=100) if case == "long-topic"
                else BrokerSettings(outbound_topic_aliases="first") if case == "alias-out"
                else None)
    authorizer = Counting() if case == "grant-unknown" else None
    broker, _ = make_broker(settings, authorizer=authorizer)
    version = 5
    sub = FakeClient(broker, 4 if case == "v4-receiver" else version)
    sub.connect("sub", properties={_P.MAXIMUM_PACKET_SIZE: 30} if case == "too-large"
                else {_P.TOPIC_ALIAS_MAXIMUM: 3} if case == "alias-out" else {})
    topic = "a/" + "b" * 30 if case == "long-topic" else "t/x"
    if case == "sub-id":
        subscribe_with_id(sub, "t/#", 9)
    else:
        sub.subscribe("$share/g/t/#" if case == "share" else "t/#",
                      qos=1 if case == "queued" else 0)
    p = FakeClient(broker, version)
    p.connect("p")
    if case == "no-local-some":
        p.subscribe("t/#", no_local=True)
        p.subscribe("t/+")
    packet = pub(topic, b"y" * 40 if case == "too-large" else b"y",
                 1 if case == "qos1" else 0, case == "retain", 1,
                 {_P.CONTENT_TYPE: "x"} if case == "props" else None)
    if case == "dollar":
        packet.topic = "$x/y"
        sub.subscribe("$x/#")
    if case == "paused":
        sub.connection.pauseWriting()
    if case == "read-check":  # (an ACL granting the wildcard filter only in part)
        sub.connection.session.read_check = lambda topic: topic != "t/x"
    if case == "queued":  # a full in-flight window: the next QoS 1 copy waits in the queue
        sub.connection.send_quota = 1
        read(p, pub("t/x", b"1", 1, pid=5), pub("t/x", b"2", 1, pid=6))
        assert len(sub.connection.session.queue) == 1
    if case == "cluster":  # any router but this node's own (a cluster's wraps it)
        broker.router.__class__ = SubRouter
    if case == "debug":
        from mqtt_twisted.logs import DEBUG
        DEBUG.on = True
        try:
            read(p, packet)
        finally:
            DEBUG.on = False
    else:
        read(p, packet)
    assert fast and fast[-1] == packet.topic


def test_routes_follow_subscriptions(fast: list[str]) -> None:
    """A route entry is tied to the tree's match: a new or dropped subscription, a
    reconnect, a new session under the same id are seen by the next message."""
    broker, _ = make_broker()
    a, p = FakeClient(broker, 4), FakeClient(broker, 4)
    a.connect("a")
    a.subscribe("r/#")
    p.connect("p")
    read(p, pub("r/1", b"1"))
    b = FakeClient(broker, 4)
    b.connect("b")
    b.subscribe("r/1")
    read(p, pub("r/1", b"2"))
    got_a = [m.payload for m in a.received()]
    a.unsubscribe("r/#")
    read(p, pub("r/1", b"3"))
    got_b = [m.payload for m in b.received()]
    b.drop()
    b2 = FakeClient(broker, 4)
    b2.connect("b", clean=False)
    b2.subscribe("r/1")
    read(p, pub("r/1", b"4"))
    assert got_a + [m.payload for m in a.received()] == [b"1", b"2"]
    assert got_b == [b"2", b"3"]
    assert [m.payload for m in b2.received()] == [b"4"]
    assert fast == []


def _choice(env_extra: dict[str, str], block: bool = False) -> subprocess.CompletedProcess:
    program = ("import sys\n"
               + ("sys.modules['mqtt_twisted.core._qos0'] = None\n" if block else "")
               + "from mqtt_twisted.core import connection, fastpath, qos0\n"
               "h = connection._HANDLERS[3]\n"
               "print('pure' if h is qos0.on_publish else 'compiled'"
               " if fastpath.compiled and h is fastpath.compiled.on_publish else h)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MQTT_TWISTED_PURE", "MQTT_TWISTED_REQUIRE_EXT")}
    return subprocess.run([sys.executable, "-c", program], env={**env, **env_extra},
                          capture_output=True, text=True)


def test_choice_at_import() -> None:
    """Compiled where built, pure with MQTT_TWISTED_PURE=1 or where it is missing; a
    missing build with MQTT_TWISTED_REQUIRE_EXT=1 is a one-line ImportError."""
    default = _choice({})
    assert default.returncode == 0, default.stderr
    assert default.stdout.split() == ["compiled" if fastpath.compiled else "pure"]
    assert _choice({"MQTT_TWISTED_PURE": "1"}).stdout.split() == ["pure"]
    assert _choice({}, block=True).stdout.split() == ["pure"]
    required = _choice({"MQTT_TWISTED_REQUIRE_EXT": "1"}, block=True)
    assert required.returncode != 0
    # (Where the codec is not built either, its own ImportError comes first.)
    module = "mqtt_twisted.core._qos0" if _accel.speedups else ""
    assert f"({module}" in required.stderr and "is not importable" in required.stderr


# --- the batch over a whole read (qos0.read_share) -------------------------------------


def scenario_batch(broker: Any) -> dict[str, FakeClient]:
    """Long reads: runs over several topics with the same receivers, runs that change
    receivers, a QoS 1, a retained PUBLISH and the publisher's own SUBSCRIBE in the
    middle (what follows it comes back to it), a packet cut across two reads, PUBLISHes
    framed by a 3-byte length, v5 receivers next to v3 ones."""
    a, b, p = FakeClient(broker, 4), FakeClient(broker, 4), FakeClient(broker, 4)
    a.connect("a")
    a.subscribe("m/#")
    b.connect("b")
    b.subscribe("m/b/+")
    p.connect("p")
    big = b"B" * 20000  # (a 3-byte remaining length: the general path's)
    packets = ([pub(f"m/{i % 7}", b"%d" % i) for i in range(40)]
               + [pub("m/b/x", b"b%d" % i) for i in range(30)]
               + [pub("m/1", b"q", 1, pid=9), pub("m/b/y", b"r", retain=True)]
               + [pub(f"m/b/{i % 3}", b"c%d" % i) for i in range(20)]
               + [Subscribe(9, [Subscription("m/b/#", 0)], {})]
               + [pub("m/b/z", b"self%d" % i) for i in range(5)] + [pub("m/big", big)]
               + [pub("m/b/z", b"after")])
    data = b"".join(encode(x, 4) for x in packets)
    cut = len(data) - 7  # (the last PUBLISH arrives in two reads)
    p.send_bytes(data[:cut])
    p.send_bytes(data[cut:])
    for packet in a.received():
        if packet.qos:
            a.ack(packet)
    return {"a": a, "b": b, "p": p}


SCENARIOS["batch"] = scenario_batch


@pytest.mark.parametrize("impl", IMPLS)
def test_a_batched_read_gives_the_general_paths_bytes(impl: str) -> None:
    """The batch scenario: every client gets the general path's bytes, in its order,
    and the counters (top topics included) agree."""
    expected = run("general", "batch")
    assert run(impl, "batch") == expected
    assert expected["bytes"]["p"]  # (the publisher's own SUBSCRIBE took effect mid-read)


@pytest.fixture(params=IMPLS)
def batched(request: pytest.FixtureRequest) -> Iterator[str]:
    with handling(request.param):
        yield request.param


def writes_to(client: FakeClient) -> list[bytes]:
    """Record each write to ``client``'s transport from now on."""
    writes: list[bytes] = []
    transport = client.transport
    original = transport.write

    def write(data: bytes) -> None:
        writes.append(bytes(data))
        original(data)

    transport.write = write  # type: ignore[method-assign]
    return writes


def test_a_read_is_one_write_per_receiver(batched: str) -> None:
    """200 plain PUBLISHes on four topics to the same two receivers: one write each,
    the publisher's order kept; the counters of 200 messages and 400 deliveries."""
    broker, _ = make_broker()
    a, b, p = FakeClient(broker, 4), FakeClient(broker, 4), FakeClient(broker, 4)
    for name, client in (("a", a), ("b", b)):
        client.connect(name)
        client.subscribe("w/#")
    p.connect("p")
    wa, wb = writes_to(a), writes_to(b)
    read(p, *(pub(f"w/{i % 4}", b"%d" % i) for i in range(200)))
    assert len(wa) == len(wb) == 1 and wa == wb
    assert [m.payload for m in a.received()] == [b"%d" % i for i in range(200)]
    stats = broker.stats
    assert (stats.messages_received, stats.deliveries, stats.messages_sent) == (200, 400, 400)
    assert stats.bytes_sent == 2 * len(wa[0])


def test_the_share_is_bounded_and_the_rest_follows(batched: str) -> None:
    """A read of 3,000 plain PUBLISHes: one share of at most SHARE_WORK units this turn
    (the publisher not read meanwhile), the rest at the next turns, in order."""
    broker, clock = make_broker()
    sub, p = FakeClient(broker, 4), FakeClient(broker, 4)
    sub.connect("s")
    sub.subscribe("f")
    p.connect("p")
    read(p, *(pub("f", b"%d" % i) for i in range(3000)))
    first = [m.payload for m in sub.received()]
    assert 0 < len(first) <= qos0.SHARE_WORK
    assert p.transport.reading is False and p.connection.decoder.more
    for _ in range(20):  # (the next shares: one a turn)
        clock.advance(0)
    assert first + [m.payload for m in sub.received()] == [b"%d" % i for i in range(3000)]
    assert p.transport.reading is True and broker.stats.messages_received == 3000


def test_a_full_receiver_pauses_within_a_run(batched: str) -> None:
    """A receiver whose transport says full after 1 KiB: the batch writes at most
    RUN_BYTES to it before it is paused, then flow control holds the publisher back
    as the general path does; every message arrives, in order."""
    broker, clock = make_broker()
    sub, p = FakeClient(broker, 4), FakeClient(broker, 4)
    sub.connect("s")
    sub.subscribe("f")
    p.connect("p")
    writes = writes_to(sub)
    inner = sub.transport.write

    def write(data: bytes) -> None:
        inner(data)
        if len(sub.transport.written) > 1024 and not sub.connection.paused:
            sub.connection.pauseWriting()

    sub.transport.write = write  # type: ignore[method-assign]
    read(p, *(pub("f", b"x" * 60 + b"%04d" % i) for i in range(600)))
    assert sub.connection.paused
    assert len(writes[0]) <= qos0.RUN_BYTES + 100  # (one PUBLISH past it at most)
    assert p.transport.reading is False  # held back by the full receiver
    got = [m.payload for m in sub.received()]
    sub.connection.resumeWriting()
    for _ in range(20):  # (the next shares: one a turn)
        clock.advance(0)
    got += [m.payload for m in sub.received()]
    assert got == [b"x" * 60 + b"%04d" % i for i in range(600)]


def test_a_packet_over_the_limit_closes_after_the_run_before_it(batched: str) -> None:
    """A PUBLISH over max_packet_size in the middle of a run: the ones before it are
    delivered, the publisher is closed for it, the ones after are not handled."""
    broker, _ = make_broker(BrokerSettings(max_packet_size=200))
    sub, p = FakeClient(broker, 4), FakeClient(broker, 4)
    sub.connect("s")
    sub.subscribe("f")
    p.connect("p")
    read(p, *(pub("f", b"%d" % i) for i in range(10)), pub("f", b"L" * 300),
         pub("f", b"late"))
    assert [m.payload for m in sub.received()] == [b"%d" % i for i in range(10)]
    assert p.transport.closed
    assert broker.stats.messages_received == 10 and broker.stats.protocol_errors == 1


def test_the_rate_limit_counts_a_batched_read(batched: str) -> None:
    """max_client_rate: a batched read of 300 is charged 300 messages, as the general
    path's (the publisher paused, one rate pause)."""
    settings = BrokerSettings(max_client_rate=100)
    broker, _ = make_broker(settings)
    sub, p = FakeClient(broker, 4), FakeClient(broker, 4)
    sub.connect("s")
    sub.subscribe("f")
    p.connect("p")
    read(p, *(pub("f", b"%d" % i) for i in range(300)))
    assert broker.stats.messages_received == 300 and broker.stats.rate_pauses == 1
    assert p.transport.reading is False


def test_compiled_scans_match_the_pure_ones() -> None:
    """_plain_topic, _scan_run and _packet_end of _qos0.pyx against qos0.py's on random
    cuts of valid, mangled and truncated streams."""
    compiled = fastpath.compiled
    if compiled is None or not hasattr(compiled, "PURE_SCANS"):
        pytest.skip("core/_qos0.pyx is not built here")
    import random
    rng = random.Random(19)
    pure_topic, pure_scan, pure_end = qos0._plain_topic, qos0._scan_run, qos0._packet_end
    for _ in range(400):
        v5 = rng.choice((0, 1))
        parts = [encode(pub(rng.choice(("a", "a/b", "c")), bytes(rng.choice((1, 50, 200)))),
                        5 if v5 else 4) for _ in range(rng.randrange(1, 6))]
        data = bytearray(b"".join(parts))
        for _ in range(rng.randrange(3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data[: rng.randrange(2, len(data) + 1)])
        n = len(data)
        for pos in range(n - 1):
            assert compiled._packet_end(data, pos, n) == pure_end(data, pos, n)
            if data[pos] != 0x30:
                continue
            name = pure_topic(data, pos, n, v5)
            assert compiled._plain_topic(data, pos, n, v5) == name
            if name is not None:
                for limit, left, stop in ((300, 5, n), (60, 2, pos + 1), (10_000, 1, pos)):
                    assert (compiled._scan_run(data, pos, n, name, v5, limit, left, stop)
                            == pure_scan(data, pos, n, name, v5, limit, left, stop))


def _held_read(impl: str, max_queued_bytes: int) -> dict[str, Any]:
    with handling(impl):
        broker, clock = make_broker(BrokerSettings(max_queued_bytes=max_queued_bytes))
        a, b, p = FakeClient(broker, 4), FakeClient(broker, 4), FakeClient(broker, 4)
        a.connect("a")
        a.subscribe("h/#")
        b.connect("b")
        b.subscribe("h/#")
        p.connect("p")
        a.connection.pauseWriting()  # full: the publisher is held back, written through
        read(p, *(pub(f"h/{i % 3}", b"%d" % i + b"." * (i % 200)) for i in range(120)))
        for _ in range(5):  # (the general path's next shares)
            clock.advance(0)
        state = broker.flow.congested[a.connection]
        return {**outcome(broker, {"a": a, "b": b, "p": p}), "written": state.written,
                "waiters": len(state.waiters), "reading": p.transport.reading}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("max_queued_bytes", [0, 3000])
def test_a_paused_receiver_is_written_through_as_the_general_path_does(
        impl: str, max_queued_bytes: int) -> None:
    """A paused receiver while flow control holds the publisher back: the batch writes
    through to it and counts the bytes as ``Delivery.deliver`` does; past the queued
    bytes limit the rest queue, as on the general path."""
    expected = _held_read("general", max_queued_bytes)
    assert _held_read(impl, max_queued_bytes) == expected
    assert expected["written"] and expected["reading"] is False


def test_the_pure_module_runs_without_cython_installed() -> None:
    """``qos0.py`` uses Cython's pure-mode decorators; where Cython is not installed it
    runs with ``_nocython``'s, which change nothing (the counters as before)."""
    code = ("import sys; sys.modules['cython'] = None\n"
            "from mqtt_twisted.core import qos0, _nocython\n"
            "from mqtt_twisted.core.stats import BrokerStats\n"
            "assert qos0.cython is _nocython\n"
            "stats = BrokerStats()\n"
            "qos0._count(stats, 't', 40, 3, 400)\n"
            "print(stats.messages_received, stats.deliveries, stats.messages_sent,"
            " stats.bytes_sent)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["40", "120", "120", "1200"]
