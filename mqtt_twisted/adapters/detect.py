"""One port for several protocols: ``--listen auto=tcp:1884`` (or ``auto=ssl:...``).

The first bytes of a connection tell the protocol: an MQTT CONNECT starts with
0x10; an HTTP request with a method name, and a WebSocket one is an HTTP request
asking to ``Upgrade: websocket``.  The connection is then handed, bytes read so
far included, to the factory that the ``mqtt``, ``http`` or ``ws`` adapter's
``buildFactory`` (:class:`~mqtt_twisted.interfaces.IStreamAdapter`) builds, so
each protocol behaves exactly as on a port of its own.  WebSocket goes to the ``ws`` adapter when one is installed, and
to the HTTP bridge (which answers 404) otherwise.  With TLS in front (``ssl:``)
the same is done with the decrypted bytes.

:func:`classify` is the decision, without I/O; :class:`DetectingProtocol` is the
thin wrapper, shaped like Twisted's ``protocols/haproxy`` wrapper.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import IService
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.adapters import tls
from mqtt_twisted.adapters.http import OPTIONS as HTTP_OPTIONS
from mqtt_twisted.adapters.kit import ConnectionLimit
from mqtt_twisted.adapters.listener import ListenerSettings
from mqtt_twisted.adapters.options import normalize
from mqtt_twisted.interfaces import IListenerChecker, IStreamAdapter

log = Logger()

MQTT, HTTP, WEBSOCKET = "mqtt", "http", "ws"

#: Request methods an HTTP request may start with (RFC 9110, and PATCH).
METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ",
           b"TRACE ", b"CONNECT ")
#: Bytes of an HTTP request head read while looking for ``Upgrade: websocket``; a longer
#: head goes to the HTTP site, which applies its own limits.
MAX_HEAD = 16384


class UnknownProtocol(Exception):
    """The first bytes are neither MQTT nor HTTP."""


def classify(data: bytes, websocket: bool = True) -> str | None:
    """The protocol the first bytes of a connection speak: ``"mqtt"``, ``"http"`` or
    ``"ws"``; None while more bytes are needed to tell.  ``websocket`` False: never
    ``"ws"`` (no WebSocket adapter; the request head need not be read whole).

    Raises :class:`UnknownProtocol` for anything else.
    """
    if not data:
        return None
    if data[0] == 0x10:  # CONNECT [MQTT-3.1.0-1]: the first packet a client sends
        return MQTT
    if not data.startswith(METHODS):
        if any(method.startswith(data) for method in METHODS):
            return None
        raise UnknownProtocol(f"unrecognised first bytes {data[:16]!r}")
    if not websocket:
        return HTTP
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return HTTP if len(data) > MAX_HEAD else None
    for line in data[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return WEBSOCKET
    return HTTP


@implementer(IHandshakeListener)
class DetectingProtocol(Protocol):
    """Reads until :func:`classify` decides, then hands the connection to the chosen
    protocol: it gets the real transport, so its writes and producer go straight to it,
    and from then on each ``dataReceived`` goes straight to it as well.  Behind TLS the
    chosen protocol hears of the finished handshake too (before any data, as always)."""

    inner: Any = None
    _timer: Any = None
    _handshake_done = False

    def connectionMade(self) -> None:
        self._buffer = b""
        deadline = self.factory.settings.connectTimeout
        if deadline:
            self._timer = self.factory.reactor.callLater(deadline, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self._buffer += data
        try:
            choice = classify(self._buffer, WEBSOCKET in self.factory.factories)
        except UnknownProtocol as e:
            self._cancel_timer()
            log.info("Closing a connection from {peer}: {error}",
                     peer=self.transport.getPeer(), error=e)
            self.transport.abortConnection()
            return
        if choice is not None:
            self._hand_over(choice)

    def _hand_over(self, choice: str) -> None:
        self._cancel_timer()
        inner = self.factory.factories[choice].buildProtocol(self.transport.getPeer())
        if inner is None:  # refused by that protocol's factory
            self.transport.loseConnection()
            return
        self.inner = inner
        self.dataReceived = inner.dataReceived  # type: ignore[method-assign]
        buffered, self._buffer = self._buffer, b""
        inner.makeConnection(self.transport)
        if self._handshake_done and IHandshakeListener.providedBy(inner):
            inner.handshakeCompleted()
        if buffered:
            inner.dataReceived(buffered)

    def handshakeCompleted(self) -> None:
        self._handshake_done = True

    def _timed_out(self) -> None:
        self._timer = None
        if self.inner is None:
            log.info("No protocol from {peer} in time; closing", peer=self.transport.getPeer())
            self.transport.abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_timer()
        self.factory.forget(self)
        if self.inner is not None:
            self.inner.connectionLost(reason)


class DetectingFactory(Factory):
    """Builds detecting protocols within the listener's connection limit; starts and stops
    the protocols' own factories with itself."""

    protocol = DetectingProtocol
    noisy = False

    def __init__(self, reactor: Any, broker: Any, settings: Any,
                 factories: dict[str, Any]) -> None:
        self.reactor = reactor
        self.broker = broker
        self.settings = settings
        self.factories = factories
        self.connections: set[DetectingProtocol] = set()
        self.limit = ConnectionLimit(broker, settings)

    def buildProtocol(self, addr: Any) -> Protocol | None:
        if self.limit.full():
            # A protocol that took the socket over (Autobahn's WebSocket resource does)
            # never tells us it ended: count only sockets still open.
            self.connections = {p for p in self.connections if _open(p.transport)}
            self.limit.active = len(self.connections)
        if not self.limit.admit(addr):
            return None
        protocol = super().buildProtocol(addr)
        self.connections.add(protocol)  # type: ignore[arg-type]
        return protocol

    def forget(self, protocol: DetectingProtocol) -> None:
        """A connection ended (if not already counted out as closed)."""
        if protocol in self.connections:
            self.connections.discard(protocol)
            self.limit.release()

    def startFactory(self) -> None:
        for factory in self.factories.values():
            factory.doStart()

    def stopFactory(self) -> None:
        """The listener stopped: so did the protocols' factories (the HTTP bridge closes
        its streams; MQTT connections are the broker's to close)."""
        for factory in self.factories.values():
            factory.doStop()


def _open(transport: Any) -> bool:
    """Whether the socket under ``transport`` (TLS or not) is still connected."""
    while transport is not None and not hasattr(transport, "socket"):
        transport = getattr(transport, "transport", None)
    return transport is not None and bool(transport.connected)


@implementer(IStreamAdapter, IListenerChecker)
class DetectAdapter:
    """MQTT, the HTTP bridge and MQTT over WebSocket on one port.

    ``adapters`` is called for the installed adapters by name (the plugin passes
    :func:`mqtt_twisted.plugins.plugins_by_name` for ``IAdapter``), so that a ``ws``
    adapter installed later is found too.
    """

    name = "auto"
    description = ("MQTT, the HTTP bridge and (if installed) MQTT over WebSocket on one "
                   "port, told apart by their first bytes")
    defaultEndpoint = "tcp:1884"

    def __init__(self, adapters: Callable[[], dict[str, Any]]) -> None:
        self._adapters = adapters

    @property
    def options(self) -> dict[str, Any]:
        """The keys of TLS, of the HTTP bridge and of the ``ws`` adapter, if installed."""
        keys: dict[str, Any] = {**tls.TLS_OPTIONS, **HTTP_OPTIONS}
        ws = self._adapters().get(WEBSOCKET)
        if ws is not None:
            for key, option in normalize(getattr(ws, "options", None)).items():
                keys.setdefault(key, option)
        return keys

    def checkListener(self, settings: Any) -> None:
        """Raise ValueError for a key that this or one of the protocols' adapters refuses."""
        tls.check_tls(settings.endpoint, settings.extra)
        for name, adapter in self._protocols().items():
            check = getattr(adapter, "checkListener", None)
            if check is not None:
                check(self._settings_for(name, adapter, settings.endpoint, settings))

    def buildFactory(self, reactor: Any, broker: Any, settings: Any) -> DetectingFactory:
        """The detecting factory, holding the listener's connection limit."""
        factories = self.factories(reactor, broker, settings.endpoint, settings)
        return DetectingFactory(reactor, broker, settings, factories)

    def buildListener(self, reactor: Any, broker: Any, endpointDescription: str,
                      settings: Any) -> IService:
        factory = self.buildFactory(reactor, broker, settings)
        # TLS (ssl:) in front of the detection, with the same keys and reload as elsewhere.
        return tls.stream_listener(reactor, endpointDescription, factory, settings.extra,
                                   header_timeout=settings.connectTimeout)

    def factories(self, reactor: Any, broker: Any, endpointDescription: str,
                  settings: Any) -> dict[str, Any]:
        """Each adapter's factory (``buildFactory``), with the settings it would get on a
        port of its own (TLS is done once, in front; the connection limit stays here)."""
        found: dict[str, Any] = {}
        for name, adapter in self._protocols().items():
            build = getattr(adapter, "buildFactory", None)
            if build is None:
                log.warn("The {name} adapter has no buildFactory; auto listeners leave it out",
                         name=name)
                continue
            found[name] = build(reactor, broker,
                                self._settings_for(name, adapter, endpointDescription, settings))
        return found

    def _protocols(self) -> dict[str, Any]:
        adapters = self._adapters()
        if MQTT not in adapters or HTTP not in adapters:
            raise ValueError("auto listeners need the mqtt and http adapters")
        return {name: adapters[name] for name in (MQTT, HTTP, WEBSOCKET) if name in adapters}

    @staticmethod
    def _settings_for(name: str, adapter: Any, endpoint: str, settings: Any) -> ListenerSettings:
        """The listener settings the adapter would get on a port of its own: its own keys,
        the same deadline, no connection limit (this listener holds it)."""
        own = getattr(adapter, "options", None) or {}
        extra = {k: v for k, v in (getattr(settings, "extra", None) or {}).items() if k in own}
        return ListenerSettings(name, endpoint, 0, settings.connectTimeout, extra,
                                requestTimeout=getattr(settings, "requestTimeout", 10.0),
                                minBodyRate=getattr(settings, "minBodyRate", 1024.0))
