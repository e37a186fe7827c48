"""Helpers for tests, ours and plugin authors': fake transports and clients, a broker
on a clock, and a real broker on an ephemeral loopback port.

Nothing here is used by the broker itself.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from zope.interface import implementer

from mqtt_twisted.adapters.listener import ListenerSettings
from mqtt_twisted.adapters.mqtt import MQTTStreamFactory, lean_transport
from mqtt_twisted.codec import (
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    StreamDecoder,
    Subscribe,
    Subscription,
    Unsubscribe,
    Will,
    encode,
)
from mqtt_twisted.core.broker import Broker
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.interfaces import IConnectionTransport
from mqtt_twisted.store.memory import MemoryStore


@implementer(IConnectionTransport)
class FakeTransport:
    """Records what the broker writes; knows whether it was closed."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def loseConnection(self) -> None:
        self.closed = True

    def abortConnection(self) -> None:
        self.closed = self.aborted = True

    reading = True

    def pauseReading(self) -> None:
        """Flow control asks us to stop reading from this client."""
        self.reading = False

    def resumeReading(self) -> None:
        self.reading = True


def make_broker(settings: BrokerSettings | None = None, store: Any = None,
                **kwargs: Any) -> tuple[Broker, Clock]:
    """A sans-IO broker on a fake clock with a memory store.  Its turns are the test's
    ``clock.advance``, so new connections' reads are not gated per turn unless the
    test asks (``connect_budget=SECONDS``: core/admission.py)."""
    kwargs.setdefault("connect_budget", 0)
    clock = Clock()
    broker = Broker(clock, store if store is not None else MemoryStore(clock), settings,
                    **kwargs)
    return broker, clock


class FakeClient:
    """Drives one sans-IO connection with packets, and decodes what comes back."""

    def __init__(self, broker: Broker, version: int = 4, peer: str = "test") -> None:
        self.broker = broker
        self.version = version
        self.transport = FakeTransport()
        self.connection = broker.build_connection(self.transport, peer)
        self._decoder = StreamDecoder(version)
        self._read = 0
        self._next_pid = 1

    def send(self, packet: Packet) -> None:
        self.connection.dataReceived(encode(packet, self.version))

    def send_bytes(self, data: bytes) -> None:
        self.connection.dataReceived(data)

    def received(self) -> list[Packet]:
        """Packets written to this client since the last call."""
        data = bytes(self.transport.written[self._read:])
        self._read = len(self.transport.written)
        return self._decoder.feed(data) if data else []

    def pid(self) -> int:
        pid = self._next_pid
        self._next_pid += 1
        return pid

    def connect(self, client_id: str = "c", clean: bool = True, keep_alive: int = 0,
                will: Will | None = None, username: str | None = None,
                password: bytes | None = None, properties: dict | None = None) -> list[Packet]:
        self.send(Connect(client_id, self.version, clean, keep_alive, will, username, password,
                          properties or {}))
        return self.received()

    def subscribe(self, *filters: str, qos: int = 0, **options: Any) -> list[Packet]:
        subs = [Subscription(f, qos, **options) for f in filters]
        self.send(Subscribe(self.pid(), subs))
        return self.received()

    def unsubscribe(self, *filters: str) -> list[Packet]:
        self.send(Unsubscribe(self.pid(), list(filters)))
        return self.received()

    def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False,
                properties: dict | None = None, packet_id: int | None = None) -> list[Packet]:
        if qos and packet_id is None:
            packet_id = self.pid()
        self.send(Publish(topic, payload, qos, retain, False, packet_id if qos else None,
                          properties or {}))
        return self.received()

    def ack(self, packet: Publish) -> list[Packet]:
        """Acknowledge a received PUBLISH as a well-behaved client does (QoS 2: whole flow)."""
        if packet.qos == 1:
            self.send(PubAck(packet.packet_id))  # type: ignore[arg-type]
        elif packet.qos == 2:
            self.send(PubRec(packet.packet_id))  # type: ignore[arg-type]
            for reply in self.received():
                if isinstance(reply, PubRel):
                    self.send(PubComp(reply.packet_id))
        return self.received()

    def ping(self) -> list[Packet]:
        self.send(PingReq())
        return self.received()

    def disconnect(self, reason_code: int = 0) -> None:
        self.send(Disconnect(reason_code))
        self.drop()

    def drop(self) -> None:
        """The socket goes away without DISCONNECT."""
        self.connection.connectionLost(None)


@inlineCallbacks
def start_broker(reactor: Any, settings: BrokerSettings | None = None, store: Any = None,
                 max_connections: int = 0, connect_timeout: float = 10.0,
                 authenticator: Any = None, authorizer: Any = None) -> Any:
    """A real broker service listening on 127.0.0.1:<ephemeral>.

    Fires with ``(service, port)``; stop it with ``service.stopService()`` and
    ``port.stopListening()`` (``stop_broker`` does both).
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from mqtt_twisted.service import BrokerService

    service = BrokerService(reactor, store if store is not None else MemoryStore(reactor),
                            settings, authenticator, authorizer, connect_timeout)
    yield service.store.start()
    service.running = True
    listener = ListenerSettings("mqtt", "tcp:0:interface=127.0.0.1", max_connections,
                                connect_timeout)
    factory = MQTTStreamFactory(service.gateway, listener)
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    lean_transport(port)  # as MQTTAdapter.buildListener does
    service.test_port = port
    service.test_factory = factory
    return service, port.getHost().port


def stop_broker(service: Any) -> Deferred[None]:
    """Stop what :func:`start_broker` started; fires once every client is gone."""
    d = service.test_port.stopListening()
    d.addCallback(lambda _: service.stopService())
    return d
