"""The gateway: the broker as every adapter sees it (``mqtt_twisted/gateway.py``).

Sans-IO tests drive it as a small adapter would (a sink, an MQTT client beside it, a
fake clock); the end-to-end tests show that MQTT and the HTTP bridge get the same
SUBSCRIBE refusals, since both ask the one grant function.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import inlineCallbacks
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mqtt_twisted.codec import Publish, SubAck
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.constants import ReasonCode as RC
from mqtt_twisted.core import inspection
from mqtt_twisted.core.broker import Credentials
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.errors import AuthorizationError
from mqtt_twisted.gateway import PUBLISH, SUBSCRIBE, Gateway
from mqtt_twisted.interfaces import IBrokerService, IMessageSink
from mqtt_twisted.message import Message
from mqtt_twisted.testing import FakeClient, make_broker
from tests.httpbroker import HTTPBrokerTestCase
from tests.pahov5 import PahoV5Client


@implementer(IMessageSink)
class Sink:
    """What an adapter hands the gateway: it keeps what it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, int]] = []
        self.closed: list[Any] = []

    def deliver(self, message: Message, qos: int) -> bool:
        self.messages.append((message.topic, message.payload, qos))
        return True

    def sessionClosed(self, reason: Any) -> None:
        self.closed.append(reason)


def gateway(settings: BrokerSettings | None = None, **kwargs: Any) -> tuple[Gateway, Any]:
    broker, clock = make_broker(settings, **kwargs)
    return Gateway(broker), clock


def test_provides_ibrokerservice() -> None:
    assert verifyObject(IBrokerService, gateway()[0])


def test_both_connections_are_session_links() -> None:
    """Delivery writes to MQTT and adapter sessions through the same link."""
    from mqtt_twisted.interfaces import ISessionLink

    gw, _ = gateway()
    session = gw.openSession("virtual", Sink()).result
    mqtt = FakeClient(gw.broker, 5)
    mqtt.connect("mqtt")
    assert verifyObject(ISessionLink, session.connection)
    assert verifyObject(ISessionLink, mqtt.connection)


def test_adapter_session_exchanges_messages_with_mqtt() -> None:
    """A sink's session and an MQTT client publish to each other through the gateway."""
    gw, _ = gateway()
    sink = Sink()
    session = gw.openSession("coap-1", sink).result
    assert gw.session("coap-1") is session
    assert gw.subscribe("coap-1", "sensors/+", 1).result == 1
    mqtt = FakeClient(gw.broker, 5)
    mqtt.connect("app")
    mqtt.subscribe("cmd/#", qos=1)
    mqtt.publish("sensors/t", b"21.5", qos=1)
    assert sink.messages == [("sensors/t", b"21.5", 1)]
    assert gw.publish(Message("cmd/led", b"on", 1), "coap-1").result == 1
    (got,) = [p for p in mqtt.received() if isinstance(p, Publish)]
    assert (got.topic, got.payload) == ("cmd/led", b"on")
    assert gw.unsubscribe("coap-1", "sensors/+").result is True
    assert gw.closeSession("coap-1", remove=True) is True
    assert gw.session("coap-1") is None and sink.closed == [RC.ADMINISTRATIVE_ACTION]


def test_session_expiry_set_on_open() -> None:
    gw, clock = gateway()
    gw.openSession("persistent", Sink(), clean=False, expiry=30)
    gw.closeSession("persistent")
    clock.advance(29)
    assert gw.session("persistent") is not None
    clock.advance(2)
    assert gw.session("persistent") is None


def test_retained_leaves_out_expired_messages() -> None:
    gw, clock = gateway()
    mqtt = FakeClient(gw.broker, 5)
    mqtt.connect("p")
    mqtt.publish("r/keep", b"k", retain=True)
    mqtt.publish("r/short", b"s", retain=True, properties={P.MESSAGE_EXPIRY_INTERVAL: 5})
    assert sorted(m.topic for m in gw.retained("r/#").result) == ["r/keep", "r/short"]
    clock.advance(6)
    assert [m.topic for m in gw.retained("r/#").result] == ["r/keep"]


def test_nobody_publishes_to_sys() -> None:
    gw, _ = gateway()
    assert gw.authorize(PUBLISH, "anyone", "c", "$SYS/broker/uptime").result is False
    assert gw.authorize(PUBLISH, "anyone", "c", "a/b").result is True
    assert gw.authorize(SUBSCRIBE, "anyone", "c", "$SYS/#").result is True
    failure = gw.publish(Message("$SYS/broker/uptime", b"0", 0), "c")
    assert failure.result.check(AuthorizationError)
    failure.addErrback(lambda _: None)


class _OnlyAlice:
    def authenticate(self, credentials: Any) -> Any:
        from mqtt_twisted.errors import AuthenticationError

        if credentials.username != "alice":
            raise AuthenticationError("who?")
        return "alice"

    def mayPublish(self, identity: Any, client_id: Any, topic: str) -> bool:
        return topic.startswith("alice/")

    def maySubscribe(self, identity: Any, client_id: Any, topic_filter: str) -> bool:
        return topic_filter.startswith("alice/")


def test_authenticate_authorize_and_remove_follow_the_backends() -> None:
    backend = _OnlyAlice()
    gw, _ = gateway(authenticator=backend, authorizer=backend)
    assert gw.authenticate(Credentials("c", "alice")).result == "alice"
    refused = gw.authenticate(Credentials("c", "mallory"))
    assert refused.result.check(Exception)
    refused.addErrback(lambda _: None)
    assert gw.authorize(PUBLISH, "alice", "c", "alice/x").result is True
    assert gw.authorize(SUBSCRIBE, "alice", "c", "bob/#").result is False
    gw.openSession("alices", Sink(), credentials=Credentials("alices", "alice"))
    assert gw.mayRemoveSession("alice", "alices").result is True
    assert gw.mayRemoveSession("mallory", "alices").result is False


@pytest.mark.parametrize(("settings", "topic_filter", "code"), [
    (BrokerSettings(wildcard_subscriptions=False), "a/#",
     RC.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED),
    (BrokerSettings(shared_subscriptions=False), "$share/g/a",
     RC.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED),
    (BrokerSettings(), "a/#/b", RC.TOPIC_FILTER_INVALID),
])
def test_subscribe_refused_as_mqtt_is(settings: BrokerSettings, topic_filter: str,
                                      code: int) -> None:
    """The gateway's SUBSCRIBE and MQTT's give the same code (one grant function)."""
    gw, _ = gateway(settings)
    gw.openSession("adapter", Sink())
    assert gw.subscribe("adapter", topic_filter, 1).result == code
    mqtt = FakeClient(gw.broker, 5)
    mqtt.connect("mqtt")
    (ack,) = mqtt.subscribe(topic_filter, qos=1)
    assert isinstance(ack, SubAck) and ack.reason_codes == [code]
    assert inspection.subscription_count(gw.broker) == 0


class SameRefusalOverHTTPTests(HTTPBrokerTestCase):
    """With wildcard and shared subscriptions switched off, an HTTP /subscribe is refused
    with the code a paho MQTT 5 client gets in its SUBACK (today's bug: HTTP granted)."""

    settings = BrokerSettings(wildcard_subscriptions=False, shared_subscriptions=False)

    @inlineCallbacks
    def test_wildcard_and_shared_refused_alike(self) -> Any:
        client = PahoV5Client(self.reactor, self.mqtt_port, "mqtt-sub")
        self.addCleanup(client.stop)
        yield client.connect()
        for topic_filter, code in (("a/%23", RC.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED),
                                   ("%24share/g/a", RC.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)):
            answer = yield self.json("GET", f"/subscribe?topic={topic_filter}&timeout=0", 400)
            self.assertEqual(answer["reason_code"], code)
            granted = yield client.subscribe((topic_filter.replace("%23", "#")
                                              .replace("%24", "$"), 1))
            self.assertEqual([int(c) for c in granted], [code])
        self.assertEqual(inspection.subscription_count(self.broker), 0)

    @inlineCallbacks
    def test_http_publish_to_sys_is_403(self) -> Any:
        answer = yield self.json("POST", "/publish?topic=%24SYS/broker/uptime", 403,
                                 body=b"0")
        self.assertEqual(answer["reason_code"], RC.NOT_AUTHORIZED)


def test_open_session_with_a_keep_alive_cap() -> None:
    """``--max-keepalive`` is about MQTT clients: an adapter's session (keep alive 0 on
    its virtual CONNECT) still opens (it was refused: 'keep alive 0 outside 1..60')."""
    gw, _ = gateway(BrokerSettings(max_keepalive=60))
    session = gw.openSession("http-1", Sink())
    assert gw.session("http-1") is session.result


@pytest.mark.parametrize("topic", ["a/+", "a/#", "", "a\x00b"])
def test_publish_of_an_invalid_topic_fails(topic: str) -> None:
    """An adapter that forgot to check the topic gets InvalidTopicName, and nothing is
    routed."""
    from mqtt_twisted.errors import InvalidTopicName

    gw, _ = gateway()
    result = gw.publish(Message(topic, b"x", 0), "c")
    assert result.result.check(InvalidTopicName)
    result.addErrback(lambda _: None)
    assert gw.broker.stats.messages_received == 0
