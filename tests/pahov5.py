"""MQTT 5 clients for the end-to-end tests of ``tests/test_e2e_v5_*.py``.

``PahoV5Client`` is a paho-mqtt 2.x client in MQTTv5 mode whose callbacks are
handed to the reactor thread (``reactor.callFromThread``), like
``tests.pahoclient.PahoClient`` for 3.1.1; it also keeps what only v5 has: the
CONNACK, DISCONNECT, SUBACK, UNSUBACK and PUBACK reason codes and properties,
the properties of every message, and the topic aliases the broker sends (paho
2.2 does not resolve inbound aliases itself, so this helper does, per
connection, and records what was on the wire).

``V5TestCase`` is ``BrokerTestCase`` with an authenticator/authorizer seam and
factories for v5 paho clients and raw v5 clients (``RawClient`` speaking our
codec, for packets that paho will not send or does not understand: AUTH,
protocol violations).
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.internet.task import deferLater

from mqtt_twisted.codec import ConnAck, Connect
from mqtt_twisted.testing import start_broker

try:
    from tests.pahoclient import (
        TIMEOUT,
        BrokerTestCase,
        PahoClient,
        PahoLifecycle,
        connect_raw,
        with_timeout,
    )
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from pahoclient import (  # type: ignore[no-redef]
        TIMEOUT,
        BrokerTestCase,
        PahoClient,
        PahoLifecycle,
        connect_raw,
        with_timeout,
    )

__all__ = [
    "TIMEOUT",
    "PacketTypes",
    "PahoClient",
    "PahoV5Client",
    "SubscribeOptions",
    "V5TestCase",
    "props",
]


def props(packet_type: int, **values: Any) -> Properties:
    """A paho ``Properties`` for ``packet_type`` (a ``PacketTypes`` member), e.g.
    ``props(PacketTypes.PUBLISH, ContentType="text/plain", UserProperty=[("a", "1")])``."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def prop(properties: Any, name: str, default: Any = None) -> Any:
    """One property of a paho ``Properties`` (or None), by paho's name."""
    return getattr(properties, name, default) if properties is not None else default


def code(reason: Any) -> int:
    """A paho ReasonCode (or int) as its integer value."""
    return int(getattr(reason, "value", reason))


class Received5:
    """One application message as a v5 paho subscriber saw it."""

    __slots__ = ("topic", "wire_topic", "payload", "qos", "retain", "dup", "mid", "properties")

    def __init__(self, msg: mqtt.MQTTMessage, topic: str) -> None:
        self.topic = topic  # with any topic alias resolved
        self.wire_topic = msg.topic  # as the PUBLISH carried it ("" when aliased)
        self.payload = bytes(msg.payload)
        self.qos = msg.qos
        self.retain = bool(msg.retain)
        self.dup = bool(msg.dup)
        self.mid = msg.mid
        self.properties = getattr(msg, "properties", None)

    def prop(self, name: str, default: Any = None) -> Any:
        return prop(self.properties, name, default)

    @property
    def alias(self) -> int | None:
        return self.prop("TopicAlias")

    @property
    def user_properties(self) -> list[tuple[str, str]]:
        return [tuple(p) for p in self.prop("UserProperty", [])]  # type: ignore[misc]

    @property
    def subscription_ids(self) -> list[int]:
        ids = self.prop("SubscriptionIdentifier", [])
        return list(ids) if isinstance(ids, list) else [ids]

    def __repr__(self) -> str:
        return (f"Received5({self.topic!r}, {self.payload[:20]!r}, qos={self.qos}, "
                f"retain={self.retain}, props={self.properties})")


class Connected5:
    """What on_connect reported: CONNACK reason code, session present, properties."""

    def __init__(self, reason_code: Any, session_present: bool, properties: Any) -> None:
        self.rc = code(reason_code)
        self.session_present = bool(session_present)
        self.properties = properties

    def prop(self, name: str, default: Any = None) -> Any:
        return prop(self.properties, name, default)


class Disconnected5:
    """What on_disconnect reported: the reason code and whether the server sent it
    in a DISCONNECT packet (``from_server``) or the socket just closed."""

    def __init__(self, flags: Any, reason_code: Any, properties: Any) -> None:
        self.from_server = bool(getattr(flags, "is_disconnect_packet_from_server", False))
        self.rc = code(reason_code)
        self.properties = properties

    def __repr__(self) -> str:
        return f"Disconnected5(rc=0x{self.rc:02X}, from_server={self.from_server})"


class _Once:
    """A one-time event any number of waiters can wait for, before or after it fires."""

    def __init__(self) -> None:
        self.fired = False
        self.result: Any = None
        self._waiters: list[Deferred[Any]] = []

    def fire(self, result: Any) -> None:
        if self.fired:
            return
        self.fired, self.result = True, result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(result)

    def wait(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if self.fired:
            d.callback(self.result)
        else:
            self._waiters.append(d)
        return d


class PahoV5Client(PahoLifecycle):
    """A paho-mqtt MQTTv5 client whose events are Deferreds in the reactor thread.

    Auto-reconnect is off.  ``connect_properties`` and the will's properties are
    given as paho property names (``{"SessionExpiryInterval": 10}``).
    """

    def __init__(self, reactor: Any, port: int, client_id: str = "", clean_start: bool = True,
                 keepalive: int = 60, connect_properties: dict | None = None,
                 will: tuple | None = None, username: str | None = None,
                 password: str | None = None, manual_ack: bool = False) -> None:
        self.reactor = reactor
        self.port = port
        self.keepalive = keepalive
        self.clean_start = clean_start
        self.connect_properties = connect_properties or {}
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=mqtt.MQTTv5, reconnect_on_failure=False, manual_ack=manual_ack,
        )
        if will is not None:
            topic, payload, qos, retain, *rest = will
            will_props = props(PacketTypes.WILLMESSAGE, **rest[0]) if rest else None
            self.client.will_set(topic, payload, qos, retain, will_props)
        if username is not None:
            self.client.username_pw_set(username, password)
        self._connected = _Once()
        self._disconnected = _Once()
        self._aliases: dict[int, str] = {}
        self.messages: DeferredQueue[Received5] = DeferredQueue()
        self.received: list[Received5] = []
        #: Called (reactor thread) with each message as it arrives, if set.
        self.on_receive: Any = None
        self._subscribes: dict[int, Deferred[list[int]]] = {}
        self._unsubscribes: dict[int, Deferred[list[int]]] = {}
        self._publishes: dict[int, Deferred[int]] = {}
        self._published: dict[int, int] = {}
        self._started = False
        self._stopped: Deferred[None] | None = None
        self._wire_callbacks()

    def _on_connect(self, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.fire(Connected5(reason_code, flags.session_present, properties))

    def _on_disconnect(self, flags: Any, reason_code: Any, properties: Any) -> None:
        self._disconnected.fire(Disconnected5(flags, reason_code, properties))

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        alias = prop(getattr(msg, "properties", None), "TopicAlias")
        if alias is not None:
            if topic:
                self._aliases[alias] = topic  # [MQTT-3.3.2-12] the alias is (re)defined
            else:
                topic = self._aliases[alias]
        received = Received5(msg, topic)
        self.received.append(received)
        self.messages.put(received)
        if self.on_receive is not None:
            self.on_receive(received)

    def _on_subscribe(self, mid: int, reason_codes: list[Any], properties: Any) -> None:
        d = self._subscribes.pop(mid, None)
        if d is not None:
            d.callback([code(rc) for rc in reason_codes])

    def _on_unsubscribe(self, mid: int, reason_codes: Any, properties: Any) -> None:
        d = self._unsubscribes.pop(mid, None)
        if d is not None:
            codes = reason_codes if isinstance(reason_codes, list) else [reason_codes]
            d.callback([code(rc) for rc in codes])

    def _on_publish(self, mid: int, reason_code: Any, properties: Any) -> None:
        d = self._publishes.pop(mid, None)
        if d is not None:
            d.callback(code(reason_code))
        else:
            self._published[mid] = code(reason_code)

    # --- API used by tests (reactor thread) -------------------------------------------

    @property
    def connected(self) -> Deferred[Connected5]:
        """Fires (with a timeout) with the CONNACK outcome."""
        return with_timeout(self._connected.wait(), self.reactor)

    @property
    def disconnected(self) -> Deferred[Disconnected5]:
        """Fires (with a timeout) once paho reports the connection gone."""
        return with_timeout(self._disconnected.wait(), self.reactor)

    @property
    def is_disconnected(self) -> bool:
        return self._disconnected.fired

    def connect(self) -> Deferred[Connected5]:
        """Connect without blocking the reactor; fires with the CONNACK outcome."""
        self._started = True
        connect_props = None
        if self.connect_properties:
            connect_props = props(PacketTypes.CONNECT, **self.connect_properties)
        self.client.connect_async("127.0.0.1", self.port, self.keepalive,
                                  clean_start=self.clean_start, properties=connect_props)
        self.client.loop_start()
        return self.connected

    def subscribe(self, *subscriptions: tuple[str, Any],
                  properties: dict | None = None) -> Deferred[list[int]]:
        """SUBSCRIBE to ``(filter, qos or SubscribeOptions)`` pairs; fires with the SUBACK
        reason codes.  ``properties``: e.g. ``{"SubscriptionIdentifier": 7}``."""
        subs = [(f, o if isinstance(o, SubscribeOptions) else SubscribeOptions(qos=o))
                for f, o in subscriptions]
        sub_props = props(PacketTypes.SUBSCRIBE, **properties) if properties else None
        rc, mid = self.client.subscribe(subs, properties=sub_props)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        d: Deferred[list[int]] = Deferred()
        self._subscribes[mid] = d
        return with_timeout(d, self.reactor)

    def unsubscribe(self, *filters: str) -> Deferred[list[int]]:
        """UNSUBSCRIBE; fires with the UNSUBACK reason codes."""
        rc, mid = self.client.unsubscribe(list(filters))
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        d: Deferred[list[int]] = Deferred()
        self._unsubscribes[mid] = d
        return with_timeout(d, self.reactor)

    def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False,
                properties: dict | None = None) -> Deferred[int]:
        """PUBLISH; fires with the reason code once paho reports it done (QoS 0 written,
        1 acknowledged: the PUBACK's code, 2 completed)."""
        pub_props = props(PacketTypes.PUBLISH, **properties) if properties else None
        info = self.client.publish(topic, payload, qos, retain, pub_props)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        d: Deferred[int] = Deferred()
        if info.mid in self._published:
            d.callback(self._published.pop(info.mid))
        else:
            self._publishes[info.mid] = d
        return with_timeout(d, self.reactor)

    def ack(self, message: Received5) -> None:
        """Acknowledge a message (clients made with ``manual_ack=True``)."""
        self.client.ack(message.mid, message.qos)

    def next_message(self, timeout: float = TIMEOUT) -> Deferred[Received5]:
        return with_timeout(self.messages.get(), self.reactor, timeout)

    @inlineCallbacks
    def collect(self, n: int, timeout: float = TIMEOUT) -> Any:
        """The next ``n`` messages, each awaited with ``timeout``."""
        out = []
        for _ in range(n):
            out.append((yield self.next_message(timeout)))
        return out

    @inlineCallbacks
    def collect_until(self, topic: str, timeout: float = TIMEOUT) -> Any:
        """Messages up to (not including) the first one on ``topic`` (a sentinel)."""
        out = []
        while True:
            message = yield self.next_message(timeout)
            if message.topic == topic:
                return out
            out.append(message)

    def no_message(self, wait: float = 0.3) -> Deferred[None]:
        """Fires after ``wait`` seconds; fails if a message arrived meanwhile."""

        def check(_: Any) -> None:
            if self.messages.pending:
                raise AssertionError(f"unexpected message {self.messages.pending[0]!r}")

        return deferLater(self.reactor, wait, lambda: None).addCallback(check)

    def disconnect(self, reason_code: int = 0, properties: dict | None = None) -> Deferred[Any]:
        """Send DISCONNECT (with a v5 reason code and properties); wait until closed."""
        reason = ReasonCode(PacketTypes.DISCONNECT, identifier=reason_code)
        disc_props = props(PacketTypes.DISCONNECT, **properties) if properties else None
        self.client.disconnect(reason, disc_props)
        return self.disconnected


class V5TestCase(BrokerTestCase):
    """A real broker per test (``settings``, ``authenticator``, ``authorizer`` per class),
    with factories for v5 paho clients (``paho5``), 3.1.1 ones (``paho``) and raw v5
    clients (``raw5``)."""

    authenticator: Any = None
    authorizer: Any = None

    @inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.reactor = reactor
        self.service, self.port = yield start_broker(
            reactor, settings=self.make_settings(), max_connections=self.max_connections,
            connect_timeout=self.connect_timeout, authenticator=self.authenticator,
            authorizer=self.authorizer,
        )
        self.broker = self.service.broker

    @inlineCallbacks
    def paho5(self, client_id: str = "", connect: bool = True, port: int | None = None,
              **kwargs: Any) -> Any:
        """A v5 paho client (stopped after the test), connected (CONNACK 0) unless told
        otherwise; its CONNACK outcome is ``client.connack``."""
        client = PahoV5Client(self.reactor, port or self.port, client_id, **kwargs)
        self.addCleanup(client.stop)
        if connect:
            result = yield client.connect()
            self.assertEqual(result.rc, 0)
            client.connack = result
        return client

    @inlineCallbacks
    def raw5(self, client_id: str | None = None, clean: bool = True, keep_alive: int = 0,
             properties: dict | None = None, will: Any = None) -> Any:
        """A raw v5 client (aborted after the test), CONNECTed (CONNACK 0, kept as
        ``client.connack``) when ``client_id`` is given."""
        client = yield connect_raw(self.reactor, self.port, 5)
        self.addCleanup(client.abort)
        if client_id is not None:
            client.send(Connect(client_id, 5, clean, keep_alive, will, None, None,
                                dict(properties or {})))
            connack = yield client.expect(ConnAck)
            self.assertEqual(connack.reason_code, 0)
            client.connack = connack
        return client

