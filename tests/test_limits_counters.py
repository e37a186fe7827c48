"""What each limit refused, counted once on ``BrokerStats`` and published under
``$SYS/broker/limits/`` (issue 14; the metrics endpoint reads the same counters):
clients paused for their rate and disconnected with 0x96, connections refused by the
per-address connection rate, and limit hits by kind."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from mqtt_twisted.adapters.kit import ConnectionLimit
from mqtt_twisted.adapters.listener import ListenerSettings
from mqtt_twisted.codec import Publish, encode
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.core.stats import LIMIT_KINDS, BrokerStats
from mqtt_twisted.core.systopics import SysTopics
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore
from mqtt_twisted.testing import FakeClient, make_broker

SYS_NAMES = {f"limits/{kind}" for kind in LIMIT_KINDS} | {
    "limits/client_rate/paused", "limits/client_rate/disconnected",
    "limits/connection_rate/refused"}


def test_every_counter_starts_at_zero_and_is_in_sys() -> None:
    """Each kind and rate counter is a $SYS topic from the first tick, at 0."""
    broker, clock = make_broker()
    values = SysTopics(broker).values(clock.seconds())
    assert {name: values[name] for name in SYS_NAMES} == dict.fromkeys(SYS_NAMES, "0")
    assert BrokerStats().as_dict()["limit_hits.sessions"] == 0


def test_limit_hits_by_kind() -> None:
    """A refusal by each limit counts once under its kind, and only refusals count."""
    settings = BrokerSettings(max_topic_levels=4, max_subscriptions=1,
                              max_retained_messages=1, max_sessions=2)
    broker, clock = make_broker(settings)
    c = FakeClient(broker, 5)
    c.connect("c")
    c.subscribe("a/b/c/d/e")  # topic: five levels
    c.subscribe("ok")
    c.subscribe("second")  # subscriptions
    c.publish("r/1", b"x", qos=1, retain=True)
    c.publish("r/2", b"x", qos=1, retain=True)  # retained
    FakeClient(broker, 4).connect("p", clean=False)  # sessions: c, p held
    FakeClient(broker, 4).connect("q", clean=False)  # sessions
    big = FakeClient(broker, 5)
    big.connect("big")
    big.send_bytes(encode(Publish("t", b"", 0, properties={
        P.USER_PROPERTY: [("k", "v")] * 200}), 5))  # packet_size (user properties)
    c.publish("a/b/c/d/e/f")  # topic: closes c
    assert broker.stats.limit_hits == {"packet_size": 1, "topic": 2, "subscriptions": 1,
                                       "retained": 1, "sessions": 1, "listener_full": 0,
                                       "offline_queue": 0, "queue_full": 0}
    values = SysTopics(broker).values(clock.seconds())
    assert (values["limits/topic"], values["limits/sessions"]) == ("2", "1")


def test_rate_counters_in_sys() -> None:
    """A client paused for its rate and a v5 client disconnected with 0x96 (its debt
    past 10 s) are published as they count."""
    broker, clock = make_broker(BrokerSettings(max_client_rate=10))
    paused = FakeClient(broker, 4)
    paused.connect("paused")
    paused.send_bytes(encode(Publish("t", b"x"), 4) * 50)  # 4 s of debt: paused
    flood = FakeClient(broker, 5)
    flood.connect("flood")
    flood.send_bytes(encode(Publish("t", b"x"), 5) * 200)  # 19 s of debt: 0x96
    assert (broker.stats.rate_pauses, broker.stats.rate_disconnects) == (1, 1)
    values = SysTopics(broker).values(clock.seconds())
    assert values["limits/client_rate/paused"] == "1"
    assert values["limits/client_rate/disconnected"] == "1"


def test_connection_refusals_by_why() -> None:
    """A listener's per-address rate and its connection limit count apart (both in
    connections_refused), through the gateway every adapter sees."""
    clock = Clock()
    service = BrokerService(clock, MemoryStore(clock))
    rate = ConnectionLimit(service.gateway, ListenerSettings(
        "mqtt", "tcp:0", 0, 10.0, maxConnectionRate=1))
    peer = IPv4Address("TCP", "10.0.0.9", 4242)
    assert [rate.admit(peer), rate.admit(peer)] == [True, False]
    full = ConnectionLimit(service.gateway, ListenerSettings("mqtt", "tcp:0", 1, 10.0))
    assert [full.admit("a"), full.admit("b"), full.admit("c")] == [True, False, False]
    stats = service.broker.stats
    assert (stats.connections_refused, stats.connection_rate_refusals,
            stats.limit_hits["listener_full"]) == (3, 1, 2)
    values = SysTopics(service.broker).values(clock.seconds())
    assert values["limits/connection_rate/refused"] == "1"
    assert values["limits/listener_full"] == "2"


def test_limit_hits_are_prometheus_metrics() -> None:
    """Every kind of limit hit, and the connection-rate refusals, are samples of
    ``mqtt_limit_refusals`` (docs/metrics.md): the metrics read the same counters as
    $SYS."""
    from mqtt_twisted.core.metrics import broker_families

    broker, clock = make_broker()
    for n, kind in enumerate(LIMIT_KINDS, 1):
        for _ in range(n):
            broker.stats.limit_hit(kind)
    broker.stats.connection_refused("connection_rate")
    family = {f.name: f for f in broker_families(broker, clock.seconds())}[
        "mqtt_limit_refusals"]
    expected = {kind: n for n, kind in enumerate(LIMIT_KINDS, 1)}
    expected["connection_rate"] = 1
    assert {labels[0]: value for labels, value in family.samples} == expected
