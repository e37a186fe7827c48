"""Sans-IO tests of the MQTT 5.0 behaviour of the broker core, on a fake clock."""

from __future__ import annotations

from scramp import ScramClient

from mqtt_twisted.auth.scram import ScramAuthenticator
from mqtt_twisted.codec import Auth, ConnAck, Connect, Disconnect, PubAck, Publish, SubAck
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.constants import ReasonCode as RC
from mqtt_twisted.core import inspection
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.core.systopics import SysTopics
from mqtt_twisted.testing import FakeClient, make_broker


def publishes(packets: list) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


def test_session_expiry_keeps_session_until_interval_passes() -> None:
    """A v5 session with expiry 10 survives a drop for 10 s, then is freed."""
    broker, clock = make_broker()
    c = FakeClient(broker, 5)
    c.connect("s", clean=False, properties={P.SESSION_EXPIRY_INTERVAL: 10})
    c.subscribe("t", qos=1)
    c.drop()
    clock.advance(9)
    assert "s" in inspection.session_ids(broker)
    clock.advance(1.5)
    assert "s" not in inspection.session_ids(broker)
    assert inspection.subscription_count(broker) == 0


def test_session_expiry_zero_ends_session_with_connection() -> None:
    """Expiry 0 (the v5 default) frees the session when the connection ends."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("s", clean=False)
    c.subscribe("t")
    c.drop()
    assert "s" not in inspection.session_ids(broker)


def test_session_expiry_never_for_max_value() -> None:
    """0xFFFFFFFF means the session never expires (MQTT 5 §3.1.2.11.2) on a broker
    without a maximum session expiry."""
    broker, clock = make_broker(BrokerSettings(max_session_expiry=None))
    c = FakeClient(broker, 5)
    c.connect("s", clean=False, properties={P.SESSION_EXPIRY_INTERVAL: 0xFFFFFFFF})
    c.drop()
    clock.advance(10**7)
    assert "s" in inspection.session_ids(broker)


def test_disconnect_may_not_raise_expiry_from_zero() -> None:
    """DISCONNECT setting a non-zero expiry after CONNECT's 0 is a protocol error."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("s")
    c.send(Disconnect(0, {P.SESSION_EXPIRY_INTERVAL: 30}))
    assert c.transport.closed
    assert c.received()[-1] == Disconnect(RC.PROTOCOL_ERROR)
    c.drop()  # the transport reports the close
    assert "s" not in inspection.session_ids(broker)


def test_disconnect_can_shorten_expiry() -> None:
    """DISCONNECT may change a non-zero expiry; the new value applies."""
    broker, clock = make_broker()
    c = FakeClient(broker, 5)
    c.connect("s", clean=False, properties={P.SESSION_EXPIRY_INTERVAL: 100})
    c.send(Disconnect(0, {P.SESSION_EXPIRY_INTERVAL: 5}))
    c.drop()
    clock.advance(6)
    assert "s" not in inspection.session_ids(broker)


def test_receive_maximum_limits_outbound_inflight() -> None:
    """The broker never has more unacked QoS 1 PUBLISHes out than the client's receive max."""
    broker, _ = make_broker()
    sub = FakeClient(broker, 5)
    sub.connect("sub", properties={P.RECEIVE_MAXIMUM: 2})
    sub.subscribe("t", qos=1)
    pub = FakeClient(broker, 5)
    pub.connect("pub")
    for i in range(5):
        pub.publish("t", b"%d" % i, qos=1)
    got = publishes(sub.received())
    assert [p.payload for p in got] == [b"0", b"1"]
    got2 = publishes(sub.ack(got[0]))
    assert [p.payload for p in got2] == [b"2"]


def test_receive_maximum_exceeded_by_client_disconnects_0x93() -> None:
    """A client with more unreleased QoS 2 PUBLISHes than our receive maximum gets 0x93."""
    broker, _ = make_broker(BrokerSettings(receive_maximum=2))
    c = FakeClient(broker, 5)
    assert c.connect("c")[0].properties[P.RECEIVE_MAXIMUM] == 2
    c.publish("t", b"1", qos=2)
    c.publish("t", b"2", qos=2)
    out = c.publish("t", b"3", qos=2)
    assert isinstance(out[-1], Disconnect) and out[-1].reason_code == RC.RECEIVE_MAXIMUM_EXCEEDED
    assert c.transport.closed


def test_maximum_packet_size_outbound_drops_for_that_client_only() -> None:
    """A PUBLISH larger than a client's maximum packet size is not sent to it [MQTT-3.1.2-25]."""
    broker, _ = make_broker()
    small = FakeClient(broker, 5)
    small.connect("small", properties={P.MAXIMUM_PACKET_SIZE: 64})
    small.subscribe("t", qos=1)
    big = FakeClient(broker, 5)
    big.connect("big")
    big.subscribe("t", qos=1)
    pub = FakeClient(broker, 5)
    pub.connect("pub")
    pub.publish("t", b"x" * 200, qos=1)
    pub.publish("t", b"ok", qos=1)
    assert [p.payload for p in publishes(small.received())] == [b"ok"]
    assert len(publishes(big.received())) == 2
    assert inspection.session_info(broker, "small") is not None
    assert all(m.payload == b"ok" for m in inspection.held_messages(broker, "small")
               if m.in_flight)


def test_inbound_packet_too_large_disconnects_0x95() -> None:
    """A packet over our maximum packet size is refused with DISCONNECT 0x95."""
    broker, _ = make_broker(BrokerSettings(max_packet_size=100))
    c = FakeClient(broker, 5)
    assert c.connect("c")[0].properties[P.MAXIMUM_PACKET_SIZE] == 100
    out = c.publish("t", b"x" * 200)
    assert isinstance(out[-1], Disconnect) and out[-1].reason_code == RC.PACKET_TOO_LARGE


def test_server_keep_alive_overrides_client() -> None:
    """A client asking for more keep alive than allowed gets SERVER_KEEP_ALIVE and is held to it."""
    broker, clock = make_broker(BrokerSettings(max_keepalive=10))
    c = FakeClient(broker, 5)
    ack = c.connect("c", keep_alive=0)[0]
    assert ack.properties[P.SERVER_KEEP_ALIVE] == 10
    clock.advance(14)
    assert not c.transport.closed
    clock.advance(2)
    assert c.transport.closed


def test_keepalive_timeout_sends_0x8d() -> None:
    """A v5 client silent for 1.5 x keep alive gets DISCONNECT 0x8D [MQTT-3.1.2-24]."""
    broker, clock = make_broker()
    c = FakeClient(broker, 5)
    c.connect("c", keep_alive=2)
    clock.advance(3.1)
    out = c.received()
    assert isinstance(out[-1], Disconnect) and out[-1].reason_code == RC.KEEP_ALIVE_TIMEOUT


def test_assigned_client_identifier() -> None:
    """An empty client id gets an ASSIGNED_CLIENT_IDENTIFIER in CONNACK."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    ack = c.connect("", clean=False)[0]
    assigned = ack.properties[P.ASSIGNED_CLIENT_IDENTIFIER]
    assert assigned in inspection.session_ids(broker)


def test_connack_capabilities_reflect_settings() -> None:
    """CONNACK advertises maximum QoS, retain, wildcard, shared and subscription-id availability."""
    settings = BrokerSettings(maximum_qos=1, retain_available=False, shared_subscriptions=False,
                              wildcard_subscriptions=False, subscription_identifiers=False)
    broker, _ = make_broker(settings)
    c = FakeClient(broker, 5)
    props = c.connect("c")[0].properties
    assert props[P.MAXIMUM_QOS] == 1
    assert props[P.RETAIN_AVAILABLE] == 0
    assert props[P.SHARED_SUBSCRIPTION_AVAILABLE] == 0
    assert props[P.WILDCARD_SUBSCRIPTION_AVAILABLE] == 0
    assert props[P.SUBSCRIPTION_IDENTIFIER_AVAILABLE] == 0
    codes = c.subscribe("$share/g/t", "a/+")[0].reason_codes
    assert codes == [RC.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                     RC.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED]


def test_retain_not_supported_disconnects_0x9a() -> None:
    """A retained PUBLISH when retain is unavailable gets DISCONNECT 0x9A."""
    broker, _ = make_broker(BrokerSettings(retain_available=False))
    c = FakeClient(broker, 5)
    c.connect("c")
    out = c.publish("t", b"x", retain=True)
    assert isinstance(out[-1], Disconnect) and out[-1].reason_code == RC.RETAIN_NOT_SUPPORTED


def test_response_information_when_requested() -> None:
    """RESPONSE_INFORMATION is sent only to clients that request it."""
    broker, _ = make_broker(BrokerSettings(response_information="resp/{client_id}"))
    a = FakeClient(broker, 5)
    assert a.connect("a", properties={P.REQUEST_RESPONSE_INFORMATION: 1})[0].properties[
        P.RESPONSE_INFORMATION] == "resp/a"
    b = FakeClient(broker, 5)
    assert P.RESPONSE_INFORMATION not in b.connect("b")[0].properties


def test_inbound_topic_alias() -> None:
    """A topic alias set once maps later empty-topic PUBLISHes to that topic."""
    broker, _ = make_broker()
    sub = FakeClient(broker, 5)
    sub.connect("sub")
    sub.subscribe("long/topic/name")
    pub = FakeClient(broker, 5)
    pub.connect("pub")
    pub.publish("long/topic/name", b"1", properties={P.TOPIC_ALIAS: 3})
    pub.publish("", b"2", properties={P.TOPIC_ALIAS: 3})
    got = publishes(sub.received())
    assert [(p.topic, p.payload) for p in got] == [("long/topic/name", b"1"),
                                                   ("long/topic/name", b"2")]
    assert all(P.TOPIC_ALIAS not in p.properties for p in got)


def test_inbound_topic_alias_out_of_range_is_0x94() -> None:
    """An alias above our topic alias maximum gets DISCONNECT 0x94."""
    broker, _ = make_broker(BrokerSettings(topic_alias_maximum=2))
    c = FakeClient(broker, 5)
    c.connect("c")
    out = c.publish("t", b"x", properties={P.TOPIC_ALIAS: 5})
    assert isinstance(out[-1], Disconnect) and out[-1].reason_code == RC.TOPIC_ALIAS_INVALID


def test_unknown_inbound_alias_is_protocol_error() -> None:
    """An empty topic with an alias never set is a protocol error."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("c")
    out = c.publish("", b"x", properties={P.TOPIC_ALIAS: 1})
    assert isinstance(out[-1], Disconnect) and out[-1].reason_code == RC.PROTOCOL_ERROR


def test_outbound_topic_alias_lru_policy() -> None:
    """With the lru policy, repeated topics go out as aliases within the client's maximum."""
    broker, _ = make_broker(BrokerSettings(outbound_topic_aliases="lru"))
    sub = FakeClient(broker, 5)
    sub.connect("sub", properties={P.TOPIC_ALIAS_MAXIMUM: 1})
    sub.subscribe("#")
    pub = FakeClient(broker, 5)
    pub.connect("pub")
    for topic in ("a", "a", "b", "b", "a"):
        pub.publish(topic, b"x")
    got = publishes(sub.received())
    assert [(p.topic, p.properties.get(P.TOPIC_ALIAS)) for p in got] == [
        ("a", 1), ("", 1), ("b", 1), ("", 1), ("a", 1)]


def test_no_outbound_alias_by_default() -> None:
    """By default the broker sends full topics even to clients accepting aliases."""
    broker, _ = make_broker()
    sub = FakeClient(broker, 5)
    sub.connect("sub", properties={P.TOPIC_ALIAS_MAXIMUM: 5})
    sub.subscribe("a")
    pub = FakeClient(broker, 5)
    pub.connect("pub")
    pub.publish("a", b"1")
    pub.publish("a", b"2")
    assert [p.topic for p in publishes(sub.received())] == ["a", "a"]


def test_message_expiry_drops_queued_message_and_ages_interval() -> None:
    """Queued messages expire; delivered ones carry the interval less the time held."""
    broker, clock = make_broker()
    sub = FakeClient(broker, 5)
    sub.connect("sub", clean=False, properties={P.SESSION_EXPIRY_INTERVAL: 1000})
    sub.subscribe("t", qos=1)
    sub.drop()
    pub = FakeClient(broker, 5)
    pub.connect("pub")
    pub.publish("t", b"short", qos=1, properties={P.MESSAGE_EXPIRY_INTERVAL: 5})
    pub.publish("t", b"long", qos=1, properties={P.MESSAGE_EXPIRY_INTERVAL: 100})
    clock.advance(10)
    again = FakeClient(broker, 5)
    got = publishes(again.connect("sub", clean=False,
                                  properties={P.SESSION_EXPIRY_INTERVAL: 1000}))
    assert [p.payload for p in got] == [b"long"]
    assert got[0].properties[P.MESSAGE_EXPIRY_INTERVAL] == 90


def test_retained_message_expires() -> None:
    """An expired retained message is not sent to new subscribers."""
    broker, clock = make_broker()
    pub = FakeClient(broker, 5)
    pub.connect("pub")
    pub.publish("r", b"x", retain=True, properties={P.MESSAGE_EXPIRY_INTERVAL: 5})
    clock.advance(6)
    sub = FakeClient(broker, 5)
    sub.connect("sub")
    assert publishes(sub.subscribe("r")) == []


def test_properties_pass_through_in_order() -> None:
    """Content type, response topic, correlation data, PFI and user properties reach subscribers
    unchanged, user properties in order."""
    broker, _ = make_broker()
    sub = FakeClient(broker, 5)
    sub.connect("sub")
    sub.subscribe("req")
    pub = FakeClient(broker, 5)
    pub.connect("pub")
    props = {P.CONTENT_TYPE: "application/json", P.RESPONSE_TOPIC: "resp/1",
             P.CORRELATION_DATA: b"\x01\x02", P.PAYLOAD_FORMAT_INDICATOR: 1,
             P.USER_PROPERTY: [("b", "2"), ("a", "1"), ("b", "3")]}
    pub.publish("req", b"{}", properties=dict(props))
    (got,) = publishes(sub.received())
    assert got.properties == props


def test_v3_subscriber_gets_v5_message_without_properties() -> None:
    """A v3.1.1 subscriber receives a v5 publisher's message, properties stripped."""
    broker, _ = make_broker()
    sub = FakeClient(broker, 4)
    sub.connect("sub")
    sub.subscribe("t")
    pub = FakeClient(broker, 5)
    pub.connect("pub")
    pub.publish("t", b"x", properties={P.USER_PROPERTY: [("k", "v")]})
    (got,) = publishes(sub.received())
    assert got.payload == b"x" and got.properties == {}


def test_payload_format_invalid_when_enabled() -> None:
    """A non-UTF-8 payload claiming UTF-8 gets PUBACK 0x99 when validation is on."""
    broker, _ = make_broker(BrokerSettings(validate_utf8_payload=True))
    c = FakeClient(broker, 5)
    c.connect("c")
    out = c.publish("t", b"\xff\xfe", qos=1, properties={P.PAYLOAD_FORMAT_INDICATOR: 1})
    assert isinstance(out[0], PubAck) and out[0].reason_code == RC.PAYLOAD_FORMAT_INVALID


def test_no_matching_subscribers_reason() -> None:
    """A v5 QoS 1 PUBLISH nobody subscribed to is acked with 0x10."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("c")
    out = c.publish("nobody", b"x", qos=1)
    assert out == [PubAck(1, RC.NO_MATCHING_SUBSCRIBERS)]


def test_subscription_identifiers_delivered() -> None:
    """Each delivered message carries the identifiers of every subscription it matched."""
    broker, _ = make_broker()
    sub = FakeClient(broker, 5)
    sub.connect("sub")
    from mqtt_twisted.codec import Subscribe, Subscription
    sub.send(Subscribe(1, [Subscription("a/+")], {P.SUBSCRIPTION_IDENTIFIER: 7}))
    sub.send(Subscribe(2, [Subscription("a/#")], {P.SUBSCRIPTION_IDENTIFIER: 9}))
    sub.received()
    pub = FakeClient(broker, 5)
    pub.connect("pub")
    pub.publish("a/b", b"x")
    (got,) = publishes(sub.received())
    assert sorted(got.properties[P.SUBSCRIPTION_IDENTIFIER]) == [7, 9]


def test_no_local() -> None:
    """With no local, a client does not receive its own publications."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("c")
    c.subscribe("t", no_local=True)
    assert publishes(c.publish("t", b"x")) == []
    other = FakeClient(broker, 5)
    other.connect("o")
    other.publish("t", b"y")
    assert [p.payload for p in publishes(c.received())] == [b"y"]


def test_retain_as_published() -> None:
    """Retain as published keeps the retain flag on live forwarding; otherwise it is cleared."""
    broker, _ = make_broker()
    rap = FakeClient(broker, 5)
    rap.connect("rap")
    rap.subscribe("t", retain_as_published=True)
    plain = FakeClient(broker, 5)
    plain.connect("plain")
    plain.subscribe("t")
    pub = FakeClient(broker, 5)
    pub.connect("pub")
    pub.publish("t", b"x", retain=True)
    assert publishes(rap.received())[0].retain is True
    assert publishes(plain.received())[0].retain is False


def test_retain_handling_options() -> None:
    """Retain handling 0 sends retained always, 1 only on a new subscription, 2 never."""
    broker, _ = make_broker()
    pub = FakeClient(broker, 5)
    pub.connect("pub")
    pub.publish("r", b"kept", retain=True)
    c = FakeClient(broker, 5)
    c.connect("c")
    assert len(publishes(c.subscribe("r", retain_handling=0))) == 1
    assert len(publishes(c.subscribe("r", retain_handling=0))) == 1
    assert len(publishes(c.subscribe("r", retain_handling=1))) == 0
    c.unsubscribe("r")
    assert len(publishes(c.subscribe("r", retain_handling=1))) == 1
    c.unsubscribe("r")
    assert len(publishes(c.subscribe("r", retain_handling=2))) == 0


def test_unsuback_reason_codes() -> None:
    """UNSUBACK says 0x11 for a filter that was not subscribed."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("c")
    c.subscribe("a")
    (ack,) = c.unsubscribe("a", "b")
    assert ack.reason_codes == [0, RC.NO_SUBSCRIPTION_EXISTED]


def test_suback_topic_filter_invalid() -> None:
    """A malformed filter gets 0x8F in a v5 SUBACK while the others are granted."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("c")
    (ack,) = c.subscribe("a/#/b", "ok", qos=1)
    assert ack == SubAck(1, [RC.TOPIC_FILTER_INVALID, 1])


def test_will_delay_cancelled_by_reconnect() -> None:
    """A will with a delay is not sent if the client reconnects within it [MQTT-3.1.3-9]."""
    from mqtt_twisted.codec import Will
    broker, clock = make_broker()
    watcher = FakeClient(broker, 5)
    watcher.connect("w")
    watcher.subscribe("will")
    c = FakeClient(broker, 5)
    c.connect("c", clean=False, will=Will("will", b"gone", 0, False, {P.WILL_DELAY_INTERVAL: 5}),
              properties={P.SESSION_EXPIRY_INTERVAL: 60})
    c.drop()
    clock.advance(3)
    FakeClient(broker, 5).connect("c", clean=False,
                                  properties={P.SESSION_EXPIRY_INTERVAL: 60})
    clock.advance(10)
    assert publishes(watcher.received()) == []


def test_will_delay_elapses_and_will_properties_pass() -> None:
    """A delayed will is published after its delay, with its properties."""
    from mqtt_twisted.codec import Will
    broker, clock = make_broker()
    watcher = FakeClient(broker, 5)
    watcher.connect("w")
    watcher.subscribe("will")
    c = FakeClient(broker, 5)
    c.connect("c", will=Will("will", b"gone", 0, False, {P.WILL_DELAY_INTERVAL: 5,
                                                          P.CONTENT_TYPE: "text/plain"}),
              properties={P.SESSION_EXPIRY_INTERVAL: 60})
    c.drop()
    clock.advance(4)
    assert publishes(watcher.received()) == []
    clock.advance(2)
    (will,) = publishes(watcher.received())
    assert will.payload == b"gone" and will.properties == {P.CONTENT_TYPE: "text/plain"}


def test_will_sent_at_session_end_before_delay() -> None:
    """The session ending (expiry shorter than the will delay) publishes the will then."""
    from mqtt_twisted.codec import Will
    broker, clock = make_broker()
    watcher = FakeClient(broker, 5)
    watcher.connect("w")
    watcher.subscribe("will")
    c = FakeClient(broker, 5)
    c.connect("c", will=Will("will", b"gone", 0, False, {P.WILL_DELAY_INTERVAL: 100}),
              properties={P.SESSION_EXPIRY_INTERVAL: 3})
    c.drop()
    clock.advance(3.5)
    assert len(publishes(watcher.received())) == 1


def test_disconnect_with_will_message() -> None:
    """DISCONNECT with reason 0x04 still publishes the will."""
    from mqtt_twisted.codec import Will
    broker, _ = make_broker()
    watcher = FakeClient(broker, 5)
    watcher.connect("w")
    watcher.subscribe("will")
    c = FakeClient(broker, 5)
    c.connect("c", will=Will("will", b"gone"))
    c.disconnect(RC.DISCONNECT_WITH_WILL_MESSAGE)
    assert len(publishes(watcher.received())) == 1


def test_takeover_sends_0x8e_to_old_v5_connection() -> None:
    """The connection taken over gets DISCONNECT 0x8E."""
    broker, _ = make_broker()
    old = FakeClient(broker, 5)
    old.connect("c")
    FakeClient(broker, 5).connect("c")
    out = old.received()
    assert isinstance(out[-1], Disconnect) and out[-1].reason_code == RC.SESSION_TAKEN_OVER
    assert old.transport.closed


def test_shutdown_sends_0x8b() -> None:
    """Closing every client for shutdown sends v5 clients DISCONNECT 0x8B."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("c")
    broker.close_all(RC.SERVER_SHUTTING_DOWN)
    assert c.received()[-1] == Disconnect(RC.SERVER_SHUTTING_DOWN)


def test_connect_error_properties_redirect() -> None:
    """An authenticator can redirect a client: CONNACK 0x9C with a server reference."""
    from twisted.internet.defer import fail

    from mqtt_twisted.errors import ConnectError

    class Redirect:
        def authenticate(self, credentials):
            return fail(ConnectError("go elsewhere", RC.USE_ANOTHER_SERVER,
                                     {P.SERVER_REFERENCE: "other:1883"}))

    broker, _ = make_broker(authenticator=Redirect())
    c = FakeClient(broker, 5)
    (ack,) = c.connect("c")
    assert ack.reason_code == RC.USE_ANOTHER_SERVER
    assert ack.properties[P.SERVER_REFERENCE] == "other:1883"


# --- shared subscriptions ----------------------------------------------------------------------


def test_shared_subscription_round_robin_mixed_versions() -> None:
    """Each message goes to one member of the group, in turn, v3.1.1 and v5 members alike."""
    broker, _ = make_broker()
    a = FakeClient(broker, 4)
    a.connect("a")
    a.subscribe("$share/g/t/#")
    b = FakeClient(broker, 5)
    b.connect("b")
    b.subscribe("$share/g/t/#")
    pub = FakeClient(broker, 5)
    pub.connect("p")
    for i in range(4):
        pub.publish("t/x", b"%d" % i)
    assert [p.payload for p in publishes(a.received())] == [b"0", b"2"]
    assert [p.payload for p in publishes(b.received())] == [b"1", b"3"]


def test_shared_and_plain_subscriptions_both_receive() -> None:
    """A group gets one copy, each plain subscriber its own."""
    broker, _ = make_broker()
    s1 = FakeClient(broker)
    s1.connect("s1")
    s1.subscribe("$share/g/t")
    plain = FakeClient(broker)
    plain.connect("plain")
    plain.subscribe("t")
    pub = FakeClient(broker)
    pub.connect("p")
    pub.publish("t", b"x")
    assert len(publishes(s1.received())) == 1
    assert len(publishes(plain.received())) == 1


def test_shared_subscription_gets_no_retained() -> None:
    """No retained messages are sent on a shared subscribe (MQTT 5 §4.8.2)."""
    broker, _ = make_broker()
    pub = FakeClient(broker)
    pub.connect("p")
    pub.publish("t", b"kept", retain=True)
    c = FakeClient(broker)
    c.connect("c")
    assert publishes(c.subscribe("$share/g/t")) == []


def test_shared_unacked_messages_move_to_other_member() -> None:
    """A member leaving without a persistent session hands its unacked QoS 1 messages on."""
    broker, _ = make_broker()
    a = FakeClient(broker)
    a.connect("a")
    a.subscribe("$share/g/t", qos=1)
    b = FakeClient(broker)
    b.connect("b")
    b.subscribe("$share/g/t", qos=1)
    pub = FakeClient(broker)
    pub.connect("p")
    for i in range(4):
        pub.publish("t", b"%d" % i, qos=1)
    assert len(publishes(a.received())) == 2
    b_first = publishes(b.received())
    a.drop()
    moved = publishes(b.received())
    assert sorted(p.payload for p in b_first + moved) == [b"0", b"1", b"2", b"3"]


def test_shared_no_local_is_protocol_error() -> None:
    """No local on a shared subscription is a protocol error [MQTT-3.8.3-4]."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("c")
    out = c.subscribe("$share/g/t", no_local=True)
    assert isinstance(out[-1], Disconnect) and out[-1].reason_code == RC.PROTOCOL_ERROR


def test_shared_group_removed_with_last_member() -> None:
    """Unsubscribing the last member removes the group from the index."""
    broker, _ = make_broker()
    c = FakeClient(broker)
    c.connect("c")
    c.subscribe("$share/g/t")
    c.unsubscribe("$share/g/t")
    assert inspection.shared_groups(broker) == {}
    sizes = inspection.index_sizes(broker)
    assert (sizes.shared_groups, sizes.shared_filters) == (0, 0)


# --- enhanced authentication ----------------------------------------------------------------------


def scram_connect(client: FakeClient, user: str, password: str) -> tuple[list, ScramClient]:
    scram = ScramClient(["SCRAM-SHA-256"], user, password)
    client.send(Connect("c-" + user, 5, True, 0, properties={
        P.AUTHENTICATION_METHOD: "SCRAM-SHA-256",
        P.AUTHENTICATION_DATA: scram.get_client_first().encode()}))
    (challenge,) = client.received()
    assert isinstance(challenge, Auth) and challenge.reason_code == RC.CONTINUE_AUTHENTICATION
    scram.set_server_first(challenge.properties[P.AUTHENTICATION_DATA].decode())
    client.send(Auth(RC.CONTINUE_AUTHENTICATION, {
        P.AUTHENTICATION_METHOD: "SCRAM-SHA-256",
        P.AUTHENTICATION_DATA: scram.get_client_final().encode()}))
    return client.received(), scram


def test_scram_sha256_connect_succeeds_and_server_proves_itself() -> None:
    """SCRAM-SHA-256 over AUTH: CONNACK carries the server signature the client verifies."""
    auth = ScramAuthenticator({"alice": "secret"})
    broker, _ = make_broker(authenticator=auth, authorizer=auth)
    c = FakeClient(broker, 5)
    (ack,), scram = scram_connect(c, "alice", "secret")
    assert isinstance(ack, ConnAck) and ack.reason_code == 0
    assert ack.properties[P.AUTHENTICATION_METHOD] == "SCRAM-SHA-256"
    scram.set_server_final(ack.properties[P.AUTHENTICATION_DATA].decode())  # raises if forged
    assert inspection.session_info(broker, "c-alice").identity == "alice"


def test_scram_wrong_password_refused_0x86() -> None:
    """A wrong SCRAM proof gets CONNACK 0x86 and the connection closes."""
    auth = ScramAuthenticator({"alice": "secret"})
    broker, _ = make_broker(authenticator=auth, authorizer=auth)
    c = FakeClient(broker, 5)
    (ack,), _ = scram_connect(c, "alice", "nope")
    assert ack.reason_code == RC.BAD_USER_NAME_OR_PASSWORD and c.transport.closed


def test_an_unanswered_auth_challenge_is_cut_off_at_the_connect_deadline() -> None:
    """A client that never answers the AUTH challenge is the slow one: closed at the
    CONNECT deadline (10 s), not given the time a CONNECT being answered gets."""
    auth = ScramAuthenticator({"alice": "secret"})
    broker, clock = make_broker(authenticator=auth, authorizer=auth)
    c = FakeClient(broker, 5)
    c.send(Connect("c-alice", 5, True, 0, properties={
        P.AUTHENTICATION_METHOD: "SCRAM-SHA-256",
        P.AUTHENTICATION_DATA: ScramClient(["SCRAM-SHA-256"], "alice",
                                           "secret").get_client_first().encode()}))
    (challenge,) = c.received()
    assert isinstance(challenge, Auth)
    clock.advance(10.1)
    assert c.transport.closed


def test_unknown_auth_method_refused_0x8c() -> None:
    """An authentication method nobody supports gets CONNACK 0x8C."""
    auth = ScramAuthenticator({"alice": "secret"})
    broker, _ = make_broker(authenticator=auth, authorizer=auth)
    c = FakeClient(broker, 5)
    (ack,) = c.connect("c", properties={P.AUTHENTICATION_METHOD: "GSSAPI"})
    assert ack.reason_code == RC.BAD_AUTHENTICATION_METHOD


def test_scram_reauthentication() -> None:
    """A connected client re-authenticates with AUTH 0x19 and gets AUTH 0x00."""
    auth = ScramAuthenticator({"alice": "secret"})
    broker, _ = make_broker(authenticator=auth, authorizer=auth)
    c = FakeClient(broker, 5)
    scram_connect(c, "alice", "secret")
    scram = ScramClient(["SCRAM-SHA-256"], "alice", "secret")
    c.send(Auth(RC.RE_AUTHENTICATE, {P.AUTHENTICATION_METHOD: "SCRAM-SHA-256",
                                     P.AUTHENTICATION_DATA: scram.get_client_first().encode()}))
    (challenge,) = c.received()
    scram.set_server_first(challenge.properties[P.AUTHENTICATION_DATA].decode())
    c.send(Auth(RC.CONTINUE_AUTHENTICATION, {
        P.AUTHENTICATION_METHOD: "SCRAM-SHA-256",
        P.AUTHENTICATION_DATA: scram.get_client_final().encode()}))
    (done,) = c.received()
    assert done.reason_code == RC.SUCCESS
    scram.set_server_final(done.properties[P.AUTHENTICATION_DATA].decode())


def test_auth_with_other_method_is_protocol_error() -> None:
    """AUTH naming a method other than CONNECT's is a protocol error."""
    broker, _ = make_broker()
    c = FakeClient(broker, 5)
    c.connect("c")
    c.send(Auth(RC.RE_AUTHENTICATE, {P.AUTHENTICATION_METHOD: "SCRAM-SHA-256"}))
    out = c.received()
    assert isinstance(out[-1], Disconnect) and out[-1].reason_code == RC.PROTOCOL_ERROR


def test_scram_plain_password_login() -> None:
    """Users of the SCRAM file may also log in with a plain user name and password."""
    auth = ScramAuthenticator({"alice": "secret"})
    broker, _ = make_broker(authenticator=auth, authorizer=auth)
    ok = FakeClient(broker, 4)
    assert ok.connect("a", username="alice", password=b"secret")[0].reason_code == 0
    bad = FakeClient(broker, 4)
    assert bad.connect("b", username="alice", password=b"x")[0].reason_code == 4


# --- $SYS ---------------------------------------------------------------------------------------


def test_sys_topics_published_retained_and_not_matched_by_hash() -> None:
    """$SYS values are retained, reach $SYS/# subscribers, and never '#' subscribers."""
    broker, clock = make_broker()
    everything = FakeClient(broker)
    everything.connect("all")
    everything.subscribe("#", "+/broker/#")
    sys = FakeClient(broker)
    sys.connect("sys")
    sys.subscribe("$SYS/#")
    clock.advance(30)
    SysTopics(broker).tick()
    assert publishes(everything.received()) == []
    got = {p.topic: p.payload for p in publishes(sys.received())}
    assert got["$SYS/broker/clients/connected"] == b"2"
    assert got["$SYS/broker/uptime"] == b"30 seconds"
    assert got["$SYS/broker/subscriptions/count"] == b"3"
    assert "$SYS/broker/load/messages/received/1min" in got
    late = FakeClient(broker)
    late.connect("late")
    retained = {p.topic for p in publishes(late.subscribe("$SYS/broker/version"))}
    assert retained == {"$SYS/broker/version"}


def test_sys_topics_only_changed_values_republished() -> None:
    """A second tick with nothing changed publishes only what moved (uptime)."""
    broker, clock = make_broker()
    topics = SysTopics(broker)
    topics.tick()
    clock.advance(10)
    assert topics.tick() <= 3


def test_restored_session_of_a_crashed_connection_publishes_its_will() -> None:
    """A session stored while its client was connected (the broker crashed) comes back
    offline, and its will is published once sessions are restored."""
    from mqtt_twisted.message import Message
    from mqtt_twisted.store.memory import StoredSession

    broker, clock = make_broker()
    watcher = FakeClient(broker)
    watcher.connect("w")
    watcher.subscribe("will")
    state = StoredSession("crashed")
    state.expiryInterval = None
    state.disconnectedAt = None
    state.will = Message("will", b"gone")
    broker.restore_session(state)
    assert inspection.session_info(broker, "crashed").disconnected_at == clock.seconds()
    clock.advance(0)
    assert [p.payload for p in publishes(watcher.received())] == [b"gone"]
