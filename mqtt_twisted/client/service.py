"""A client that stays connected: :class:`MQTTClientService`, on Twisted's ``ClientService``.

``ClientService`` reconnects the transport; this class adds what MQTT needs on top:

- **Back-off** counted in MQTT terms: the delay grows (exponentially, with jitter, capped)
  until a CONNACK *accepts* us, not merely until TCP connects, so a broker that refuses
  every CONNECT is not hammered.  (Twisted's ``prepareConnection`` would count that too,
  but a connection lost while it runs raises ``NoTransition`` in Twisted 26.10: the
  CONNECT runs in the protocol instead.)
- **Subscriptions** remembered and sent again when the CONNACK says the broker has no
  session for us (session present 0).
- **In flight** QoS 1/2 publishes survive a reconnect: a persistent session resends them
  with DUP (the client core does); when the session is gone they are published again, so
  that a publish Deferred fires only on the broker's acknowledgement, or with the
  broker's refusal (:class:`~mqtt_twisted.client.PublishError`).
- **Offline publishes** wait in a queue bounded in count and bytes.  Past the bound a
  QoS 0 message is dropped and counted (:attr:`MQTTClientService.dropped`), a QoS 1/2
  publish fails with :class:`QueueFull`.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.client.core import ClientCore, ConnectError, SessionLost
from mqtt_twisted.client.protocol import (
    ClientSession,
    MessageHandler,
    MQTTClientProtocol,
    _subscriptions,
)
from mqtt_twisted.codec import Subscription, Will
from mqtt_twisted.errors import MQTTError

__all__ = ["MQTTClientService", "QueueFull", "backoff"]

log = Logger()


class QueueFull(MQTTError):
    """A QoS 1/2 publish made while offline found the offline queue full."""


def backoff(initial: float = 1.0, maximum: float = 60.0, factor: float = 2.0,
            jitter: Callable[[], float] = random.random) -> Callable[[int], float]:
    """Seconds to wait before attempt ``n`` (1, 2, ...): ``initial * factor**n`` capped
    at ``maximum``, plus ``jitter()`` (0..1 s by default) so that many clients cut off
    together do not come back together."""
    return backoffPolicy(initial, maximum, factor, jitter)


class _Pending:
    """A publish waiting for a connection, and the Deferred its caller holds."""

    __slots__ = ("topic", "payload", "qos", "retain", "properties", "result")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool,
                 properties: dict | None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
        self.result: Deferred[Any] = Deferred()

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.topic)


class _ServiceProtocol(MQTTClientProtocol):
    """The client protocol, sending CONNECT as soon as the transport is up and telling
    the service when the broker accepted it and when the connection went."""

    service: MQTTClientService

    def connectionMade(self) -> None:
        super().connectionMade()
        self.connect().addCallbacks(lambda _: self.service._online(self), self._refused)

    def _refused(self, failure: Failure) -> None:
        if failure.check(ConnectError):
            self.service._refused(failure.value)
        if self.connected:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        # The service goes offline first, so that what fails below is queued again
        # rather than sent on this dead connection.
        self.service._lost(self, reason)
        super().connectionLost(reason)


class _Factory(Factory):
    noisy = False  # the service logs connects and disconnects itself

    def __init__(self, service: MQTTClientService) -> None:
        self.service = service

    def buildProtocol(self, addr: Any) -> _ServiceProtocol:
        service = self.service
        proto = _ServiceProtocol(service.clock, service.session, service.on_message)
        proto.service = service
        proto.factory = self
        return proto


class MQTTClientService(ClientService):
    """Keeps one MQTT client connected to ``endpoint`` (a client endpoint string or an
    ``IStreamClientEndpoint``) while the service runs; see the module docstring."""

    log = log

    def __init__(self, reactor: Any, endpoint: str | Any, client_id: str = "", *,
                 version: int = 4, keep_alive: int = 60, clean_start: bool = True,
                 username: str | None = None, password: bytes | str | None = None,
                 will: Will | None = None, properties: dict | None = None,
                 on_message: MessageHandler | None = None,
                 retry_policy: Callable[[int], float] | None = None,
                 max_queued: int = 1000, max_queued_bytes: int = 1 << 20,
                 core: ClientCore | None = None, **core_options: Any) -> None:
        if isinstance(password, str):
            password = password.encode()
        description = endpoint if isinstance(endpoint, str) else repr(endpoint)
        if isinstance(endpoint, str):
            endpoint = clientFromString(reactor, endpoint)
        if core is None:
            core = ClientCore(client_id, version, keep_alive=keep_alive,
                              clean_start=clean_start, username=username, password=password,
                              will=will, properties=properties, **core_options)
        self.clock = reactor
        self.session = ClientSession(core)
        self.on_message = on_message
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        #: The connection the broker accepted, or None while offline.
        self.protocol: _ServiceProtocol | None = None
        #: QoS 0 messages dropped because the offline queue was full.
        self.dropped = 0
        #: Connections the broker accepted so far.
        self.connections = 0
        #: Called with the protocol after every accepted CONNECT, and with the reason
        #: after every lost connection that had been accepted.
        self.on_connect: list[Callable[[MQTTClientProtocol], Any]] = []
        self.on_disconnect: list[Callable[[Any], Any]] = []
        self._policy = retry_policy or backoff()
        self._attempts = 0
        self._queue: deque[_Pending] = deque()
        self._queued_bytes = 0
        #: Accepted publishes whose connection or session went before they completed.
        self._resend: deque[_Pending] = deque()
        #: filter -> (Subscription, properties): what to subscribe again.
        self._subscriptions: dict[str, tuple[Subscription, dict | None]] = {}
        #: Filters the broker granted (SUBACK) in the session it holds for us.
        self._confirmed: set[str] = set()
        #: Subscribe calls made while offline, and the Deferreds their callers hold.
        self._unsent: list[tuple[list[Subscription], dict | None, Deferred[Any]]] = []
        self.endpoint_description = description
        super().__init__(endpoint, _Factory(self), retryPolicy=self._retry, clock=reactor)

    # --- state ----------------------------------------------------------------------------

    @property
    def core(self) -> ClientCore:
        return self.session.core

    @property
    def online(self) -> bool:
        """Whether a connection is open and the broker accepted it."""
        return self.protocol is not None

    @property
    def queued(self) -> int:
        """Publishes waiting for a connection (including those to publish again)."""
        return len(self._queue) + len(self._resend)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def _retry(self, attempt: int) -> float:
        # Counted here, reset by an accepted CONNACK (ClientService resets on TCP).
        self._attempts += 1
        return self._policy(self._attempts)

    # --- the API --------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0,
                retain: bool = False, properties: dict | None = None) -> Deferred[Any]:
        """Publish now if online, else queue; fires as
        :meth:`MQTTClientProtocol.publish` does, once the message went out (QoS 0) or
        the broker acknowledged it (QoS 1/2), across reconnects."""
        if isinstance(payload, str):
            payload = payload.encode()
        if qos not in (0, 1, 2):
            return fail(ValueError(f"QoS {qos}: expected 0, 1 or 2"))
        item = _Pending(topic, payload, qos, retain, properties)
        if self.protocol is not None and not self._queue and not self._resend:
            self._send(self.protocol, item)
            return item.result
        if (len(self._queue) >= self.max_queued
                or self._queued_bytes + item.size > self.max_queued_bytes):
            if qos == 0:
                self.dropped += 1
                return succeed(None)
            return fail(QueueFull(f"offline queue full ({len(self._queue)} messages, "
                                  f"{self._queued_bytes} bytes): {topic!r} not queued"))
        self._queue.append(item)
        self._queued_bytes += item.size
        return item.result

    def subscribe(self, topics: str | list[Any], qos: int = 0,
                  handler: MessageHandler | None = None,
                  properties: dict | None = None) -> Deferred[list[int]]:
        """Subscribe now or at the next connection, and again whenever the broker has
        lost our session; fires with the granted codes of the first SUBACK, however
        many connections that takes."""
        subs = _subscriptions(topics, qos)
        for s in subs:
            self._subscriptions[s.topic_filter] = (s, properties)
            if handler is not None:
                self.session.handlers.append((s.topic_filter, handler))
        d: Deferred[list[int]] = Deferred()
        if self.protocol is not None:
            self._send_subscribe(self.protocol, subs, properties).addCallbacks(
                d.callback, lambda _: self._unsent.append((subs, properties, d)))
        else:
            self._unsent.append((subs, properties, d))
        return d

    def _send_subscribe(self, proto: MQTTClientProtocol, subs: list[Subscription],
                        properties: dict | None) -> Deferred[list[int]]:
        def granted(codes: list[int]) -> list[int]:
            for s, code in zip(subs, codes, strict=False):
                if code < 0x80 and s.topic_filter in self._subscriptions:
                    self._confirmed.add(s.topic_filter)
            return codes
        return proto.subscribe(subs, properties=properties).addCallback(granted)

    def unsubscribe(self, topic_filters: str | list[str],
                    properties: dict | None = None) -> Deferred[list[int]]:
        """Forget the filters; unsubscribe now if online (fires with ``[]`` if not)."""
        filters = [topic_filters] if isinstance(topic_filters, str) else list(topic_filters)
        for f in filters:
            self._subscriptions.pop(f, None)
            self._confirmed.discard(f)
        if self.protocol is not None:
            return self.protocol.unsubscribe(filters, properties)
        self.session.handlers = [(f, h) for f, h in self.session.handlers if f not in filters]
        return succeed([])

    def stopService(self) -> Deferred[None]:
        """Send DISCONNECT, then stop reconnecting; queued publishes stay queued."""
        proto = self.protocol
        if proto is not None and proto.connected:
            proto.core.disconnect()
            proto._flush()
        return super().stopService()

    # --- what the protocol tells us -------------------------------------------------------

    def _online(self, proto: _ServiceProtocol) -> None:
        if not proto.connected:
            return
        self.protocol = proto
        self._attempts = 0
        self.connections += 1
        connack = proto.connack
        log.info("MQTT client {client_id} connected to {endpoint} (session present {sp})",
                 client_id=self.core.client_id, endpoint=_describe(self), sp=int(
                     connack.session_present), action="client_connected")
        if not connack.session_present:
            self._confirmed.clear()  # the broker has none of them now
        unsent, self._unsent = self._unsent, []
        sent = set()
        for subs, props, d in unsent:
            # A connection lost before the SUBACK: the next connection sends it again.
            self._send_subscribe(proto, subs, props).addCallbacks(
                d.callback, lambda _, subs=subs, props=props, d=d: self._unsent.append(
                    (subs, props, d)))
            sent.update(s.topic_filter for s in subs)
        # Again: all of them after a lost session; else those whose SUBACK never came
        # (the connection went first: the broker may not have had the SUBSCRIBE).
        for s, props in list(self._subscriptions.values()):
            if s.topic_filter not in sent and s.topic_filter not in self._confirmed:
                self._send_subscribe(proto, [s], props).addErrback(lambda f: None)
        for callback in list(self.on_connect):
            try:
                callback(proto)
            except Exception:
                log.failure("on_connect callback failed")
        self._drain(proto)

    def _drain(self, proto: _ServiceProtocol) -> None:
        while (self._resend or self._queue) and self.protocol is proto:
            if self._resend:
                item = self._resend.popleft()
            else:
                item = self._queue.popleft()
                self._queued_bytes -= item.size
            self._send(proto, item)

    def _send(self, proto: _ServiceProtocol, item: _Pending) -> None:
        d = proto.publish(item.topic, item.payload, item.qos, item.retain, item.properties)
        if item.qos == 0:
            d.chainDeferred(item.result)
        else:
            d.addCallbacks(item.result.callback, self._not_done, errbackArgs=(item,))

    def _not_done(self, failure: Failure, item: _Pending) -> None:
        """A QoS 1/2 publish that did not complete: the broker's refusal (or our own, as
        no packet id left) is the caller's answer; a lost connection or session means
        publish it again."""
        if failure.check(SessionLost) is None and failure.check(MQTTError, ValueError):
            item.result.errback(failure)
            return
        self._resend.append(item)
        if self.protocol is not None:
            self._drain(self.protocol)

    def _refused(self, error: ConnectError) -> None:
        log.warn("MQTT client {client_id}: {endpoint} refused the connection: {error}",
                 client_id=self.core.client_id, endpoint=_describe(self), error=error)

    def _lost(self, proto: _ServiceProtocol, reason: Failure | None) -> None:
        if self.protocol is not proto:
            return
        self.protocol = None
        log.info("MQTT client {client_id} disconnected from {endpoint}: {why}",
                 client_id=self.core.client_id, endpoint=_describe(self),
                 why=reason.getErrorMessage() if reason is not None else "closed",
                 action="client_disconnected")
        for callback in list(self.on_disconnect):
            try:
                callback(reason)
            except Exception:
                log.failure("on_disconnect callback failed")


def _describe(service: MQTTClientService) -> str:
    return service.endpoint_description
