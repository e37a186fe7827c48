"""The Twisted shell around :class:`~mqtt_twisted.client.core.ClientCore`: a Deferred API.

The protocol only moves bytes, keeps one Deferred per outstanding packet id and
runs the keepalive timer on the reactor's clock; every MQTT decision is the
core's.  ``connect_client`` reaches the broker through a Twisted client endpoint
or, for a ``ws://``/``wss://`` URL, :mod:`mqtt_twisted.client.websocket`.  A
persistent session survives a dropped connection in :class:`ClientSession`: hand
it to the next protocol (``connect_client(..., session=old.session)``) and its
unacknowledged publishes are resent with DUP and their Deferreds fire then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.client._stream import MessageStream
from mqtt_twisted.client.core import (
    ClientCore,
    Connected,
    ConnectRefused,
    Message,
    PublishDone,
    PublishError,
    Reauthenticated,
    ServerDisconnect,
    SessionLost,
    Subscribed,
    Unsubscribed,
    connect_error,
)
from mqtt_twisted.client.websocket import connect_websocket
from mqtt_twisted.codec import Subscription, Will, topic_matches
from mqtt_twisted.errors import MQTTError

__all__ = ["ClientSession", "MQTTClientProtocol", "connect_client"]

MessageHandler = Callable[[Message], Any]
log = Logger()


class ClientSession:
    """What outlives one connection: the core and the waiters of in-flight publishes."""

    def __init__(self, core: ClientCore) -> None:
        self.core = core
        self.publish_waiters: dict[int, Deferred[Any]] = {}
        #: (topic filter, handler) in subscription order; every match is called.
        self.handlers: list[tuple[str, MessageHandler]] = []

    def fail_publishes(self, ids: Iterable[int], reason: Exception) -> None:
        for pid in ids:
            d = self.publish_waiters.pop(pid, None)
            if d is not None:
                d.errback(Failure(reason))


def _plain_filter(topic_filter: str) -> str:
    """``$share/group/a/b`` matches like ``a/b``."""
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2] if topic_filter.count("/") >= 2 else topic_filter
    return topic_filter


class MQTTClientProtocol(Protocol):
    """One connection to a broker; use :func:`connect_client` to get a connected one."""

    def __init__(self, reactor: Any, session: ClientSession,
                 on_message: MessageHandler | None = None) -> None:
        self.reactor = reactor
        self.session = session
        self.core = session.core
        self.on_message = on_message
        self.connack: Any = None
        self._connecting: Deferred[Any] | None = None
        self._waiters: dict[int, Deferred[Any]] = {}
        self._timer: IDelayedCall | None = None
        self._closed: Deferred[None] = Deferred()
        self._reauth: Deferred[Any] | None = None
        self._streams: list[MessageStream] = []
        self._paused_by: set[MessageStream] = set()
        self.connected = False

    # --- the Deferred API ---

    def connect(self) -> Deferred[Any]:
        """Write CONNECT; fires with the CONNACK or fails with ``ConnectError``."""
        if self._connecting is not None:
            return fail(MQTTError("connect() already called"))
        self._connecting = Deferred()
        dropped = self.core.connect(self.reactor.seconds())
        self.session.fail_publishes(dropped, SessionLost("clean start discards the session"))
        self._flush()
        return self._connecting

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0,
                retain: bool = False, properties: dict | None = None) -> Deferred[Any]:
        """Fires when the message is complete for its QoS: written (0), PUBACK (1),
        PUBCOMP (2), with the ack's reason code; fails with ``PublishError``."""
        if isinstance(payload, str):
            payload = payload.encode()
        try:
            pid = self.core.publish(topic, payload, qos, retain, properties,
                                    self.reactor.seconds())
        except (MQTTError, ValueError) as e:
            return fail(e)
        self._flush()
        if pid is None:
            return succeed(None)
        d: Deferred[Any] = Deferred()
        self.session.publish_waiters[pid] = d
        return d

    def subscribe(self, topics: str | list[Any], qos: int = 0,
                  handler: MessageHandler | None = None,
                  properties: dict | None = None) -> Deferred[list[int]]:
        """Subscribe to one filter or a list of filters, ``(filter, qos)`` pairs or
        :class:`Subscription` objects; fires with the granted codes (a code >= 0x80
        is a refusal).  ``handler`` is called with each :class:`Message` that matches."""
        subs = _subscriptions(topics, qos)
        try:
            pid = self.core.subscribe(subs, properties, self.reactor.seconds())
        except MQTTError as e:
            return fail(e)
        if handler is not None:
            for s in subs:
                self.session.handlers.append((s.topic_filter, handler))
        return self._wait(pid).addCallback(lambda event: event.reason_codes)

    def unsubscribe(self, topic_filters: str | list[str],
                    properties: dict | None = None) -> Deferred[list[int]]:
        """Fires with the UNSUBACK's reason codes (v5) or ``[]`` (v3.1.1)."""
        filters = [topic_filters] if isinstance(topic_filters, str) else list(topic_filters)
        try:
            pid = self.core.unsubscribe(filters, properties, self.reactor.seconds())
        except MQTTError as e:
            return fail(e)
        self.session.handlers = [(f, h) for f, h in self.session.handlers if f not in filters]
        return self._wait(pid).addCallback(lambda event: event.reason_codes)

    def ack(self, message: Message) -> None:
        """Acknowledge a message received with ``manual_ack=True`` (PUBACK for QoS 1,
        PUBREC for QoS 2); until then it holds one slot of our receive maximum."""
        if message.publish.qos:
            self.core.ack(message.publish)
            self._flush()

    def reauthenticate(self) -> Deferred[Any]:
        """Run the connection's enhanced authentication method again (AUTH 0x19); fires
        with the server's final AUTH properties, or fails (the server disconnects a
        client whose re-authentication fails)."""
        try:
            self.core.reauthenticate(self.reactor.seconds())
        except MQTTError as e:
            return fail(e)
        self._flush()
        self._reauth = Deferred()
        return self._reauth

    def messages(self, topic_filter: str = "#", buffer: int = 1000) -> MessageStream:
        """An async iterator over the messages matching ``topic_filter`` (it takes them
        instead of ``on_message``); it ends when the connection closes.  Beyond
        ``buffer`` unread messages the socket stops being read (TCP back-pressure on
        the broker) until the reader catches up.  Create it before subscribing, so
        that retained messages are not missed."""
        stream = MessageStream(self, topic_filter, buffer)
        self._streams.append(stream)
        self.session.handlers.append((topic_filter, stream))
        if not self.connected and self._closed.called:
            stream.end()
        return stream

    def _forget_stream(self, stream: MessageStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)
        self.session.handlers = [(f, h) for f, h in self.session.handlers if h is not stream]
        self._reading(stream, True)

    def _reading(self, stream: MessageStream, wanted: bool) -> None:
        """Pause the socket while any stream's buffer is full; resume when none is."""
        before = bool(self._paused_by)
        if wanted:
            self._paused_by.discard(stream)
        else:
            self._paused_by.add(stream)
        after = bool(self._paused_by)
        if before != after and self.transport is not None and self.connected:
            if after:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def disconnect(self, reason_code: int = 0, properties: dict | None = None) -> Deferred[None]:
        """Write DISCONNECT (the will is not sent) and close; fires once closed."""
        if self.transport is not None and self.connected:
            self.core.disconnect(reason_code, properties)
            self._flush()
            self.transport.loseConnection()
        return self.whenClosed()

    def abort(self) -> Deferred[None]:
        """Drop the connection without DISCONNECT (the broker sends the will)."""
        if self.transport is not None and self.connected:
            self.transport.abortConnection()
        return self.whenClosed()

    def whenClosed(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self._closed.called:
            d.callback(None)
        else:
            self._closed.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    # --- Protocol ---

    def connectionMade(self) -> None:
        self.connected = True
        if hasattr(self.transport, "setTcpNoDelay"):
            try:
                self.transport.setTcpNoDelay(True)
            except Exception:  # unix sockets have no Nagle to switch off
                pass

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.core.receive(data)
        except MQTTError as e:
            log.warn("closing: broker broke the protocol: {error}", error=e)
            if self.core.version == 5 and self.core.state == "connected":
                self.core.disconnect(e.reason_code)
            self._flush()
            self.transport.loseConnection()
            # The error itself, not the closed connection, is why connect() or
            # reauthenticate() failed (a server that did not prove itself, say).
            for name in ("_connecting", "_reauth"):
                d = getattr(self, name)
                setattr(self, name, None)
                if d is not None and not d.called:
                    d.errback(Failure(e))
            return
        self._flush()
        for event in events:
            self._dispatch(event)

    def _dispatch(self, event: Any) -> None:
        kind = type(event)
        if kind is Message:
            self._deliver(event)
        elif kind is PublishDone:
            d = self.session.publish_waiters.pop(event.packet_id, None)
            if d is not None:
                if event.reason_code >= 0x80:
                    d.errback(Failure(PublishError(
                        f"publish refused: code 0x{event.reason_code:02X}", event.reason_code)))
                else:
                    d.callback(event.reason_code)
        elif kind in (Subscribed, Unsubscribed):
            d = self._waiters.pop(event.packet_id, None)
            if d is not None:
                d.callback(event)
        elif kind is Connected:
            self.connack = event.connack
            self.session.fail_publishes(event.lost, SessionLost("the broker had no session"))
            self._schedule()
            self._connected_fire(event.connack)
        elif kind is ConnectRefused:
            d, self._connecting = self._connecting, None
            if d is not None:
                d.errback(Failure(connect_error(event.connack)))
        elif kind is Reauthenticated:
            d, self._reauth = self._reauth, None
            if d is not None:
                d.callback(event.properties)
        elif kind is ServerDisconnect:
            log.info("broker disconnected us: code {code}", code=event.reason_code)
            d, self._reauth = self._reauth, None
            if d is not None:
                d.errback(Failure(MQTTError(
                    f"the broker disconnected: code 0x{event.reason_code:02X}",
                    event.reason_code)))
            self.transport.loseConnection()

    def _connected_fire(self, connack: Any) -> None:
        d = self._connecting
        if d is not None and not d.called:
            d.callback(connack)

    def _deliver(self, message: Message) -> None:
        handled = False
        for topic_filter, handler in list(self.session.handlers):
            if topic_matches(_plain_filter(topic_filter), message.topic):
                handled = True
                self._call(handler, message)
        if not handled:
            if self.on_message is not None:
                self._call(self.on_message, message)
            elif self.core.manual_ack:
                self.ack(message)  # nobody can: it would hold a receive maximum slot

    def _call(self, handler: MessageHandler, message: Message) -> None:
        try:
            handler(message)
        except Exception:
            log.failure("message handler failed on {topic}", topic=message.topic)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending = self.core.connection_lost()
        error = reason.value if reason is not None else ConnectionDone()
        for pid in pending:
            d = self._waiters.pop(pid, None)
            if d is not None:
                d.errback(Failure(error))
        if not self.core.persistent:
            # Without a persistent session nothing in flight can complete.
            self.session.fail_publishes(list(self.session.publish_waiters), error)
        for name in ("_connecting", "_reauth"):
            d = getattr(self, name)
            setattr(self, name, None)
            if d is not None and not d.called:
                d.errback(Failure(error))
        for stream in list(self._streams):
            stream.end()
        if not self._closed.called:
            self._closed.callback(None)

    # --- plumbing ---

    def _wait(self, pid: int) -> Deferred[Any]:
        self._flush()
        d: Deferred[Any] = Deferred()
        self._waiters[pid] = d
        return d

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _schedule(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        try:
            delay = self.core.tick(self.reactor.seconds())
        except MQTTError as e:
            log.warn("closing: {error}", error=e)
            self.transport.abortConnection()
            return
        self._flush()
        if delay is not None:
            self._timer = self.reactor.callLater(delay, self._schedule)


def _subscriptions(topics: str | list[Any], qos: int) -> list[Subscription]:
    items = [topics] if isinstance(topics, str | Subscription) else list(topics)
    subs = []
    for item in items:
        if isinstance(item, Subscription):
            subs.append(item)
        elif isinstance(item, str):
            subs.append(Subscription(item, qos))
        else:
            topic_filter, item_qos = item
            subs.append(Subscription(topic_filter, item_qos))
    return subs


def connect_client(reactor: Any, endpoint: str | Any, client_id: str = "", *,
                   version: int = 4, keep_alive: int = 60, clean_start: bool = True,
                   username: str | None = None, password: bytes | str | None = None,
                   will: Will | None = None, properties: dict | None = None,
                   on_message: MessageHandler | None = None,
                   session: ClientSession | None = None, tls: Any = None,
                   **core_options: Any) -> Deferred[MQTTClientProtocol]:
    """Connect to ``endpoint`` (a client endpoint string such as ``tcp:host:1883``,
    ``tls:host:8883``, ``unix:/path``, a ``ws://host:port/path`` or
    ``wss://host:port/path`` URL, or an ``IStreamClientEndpoint``) and send CONNECT.
    ``tls`` (an ``IOpenSSLClientConnectionCreator``, from ``optionsForClientTLS``)
    replaces the platform's trust for ``wss://``.

    Fires with the protocol once the CONNACK accepted us (``protocol.connack``), or
    fails with :class:`~mqtt_twisted.errors.ConnectError` carrying the reason code.
    ``session`` (from an earlier protocol) continues a persistent session: the
    other session options are then those of the first connection.
    """
    if isinstance(password, str):
        password = password.encode()
    if session is None:
        session = ClientSession(ClientCore(
            client_id, version, keep_alive=keep_alive, clean_start=clean_start,
            username=username, password=password, will=will, properties=properties,
            **core_options))
    protocol = MQTTClientProtocol(reactor, session, on_message)
    if isinstance(endpoint, str) and endpoint.startswith(("ws://", "wss://")):
        opened = connect_websocket(reactor, endpoint, protocol, tls)
    else:
        if isinstance(endpoint, str):
            endpoint = clientFromString(reactor, endpoint)
        opened = connectProtocol(endpoint, protocol)

    def connected(proto: MQTTClientProtocol) -> Deferred[MQTTClientProtocol]:
        d = proto.connect()

        def refused(failure: Failure) -> Failure:
            if proto.connected:
                proto.transport.loseConnection()
            return failure
        return d.addCallbacks(lambda _: proto, refused)

    return opened.addCallback(connected)
