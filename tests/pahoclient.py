"""Clients for the end-to-end tests, each exposing Deferreds to a trial test.

``PahoClient`` wraps a paho-mqtt 2.x client (MQTT 3.1.1) that runs its own
network thread; every paho callback is handed to the reactor thread with
``reactor.callFromThread``, so all of this object's state is touched only from
the reactor thread and a test waits on plain Deferreds with timeouts.

``RawClient`` is a tiny Twisted protocol speaking our own codec, for the flows
where a test must control every packet (withholding an acknowledgement, sending
a malformed packet, dropping the socket at an exact point).
"""

from __future__ import annotations

import socket
from typing import Any

import paho.mqtt.client as mqtt
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from mqtt_twisted.codec import Connect, Packet, StreamDecoder, encode
from mqtt_twisted.core import inspection
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.testing import start_broker, stop_broker

#: Seconds any single wait in a test may take before it fails.
TIMEOUT = 5.0


def with_timeout(d: Deferred, reactor: Any, timeout: float = TIMEOUT) -> Deferred:
    """``d`` with a timeout (fails with ``defer.TimeoutError``)."""
    return d.addTimeout(timeout, reactor)


class Received:
    """One application message as a paho subscriber saw it."""

    __slots__ = ("topic", "payload", "qos", "retain", "dup", "mid")

    def __init__(self, msg: mqtt.MQTTMessage) -> None:
        self.topic = msg.topic
        self.payload = bytes(msg.payload)
        self.qos = msg.qos
        self.retain = bool(msg.retain)
        self.dup = bool(msg.dup)
        self.mid = msg.mid

    def __repr__(self) -> str:
        return (f"Received({self.topic!r}, {self.payload[:20]!r}, qos={self.qos}, "
                f"retain={self.retain}, dup={self.dup})")


class _Event:
    """A one-time event that any number of waiters can wait for, before or after."""

    _UNSET = object()

    def __init__(self) -> None:
        self.result: Any = self._UNSET
        self._waiters: list[Deferred[Any]] = []

    @property
    def fired(self) -> bool:
        return self.result is not self._UNSET

    def fire(self, result: Any) -> None:
        if self.fired:
            return
        self.result = result
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


class Connected:
    """What on_connect reported: the CONNACK return code and session-present flag."""

    def __init__(self, reason_code: Any, session_present: bool) -> None:
        self.reason_code = reason_code
        self.rc = int(getattr(reason_code, "value", reason_code))
        self.session_present = bool(session_present)


class PahoLifecycle:
    """Wiring and ending a paho client the same way, whatever protocol version it speaks.

    Needs ``reactor``, ``client`` (a paho Client), ``disconnected`` (a Deferred),
    ``_started``, ``_stopped`` and the ``_on_*`` handlers.
    """

    def _wire_callbacks(self) -> None:
        """paho calls back on its own thread: hop to the reactor thread."""
        c = self.client
        c.on_connect = self._thread(self._on_connect)
        c.on_disconnect = self._thread(self._on_disconnect)
        c.on_message = self._thread(self._on_message)
        c.on_subscribe = self._thread(self._on_subscribe)
        c.on_unsubscribe = self._thread(self._on_unsubscribe)
        c.on_publish = self._thread(self._on_publish)

    def _thread(self, handler: Any) -> Any:
        reactor = self.reactor

        def callback(client: Any, userdata: Any, *args: Any) -> None:
            reactor.callFromThread(handler, *args)

        return callback

    def kill(self) -> Deferred[Any]:
        """End the connection without DISCONNECT, as if the client process died."""
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return self.disconnected

    def stop(self) -> Deferred[None]:
        """Disconnect if connected and join paho's thread (off the reactor thread)."""
        if self._stopped is None:
            if not self._started:
                self._stopped = Deferred()
                self._stopped.callback(None)
            else:
                if self.client.is_connected():
                    self.client.disconnect()
                self._stopped = deferToThread(self._join)
        return self._stopped

    def _join(self) -> None:
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


class PahoClient(PahoLifecycle):
    """A paho-mqtt MQTT 3.1.1 client whose events are Deferreds in the reactor thread.

    Auto-reconnect is off: a client the broker drops stays dropped (otherwise a
    taken-over client would take the session straight back).
    """

    def __init__(self, reactor: Any, port: int, client_id: str = "",
                 clean_session: bool = True, keepalive: int = 60,
                 will: tuple[str, bytes, int, bool] | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        self.reactor = reactor
        self.port = port
        self.keepalive = keepalive
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
            clean_session=clean_session, protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos, retain)
        if username is not None:
            self.client.username_pw_set(username, password)
        self._connected = _Event()
        self._disconnected = _Event()
        self.messages: DeferredQueue[Received] = DeferredQueue()
        self.received: list[Received] = []
        #: Called (reactor thread) with each message as it arrives, if set.
        self.on_receive: Any = None
        #: Whether messages are kept (``received``, ``next_message``); a flood test that
        #: only counts them with ``on_receive`` turns this off.
        self.keep_messages = True
        self._subscribes: dict[int, Deferred[list[int]]] = {}
        self._unsubscribes: dict[int, Deferred[None]] = {}
        self._publishes: dict[int, Deferred[int]] = {}
        self._published: set[int] = set()
        self._started = False
        self._stopped: Deferred[None] | None = None
        self._wire_callbacks()

    def _on_connect(self, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.fire(Connected(reason_code, flags.session_present))

    def _on_disconnect(self, flags: Any, reason_code: Any, properties: Any) -> None:
        self._disconnected.fire(reason_code)

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        received = Received(msg)
        if self.keep_messages:
            self.received.append(received)
            self.messages.put(received)
        if self.on_receive is not None:
            self.on_receive(received)

    def _on_subscribe(self, mid: int, reason_codes: list[Any], properties: Any) -> None:
        d = self._subscribes.pop(mid, None)
        if d is not None:
            d.callback([int(getattr(rc, "value", rc)) for rc in reason_codes])

    def _on_unsubscribe(self, mid: int, reason_codes: Any, properties: Any) -> None:
        d = self._unsubscribes.pop(mid, None)
        if d is not None:
            d.callback(None)

    def _on_publish(self, mid: int, reason_code: Any, properties: Any) -> None:
        d = self._publishes.pop(mid, None)
        if d is not None:
            d.callback(mid)
        else:
            self._published.add(mid)

    # --- API used by tests (reactor thread) -------------------------------------------

    @property
    def connected(self) -> Deferred[Connected]:
        """Fires (with a timeout) with the CONNACK outcome: ``rc``, ``session_present``."""
        return with_timeout(self._connected.wait(), self.reactor)

    @property
    def disconnected(self) -> Deferred[Any]:
        """Fires (with a timeout) once paho reports the connection gone."""
        return with_timeout(self._disconnected.wait(), self.reactor)

    @property
    def is_disconnected(self) -> bool:
        return self._disconnected.fired

    def connect(self) -> Deferred[Connected]:
        """Connect without blocking the reactor; fires with the CONNACK outcome."""
        self._started = True
        self.client.connect_async("127.0.0.1", self.port, self.keepalive)
        self.client.loop_start()
        return self.connected

    def subscribe(self, *filters: tuple[str, int]) -> Deferred[list[int]]:
        """SUBSCRIBE to ``(filter, qos)`` pairs; fires with the SUBACK return codes."""
        rc, mid = self.client.subscribe(list(filters))
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        d: Deferred[list[int]] = Deferred()
        self._subscribes[mid] = d
        return with_timeout(d, self.reactor)

    def unsubscribe(self, *filters: str) -> Deferred[None]:
        rc, mid = self.client.unsubscribe(list(filters))
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        d: Deferred[None] = Deferred()
        self._unsubscribes[mid] = d
        return with_timeout(d, self.reactor)

    def publish(self, topic: str, payload: bytes = b"", qos: int = 0,
                retain: bool = False) -> Deferred[int]:
        """PUBLISH; fires when paho reports it done (QoS 0 written, 1 acked, 2 completed)."""
        info = self.client.publish(topic, payload, qos, retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        d: Deferred[int] = Deferred()
        if info.mid in self._published:
            self._published.discard(info.mid)
            d.callback(info.mid)
        else:
            self._publishes[info.mid] = d
        return with_timeout(d, self.reactor)

    def next_message(self, timeout: float = TIMEOUT) -> Deferred[Received]:
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
        """Messages up to (not including) the first one on ``topic``: a sentinel published
        last proves that nothing else is on its way."""
        out = []
        while True:
            message = yield self.next_message(timeout)
            if message.topic == topic:
                return out
            out.append(message)

    def no_message(self, wait: float = 0.3) -> Deferred[None]:
        """Fires after ``wait`` seconds; fails if a message arrived meanwhile."""
        from twisted.internet.task import deferLater

        def check(_: Any) -> None:
            if self.messages.pending:
                raise AssertionError(f"unexpected message {self.messages.pending[0]!r}")

        return deferLater(self.reactor, wait, lambda: None).addCallback(check)

    def disconnect(self) -> Deferred[Any]:
        """Send DISCONNECT and wait for paho to report the connection closed."""
        self.client.disconnect()
        return self.disconnected

class RawClient(Protocol):
    """An MQTT client under the test's full control: every packet is sent by hand."""

    def __init__(self, version: int = 4) -> None:
        self.version = version
        self.decoder = StreamDecoder(version)
        self.packets: DeferredQueue[Packet] = DeferredQueue()
        self.closed: Deferred[None] = Deferred()
        self.is_closed = False
        self.bytes_received = 0
        self.on_packet: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.bytes_received += len(data)
        for packet in self.decoder.feed(data):
            if self.on_packet is not None:
                self.on_packet(packet)
            else:
                self.packets.put(packet)

    def connectionLost(self, reason: Any = None) -> None:
        self.is_closed = True
        self.close_reason = reason  # ConnectionDone for a FIN, ConnectionLost for a reset
        self.closed.callback(None)

    def send(self, packet: Packet) -> None:
        self.transport.write(encode(packet, self.version))

    def send_bytes(self, data: bytes) -> None:
        self.transport.write(data)

    def next_packet(self, timeout: float = TIMEOUT) -> Deferred[Packet]:
        from twisted.internet import reactor

        return with_timeout(self.packets.get(), reactor, timeout)

    @inlineCallbacks
    def expect(self, packet_type: type, timeout: float = TIMEOUT) -> Any:
        """The next packet, which must be of ``packet_type``."""
        packet = yield self.next_packet(timeout)
        if not isinstance(packet, packet_type):
            raise AssertionError(f"expected {packet_type.__name__}, got {packet!r}")
        return packet

    @inlineCallbacks
    def connect(self, client_id: str, clean: bool = True, keep_alive: int = 0,
                will: Any = None) -> Any:
        """CONNECT and return the CONNACK."""
        from mqtt_twisted.codec import ConnAck

        self.send(Connect(client_id, self.version, clean, keep_alive, will))
        connack = yield self.expect(ConnAck)
        return connack

    def abort(self) -> Deferred[None]:
        """Drop the socket (RST, no DISCONNECT); fires once it is gone."""
        if not self.is_closed and self.transport is not None:
            self.transport.abortConnection()
        return self.closed

    def wait_closed(self, timeout: float = TIMEOUT) -> Deferred[None]:
        from twisted.internet import reactor

        if self.is_closed:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        waiter: Deferred[None] = Deferred()
        self.closed.addBoth(lambda r: (waiter.called or waiter.callback(None), r)[1])
        return with_timeout(waiter, reactor, timeout)


def connect_raw(reactor: Any, port: int, version: int = 4) -> Deferred[RawClient]:
    """A connected RawClient (TCP only, nothing sent yet)."""
    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawClient(version))


class BrokerTestCase(unittest.TestCase):
    """A real broker on 127.0.0.1 for each test, stopped in tearDown.

    Subclasses set ``settings``, ``max_connections`` or ``connect_timeout`` for
    a broker configured otherwise.
    """

    settings: BrokerSettings | None = None
    max_connections = 0
    connect_timeout = 10.0
    timeout = 30  # trial's per-test limit, far beyond any single wait

    @inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.reactor = reactor
        self.service, self.port = yield start_broker(
            reactor, settings=self.make_settings(), store=self.make_store(),
            max_connections=self.max_connections, connect_timeout=self.connect_timeout,
        )
        self.broker = self.service.broker

    def make_settings(self) -> BrokerSettings | None:
        return self.settings

    def make_store(self) -> Any:
        """The broker's store; None for a memory store."""
        return None

    def tearDown(self) -> Deferred[None]:
        return stop_broker(self.service)

    @inlineCallbacks
    def paho(self, client_id: str = "", connect: bool = True, **kwargs: Any) -> Any:
        """A paho client (cleaned up after the test), connected unless told otherwise."""
        client = PahoClient(self.reactor, self.port, client_id, **kwargs)
        self.addCleanup(client.stop)
        if connect:
            result = yield client.connect()
            self.assertEqual(result.rc, 0)
        return client

    @inlineCallbacks
    def raw(self, client_id: str | None = None, **kwargs: Any) -> Any:
        """A RawClient (aborted after the test), CONNECTed when ``client_id`` is given."""
        client = yield connect_raw(self.reactor, self.port)
        self.addCleanup(client.abort)
        if client_id is not None:
            connack = yield client.connect(client_id, **kwargs)
            self.assertEqual(connack.reason_code, 0)
            client.connack = connack
        return client

    def session(self, client_id: str) -> inspection.SessionInfo:
        """A snapshot of ``client_id``'s session, which must exist."""
        info = inspection.session_info(self.broker, client_id)
        if info is None:
            self.fail(f"no session for {client_id!r}")
        return info

    def offline(self, client_id: str) -> Any:
        """A predicate: the session of ``client_id`` exists and has no connection."""
        def check() -> bool:
            info = inspection.session_info(self.broker, client_id)
            return info is not None and not info.online
        return check

    def sleep(self, seconds: float) -> Deferred[None]:
        """Let the reactor run for ``seconds`` (only to prove that nothing happens)."""
        from twisted.internet.task import deferLater

        return deferLater(self.reactor, seconds, lambda: None)

    @inlineCallbacks
    def wait_until(self, predicate: Any, timeout: float = TIMEOUT,
                   interval: float = 0.01) -> Any:
        """Poll ``predicate`` on the reactor until it is true; fail after ``timeout``."""
        waited = 0.0
        while not predicate():
            if waited >= timeout:
                self.fail(f"condition not met within {timeout}s")
            yield self.sleep(interval)
            waited += interval
