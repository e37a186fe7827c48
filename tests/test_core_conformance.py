"""Sans-IO regression tests for the protocol defects outside testing found.

Each test drives the broker with raw packets on a fake clock and checks the bytes
and packets that come back: a delayed will on a clean reconnect, publishes to the
broker's ``$SYS`` tree, packets only a server may send, CONNACKs beyond the client's
maximum packet size, forbidden PUBLISH properties, MQTT 3.1's client id and CONNACK,
v5 reason codes, and the receive maximum for QoS 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from mqtt_twisted.codec import (
    ConnAck,
    Connect,
    Disconnect,
    PingResp,
    PubAck,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    UnsubAck,
    Will,
    encode,
)
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.constants import ReasonCode as RC
from mqtt_twisted.core import inspection
from mqtt_twisted.core.broker import Broker
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.errors import AuthenticationError
from mqtt_twisted.store.memory import MemoryStore
from mqtt_twisted.testing import FakeClient, make_broker


def publishes(packets: list) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


@pytest.fixture
def log_events() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted while the test runs."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


# --- 1. a delayed will and a clean reconnect ------------------------------------------------


def test_clean_reconnect_within_will_delay_gets_connack_and_publishes_the_will() -> None:
    """A v5 client with session expiry 30 and will delay 3 drops and reconnects with
    Clean Start 1 within the delay: CONNACK (session present 0) at once, and the will
    goes out because the old session ended [MQTT-3.1.2-4, MQTT-3.1.3-9]; never twice."""
    broker, clock = make_broker()
    watcher = FakeClient(broker, 5)
    watcher.connect("watcher")
    watcher.subscribe("wills/#")
    client = FakeClient(broker, 5)
    client.connect("w", clean=False, will=Will("wills/w", b"gone", 0, False,
                                              {P.WILL_DELAY_INTERVAL: 3}),
                   properties={P.SESSION_EXPIRY_INTERVAL: 30})
    client.drop()
    clock.advance(1)
    assert publishes(watcher.received()) == []
    again = FakeClient(broker, 5)
    (connack,) = again.connect("w", clean=True)
    assert isinstance(connack, ConnAck)
    assert (connack.reason_code, connack.session_present) == (0, False)
    assert [(p.topic, p.payload) for p in publishes(watcher.received())] == [("wills/w", b"gone")]
    clock.advance(10)
    assert publishes(watcher.received()) == []
    assert broker.stats.wills_published == 1


def test_resumed_session_within_will_delay_sends_no_will() -> None:
    """The same reconnect with Clean Start 0 continues the session: no will [MQTT-3.1.3-9]."""
    broker, clock = make_broker()
    watcher = FakeClient(broker, 5)
    watcher.connect("watcher")
    watcher.subscribe("wills/#")
    client = FakeClient(broker, 5)
    client.connect("w", clean=False, will=Will("wills/w", b"gone", 0, False,
                                              {P.WILL_DELAY_INTERVAL: 3}),
                   properties={P.SESSION_EXPIRY_INTERVAL: 30})
    client.drop()
    clock.advance(1)
    (connack,) = FakeClient(broker, 5).connect("w", clean=False,
                                               properties={P.SESSION_EXPIRY_INTERVAL: 30})
    assert (connack.reason_code, connack.session_present) == (0, True)
    clock.advance(10)
    assert publishes(watcher.received()) == []


def test_connect_path_failure_is_answered_not_hung(log_events: list) -> None:
    """An unexpected error after the store's lock answers CONNACK 0x80 and closes, with
    the failure logged, instead of leaving the CONNECT unanswered until the deadline."""
    broker, _ = make_broker()

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    broker.connector._configure_session = broken  # type: ignore[method-assign]
    client = FakeClient(broker, 5)
    (connack,) = client.connect("x")
    assert connack.reason_code == RC.UNSPECIFIED_ERROR
    assert client.transport.closed
    assert any(e.get("log_failure") is not None for e in log_events)


# --- 2. $SYS is the broker's ------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["$SYS/broker/clients/connected", "$SYS", "$share/g/t"])
def test_v5_publish_to_reserved_topics_refused(topic: str) -> None:
    """v5: QoS 1 gets PUBACK 0x87, QoS 2 PUBREC 0x87, QoS 0 a DISCONNECT 0x87; nothing is
    routed or retained."""
    broker, _ = make_broker()
    watcher = FakeClient(broker, 5)
    watcher.connect("watcher")
    watcher.subscribe("$SYS/#", "$share/#")
    c = FakeClient(broker, 5)
    c.connect("spoofer")
    assert c.publish(topic, b"999", qos=1, retain=True, packet_id=1) == [
        PubAck(1, RC.NOT_AUTHORIZED)]
    assert c.publish(topic, b"999", qos=2, retain=True, packet_id=2) == [
        PubRec(2, RC.NOT_AUTHORIZED)]
    out = c.publish(topic, b"999", qos=0, retain=True)
    assert out == [Disconnect(RC.NOT_AUTHORIZED)] and c.transport.closed
    assert publishes(watcher.received()) == []
    assert broker.store.matchRetained("#").result == []
    assert broker.store.matchRetained("$SYS/#").result == []


def test_v3_publish_to_sys_dropped_with_one_log_line(log_events: list) -> None:
    """v3 has no refusal: QoS 1/2 are acknowledged and dropped, QoS 0 dropped; the client
    stays connected and one line is logged however often it tries."""
    broker, _ = make_broker()
    watcher = FakeClient(broker, 4)
    watcher.connect("watcher")
    watcher.subscribe("$SYS/#")
    c = FakeClient(broker, 4)
    c.connect("spoofer")
    for _ in range(3):
        assert c.publish("$SYS/broker/uptime", b"1", retain=True) == []
    assert c.publish("$SYS/broker/uptime", b"1", qos=1, packet_id=7) == [PubAck(7)]
    assert c.publish("$SYS/broker/uptime", b"1", qos=2, packet_id=8) == [PubRec(8)]
    assert not c.transport.closed
    assert publishes(watcher.received()) == []
    assert broker.store.matchRetained("$SYS/#").result == []
    lines = [e for e in log_events if "Dropped a PUBLISH" in e.get("log_format", "")]
    assert len(lines) == 1


def test_broker_still_publishes_its_own_sys_topics() -> None:
    """The refusal is for clients: the broker's $SYS updates still reach subscribers."""
    from mqtt_twisted.core.systopics import SysTopics

    broker, _ = make_broker()
    watcher = FakeClient(broker, 4)
    watcher.connect("watcher")
    watcher.subscribe("$SYS/broker/clients/connected")
    SysTopics(broker).tick()
    assert [p.payload for p in publishes(watcher.received())] == [b"1"]


# --- 3. packets only a server sends ---------------------------------------------------------


SERVER_ONLY = [ConnAck(False, 0), SubAck(1, [0]), UnsubAck(1, [0]), PingResp()]


@pytest.mark.parametrize("packet", SERVER_ONLY, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("version", [4, 5])
def test_server_only_packet_is_a_protocol_error(packet: Any, version: int,
                                                log_events: list) -> None:
    """CONNACK, SUBACK, UNSUBACK or PINGRESP from a client: v5 DISCONNECT 0x82, v3 close;
    one log line and no traceback; the QoS 1 PUBLISH after it in the same read is not
    handled, the one before it is."""
    broker, _ = make_broker()
    watcher = FakeClient(broker, 4)
    watcher.connect("watcher")
    watcher.subscribe("t/#", qos=1)
    c = FakeClient(broker, version)
    c.connect("bad")
    if version == 4 and isinstance(packet, UnsubAck):
        packet = UnsubAck(1)  # (v3's has no reason codes)
    data = (encode(Publish("t/before", b"", 1, False, False, 1), version)
            + encode(packet, version)
            + encode(Publish("t/after", b"", 1, False, False, 2), version))
    c.send_bytes(data)
    out = c.received()
    assert out[0] == PubAck(1)
    if version == 5:
        assert out[1:] == [Disconnect(RC.PROTOCOL_ERROR)]
    else:
        assert out[1:] == []
    assert c.transport.closed
    assert [p.topic for p in publishes(watcher.received())] == ["t/before"]
    assert not [e for e in log_events if e.get("log_failure") is not None]
    # One line: the disconnect line, saying why.
    assert len([e for e in log_events if e.get("action") == "disconnect"
                and e.get("reason") == "protocol error"]) == 1
    assert broker.stats.protocol_errors == 1


# --- 4. CONNACK within the client's maximum packet size -----------------------------------


class _Refuser:
    def authenticate(self, credentials: Any) -> Any:
        raise AuthenticationError("this broker does not know you, " * 3)


def test_refusal_connack_drops_reason_string_to_fit() -> None:
    """A refusal CONNACK loses its reason string to fit the client's maximum packet size
    [MQTT-3.2.2-19]; the code still reaches the client."""
    broker, _ = make_broker(authenticator=_Refuser())
    c = FakeClient(broker, 5)
    (connack,) = c.connect("small", properties={P.MAXIMUM_PACKET_SIZE: 16})
    assert connack.reason_code == RC.BAD_USER_NAME_OR_PASSWORD
    assert P.REASON_STRING not in connack.properties
    assert len(c.transport.written) <= 16
    big = FakeClient(broker, 5)
    (connack,) = big.connect("big")
    assert P.REASON_STRING in connack.properties


def test_connack_that_cannot_fit_closes_without_sending() -> None:
    """A success CONNACK (here with a 37-byte assigned client id) that exceeds the
    client's maximum packet size is not sent: the connection closes, and no will."""
    broker, _ = make_broker()
    watcher = FakeClient(broker, 5)
    watcher.connect("watcher")
    watcher.subscribe("w")
    c = FakeClient(broker, 5)
    out = c.connect("", will=Will("w", b"x", 0, False, {}),
                    properties={P.MAXIMUM_PACKET_SIZE: 20})
    assert out == [] and c.transport.written == b""
    assert c.transport.closed
    assert publishes(watcher.received()) == []
    assert inspection.session_ids(broker) == {"watcher"}  # only the watcher's


def test_connack_that_fits_is_sent() -> None:
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    (connack,) = c.connect("fits", properties={P.MAXIMUM_PACKET_SIZE: 64})
    assert connack.reason_code == 0 and not c.transport.closed


# --- 5. PUBLISH properties a client may not send -----------------------------------------------


@pytest.mark.parametrize("props", [{P.RESPONSE_TOPIC: "reply/+"}, {P.RESPONSE_TOPIC: "r/#"},
                                   {P.SUBSCRIPTION_IDENTIFIER: [1]}],
                         ids=["response topic +", "response topic #", "subscription id"])
@pytest.mark.parametrize("qos", [0, 1])
def test_forbidden_publish_properties_are_protocol_errors(props: dict, qos: int) -> None:
    """[MQTT-3.3.2-14] and [MQTT-3.3.4-6]: DISCONNECT 0x82, nothing forwarded."""
    broker, _ = make_broker()
    watcher = FakeClient(broker, 5)
    watcher.connect("watcher")
    watcher.subscribe("t")
    c = FakeClient(broker, 5)
    c.connect("p")
    out = c.publish("t", b"x", qos=qos, properties=dict(props))
    assert out == [Disconnect(RC.PROTOCOL_ERROR)]
    assert c.transport.closed
    assert publishes(watcher.received()) == []


def test_response_topic_without_wildcards_is_forwarded() -> None:
    broker, _ = make_broker()
    watcher = FakeClient(broker, 5)
    watcher.connect("watcher")
    watcher.subscribe("t")
    c = FakeClient(broker, 5)
    c.connect("p")
    c.publish("t", b"x", properties={P.RESPONSE_TOPIC: "reply/p"})
    (got,) = publishes(watcher.received())
    assert got.properties[P.RESPONSE_TOPIC] == "reply/p"


# --- 6. MQTT 3.1 ------------------------------------------------------------------------------


def test_mqtt31_empty_client_id_refused_with_code_2() -> None:
    """MQTT 3.1 client ids have 1..23 characters: an empty one gets return code 2."""
    broker, _ = make_broker()
    c = FakeClient(broker, 3)
    c.send(Connect("", 3, True, 0))
    assert bytes(c.transport.written) == b"\x20\x02\x00\x02"
    assert c.transport.closed
    assert inspection.session_ids(broker) == set()


def test_mqtt31_connack_has_no_session_present_flag() -> None:
    """The first CONNACK byte is reserved in 3.1, even for a resumed session; 3.1.1 sets it."""
    broker, _ = make_broker()
    for version, flags in ((3, 0), (4, 1)):
        first = FakeClient(broker, version)
        first.connect(f"p{version}", clean=False)
        first.drop()
        again = FakeClient(broker, version)
        again.send(Connect(f"p{version}", version, False, 0))
        assert bytes(again.transport.written) == bytes((0x20, 2, flags, 0))


# --- 7. reason codes --------------------------------------------------------------------------


def test_v5_empty_topic_without_alias_is_0x82() -> None:
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("p")
    c.send_bytes(bytes.fromhex("30 04 00 00 00 78"))
    assert c.received() == [Disconnect(RC.PROTOCOL_ERROR)]


def test_unsubscribe_of_invalid_filter_answers_0x8f() -> None:
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("u")
    c.subscribe("ok/+")
    (ack,) = c.unsubscribe("a/#/b", "ok/+", "nothing", "x+y/#")
    assert ack.reason_codes == [RC.TOPIC_FILTER_INVALID, 0, RC.NO_SUBSCRIPTION_EXISTED,
                                RC.TOPIC_FILTER_INVALID]


def test_unsolicited_failing_pubrec_gets_no_pubrel() -> None:
    """A PUBREC with a failure code ends the flow; for an unknown packet id nothing is
    answered (a successful unsolicited PUBREC still gets PUBREL 0x92)."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("r")
    c.send(PubRec(9, RC.UNSPECIFIED_ERROR))
    assert c.received() == []
    c.send(PubRec(10))
    assert c.received() == [PubRel(10, RC.PACKET_IDENTIFIER_NOT_FOUND)]
    assert not c.transport.closed


# --- 9. receive maximum counts QoS 1 too --------------------------------------------------------


class _SlowStore(MemoryStore):
    """A memory store whose outbound writes answer only when the test says so, as a
    network store's do: QoS 1 PUBACKs then wait for them."""

    persistsMessages = True

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.pending: list[Deferred[None]] = []

    def storeOutbound(self, clientId: str, outbound: Any) -> Any:
        super().storeOutbound(clientId, outbound)
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d

    def release(self) -> None:
        pending, self.pending = self.pending, []
        for d in pending:
            d.callback(None)


def test_receive_maximum_counts_unacknowledged_qos1() -> None:
    """QoS 1 PUBLISHes whose PUBACK waits for the store count towards the receive
    maximum: the third of three beyond 2 gets DISCONNECT 0x93; acknowledged ones free
    their place."""
    clock = Clock()
    store = _SlowStore(clock)
    broker = Broker(clock, store, BrokerSettings(receive_maximum=2))
    sub = FakeClient(broker, 5)
    sub.connect("sub", clean=False, properties={P.SESSION_EXPIRY_INTERVAL: 60})
    sub.subscribe("t", qos=1)
    sub.drop()  # offline: its QoS 1 messages are stored
    pub = FakeClient(broker, 5)
    (connack,) = pub.connect("pub")
    assert connack.properties[P.RECEIVE_MAXIMUM] == 2
    assert pub.publish("t", b"1", qos=1) == []
    assert pub.publish("t", b"2", qos=1) == []
    store.release()
    assert [type(p) for p in pub.received()] == [PubAck, PubAck]
    pub.publish("t", b"3", qos=1)
    pub.publish("t", b"4", qos=1)
    assert not pub.transport.closed
    out = pub.publish("t", b"5", qos=1)
    assert out == [Disconnect(RC.RECEIVE_MAXIMUM_EXCEEDED)]
    assert pub.transport.closed


def test_receive_maximum_not_held_against_v3_clients() -> None:
    """v3 clients are never told a receive maximum, so none is enforced on them."""
    broker, _ = make_broker(BrokerSettings(receive_maximum=1))
    c = FakeClient(broker, 4)
    c.connect("v3")
    for pid in (1, 2, 3):
        assert c.publish("t", b"", qos=2, packet_id=pid) == [PubRec(pid)]
    assert not c.transport.closed

