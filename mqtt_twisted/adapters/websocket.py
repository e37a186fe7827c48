"""MQTT over WebSocket (MQTT 3.1.1 §6, MQTT 5.0 §6) on Autobahn, under a twisted.web Site.

The WebSocket carries one MQTT byte stream: each binary frame's payload is fed,
as it arrives, into the same sans-IO connection machine as a TCP socket's bytes
(a frame may hold part of a packet or several), and everything the broker
writes goes out as binary messages.  The subprotocol is the first of ``mqtt``
and ``mqttv3.1`` the client offers; a client offering neither is refused at the
handshake (HTTP 400), a text frame closes the connection (close code 1003)
[MQTT-6.0.0-1].

Our own small ``WebSocketServerProtocol`` subclass rather than Autobahn's
``WrappingWebSocketServerFactory``, which accepts one subprotocol only, takes
base64 text frames and reports ``connectionLost(None)``.  The resource sits in
a ``twisted.web`` ``Site`` (at ``path=``, default ``/mqtt``), so other
resources (an HTTP adapter) can share the port.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import wildcards2patterns
from autobahn.websocket.types import ConnectionDeny
from twisted.application.service import IService
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from mqtt_twisted._wsframes import BinaryFramesOnly
from mqtt_twisted.adapters import tls
from mqtt_twisted.adapters._cork import CorkedWriter, cork_for
from mqtt_twisted.adapters._deadline import DeadlineChannel, SafeRequest
from mqtt_twisted.adapters.kit import ConnectionLimit, access_log, origin_of
from mqtt_twisted.adapters.options import AdapterOption, declare, integer, number, option_values
from mqtt_twisted.interfaces import IListenerChecker, IStreamAdapter

#: Subprotocols accepted, in the order the broker prefers them (MQTT spec §6).
SUBPROTOCOLS = ("mqtt", "mqttv3.1")

WS_OPTIONS = declare(
    AdapterOption("path", str, "/mqtt", "URL path of the WebSocket endpoint", "/PATH"),
    AdapterOption("origins", str, None,
                  "comma-separated Origins browsers may connect from, '*' wildcards "
                  "(host, or scheme://host[\\:port]; default: any)", "LIST"),
    AdapterOption("maxFrameSize", integer(metavar="BYTES"), 0,
                  "largest WebSocket frame payload accepted, bytes (0: no limit)"),
    AdapterOption("maxMessageSize", integer(metavar="BYTES"), 0,
                  "largest WebSocket message accepted, bytes (0: no limit)"),
    AdapterOption("pingInterval", number(), 0.0,
                  "seconds between WebSocket pings (0: none, the default)"),
    AdapterOption("pingTimeout", number(), None,
                  "seconds a WebSocket pong may take before the connection is closed "
                  "(default: pingInterval)"),
)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def origin_patterns(value: str) -> list[str]:
    """``origins=`` as wildcard patterns matching ``scheme://host:port``."""
    patterns = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        if entry == "*":
            patterns.append("*")
        elif "://" not in entry:
            patterns.append(f"*://{entry}:*")  # a host name: any scheme and port
        else:
            scheme, rest = entry.split("://", 1)
            rest = rest.rstrip("/")
            if ":" not in rest.rsplit("]", 1)[-1]:
                default = _DEFAULT_PORTS.get(scheme)
                rest = f"{rest}:{default}" if default else f"{rest}:*"
            patterns.append(f"{scheme}://{rest}")
    return patterns


class WebSocketOptions:
    """The ``ws`` adapter's listener keys, parsed; ValueError names a bad one."""

    def __init__(self, extra: dict[str, str]) -> None:
        values = option_values(WS_OPTIONS, extra)  # ValueError: "maxFrameSize='-1' must ..."
        self.path = values["path"] or "/"
        if not self.path.startswith("/"):
            raise ValueError(f"path={self.path!r} must start with '/'")
        self.origins = origin_patterns(extra["origins"]) if "origins" in extra else ["*"]
        if not self.origins:
            # An empty list would refuse every browser: a mistake, not a policy.
            raise ValueError(f"origins={extra['origins']!r} names no origin (leave the key "
                             f"out to allow any)")
        self.max_frame = values["maxFrameSize"]
        self.max_message = values["maxMessageSize"]
        self.ping_interval = values["pingInterval"]
        self.ping_timeout = values["pingTimeout"] or self.ping_interval
        urlsplit(self.path)  # a path Twisted can route


class _WebSocketShim(CorkedWriter):
    """The ``IConnectionTransport`` the broker writes to: binary messages on one socket.

    What one read (or one reactor turn) writes goes as one message (``adapters/
    _cork.py``): a message per packet was a frame built by Autobahn and a transport
    write each. MQTT packets need not be aligned on messages [MQTT-6.0.0-2]."""

    __slots__ = ("_protocol", "factory", "_out")

    def __init__(self, protocol: MQTTWebSocketProtocol) -> None:
        self._protocol = protocol
        self.factory = protocol.factory
        self._out: list[bytes] | None = None

    def send_joined(self, data: bytes) -> None:
        self._protocol.send_bytes(data)

    def loseConnection(self) -> None:
        self.flush()
        self._protocol.close_normally()

    def abortConnection(self) -> None:
        self._out = None
        self._protocol.abort()


@implementer(IPushProducer)
class MQTTWebSocketProtocol(BinaryFramesOnly, WebSocketServerProtocol):
    """One WebSocket client: its binary frames are an MQTT byte stream."""

    connection: Any = None
    _counted = False

    # --- handshake ----------------------------------------------------------------------

    def onConnect(self, request: Any) -> str:
        if request.origin and not self.factory.origin_allowed(request.origin):
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN,
                                 f"origin {request.origin!r} not allowed")
        for offered in request.protocols:
            if offered in SUBPROTOCOLS:
                return offered  # the first the client offers [MQTT-6.0.0-3]
        raise ConnectionDeny(ConnectionDeny.BAD_REQUEST,
                             "MQTT over WebSocket needs the subprotocol 'mqtt' (or 'mqttv3.1')")

    def onOpen(self) -> None:
        factory, transport = self.factory, self.transport
        origin = origin_of(transport, factory.listener)
        # The address's connection rate was taken at TCP accept (_Site.buildProtocol).
        if not factory.limit.admit(origin.peer, "a WebSocket", rate=False):
            self.abort()
            return
        self._counted = True
        self.connection = factory.broker.buildConnection(
            _WebSocketShim(self), origin.peer, origin.listener, origin.certificateIdentity)
        # The socket came from twisted.web, whose channel is still its producer: ours now.
        transport.unregisterProducer()
        transport.registerProducer(self, True)

    # --- frames in ------------------------------------------------------------------------

    # (A text frame is refused by BinaryFramesOnly: close code 1003.)

    def dataReceived(self, data: bytes) -> None:
        # The frames of one read answered together (adapters/_cork.py).
        self.factory.cork.read(super().dataReceived, data)

    def onMessageFrameData(self, payload: bytes) -> None:
        # Straight into the MQTT stream: nothing is buffered per message.
        if not self._refused and self.connection is not None:
            self.connection.dataReceived(payload)

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        # Autobahn leaves its close-handshake timer running when the socket goes first.
        call = getattr(self, "closeHandshakeTimeoutCall", None)
        if call is not None and call.active():
            call.cancel()
        self.closeHandshakeTimeoutCall = None
        if self._counted:
            self._counted = False
            self.factory.limit.release()
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.connectionLost(reason)

    # --- bytes out ------------------------------------------------------------------------

    def send_bytes(self, data: bytes) -> None:
        if self.state != self.STATE_OPEN:
            return
        limit = self.factory.send_limit
        if limit and len(data) > limit:
            # MQTT packets may span messages: stay within what the peer was told we accept.
            for start in range(0, len(data), limit):
                self.sendMessage(data[start:start + limit], isBinary=True)
        else:
            self.sendMessage(data, isBinary=True)

    def close_normally(self) -> None:
        self.transport.unregisterProducer()
        if self.state == self.STATE_OPEN:
            self.sendClose(1000)
        else:
            self.transport.loseConnection()

    def abort(self) -> None:
        self.transport.unregisterProducer()
        self.transport.abortConnection()

    # --- IPushProducer: the socket's buffer is full or drained ------------------------------

    def pauseProducing(self) -> None:
        if self.connection is not None:
            self.connection.pauseWriting()

    def resumeProducing(self) -> None:
        if self.connection is not None:
            self.connection.resumeWriting()

    def stopProducing(self) -> None:
        pass


class _Timers:
    """Autobahn's timer API (``call_later``) on the factory's reactor."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> Any:
        return self._reactor.callLater(delay, func, *args, **kwargs)


class MQTTWebSocketFactory(WebSocketServerFactory):
    """Builds the protocols and holds the listener's connection count."""

    protocol = MQTTWebSocketProtocol
    log = Logger()

    def __init__(self, reactor: Any, broker: Any, listener: Any,
                 options: WebSocketOptions) -> None:
        super().__init__(reactor=reactor, server="mqtt-twisted")
        # Autobahn batches its timers in 200 ms buckets whose reactor calls outlive a
        # cancelled timer; plain reactor calls are exact and leave nothing behind.
        self._batched_timer = _Timers(reactor)
        self.cork = cork_for(reactor)
        self.broker = broker
        self.listener = listener
        self.limit = ConnectionLimit(broker, listener)
        self._origins = (None if options.origins == ["*"]
                         else wildcards2patterns(options.origins))
        self.send_limit = min((x for x in (options.max_frame, options.max_message) if x),
                              default=0)
        timeout = listener.connectTimeout
        self.setProtocolOptions(
            versions=[13],
            webStatus=False,
            maxFramePayloadSize=options.max_frame,
            maxMessagePayloadSize=options.max_message,
            autoPingInterval=options.ping_interval,
            autoPingTimeout=options.ping_timeout,
            openHandshakeTimeout=timeout or 0,
            failByDrop=False,  # a failing peer gets a close code (1009: too big), not a RST
            tcpNoDelay=True,
        )

    def origin_allowed(self, origin: str) -> bool:
        """Whether a browser's Origin header matches ``origins=`` (clients that send none,
        paho and devices, are not asked)."""
        if self._origins is None:
            return True
        try:
            parts = urlsplit(origin)
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
        except ValueError:
            return False
        text = f"{parts.scheme}://{parts.hostname}:{port}"
        return any(pattern.match(text) for pattern in self._origins)

    @property
    def active(self) -> int:
        """Open WebSockets on this listener."""
        return self.limit.active


class MQTTWebSocketResource(WebSocketResource):
    """Autobahn's resource, refusing upgrades beyond the connection limit (HTTP 503) and
    turning off the HTTP channel's idle timer once the socket is a WebSocket."""

    def __init__(self, factory: MQTTWebSocketFactory) -> None:
        super().__init__(factory)
        self.ws_factory = factory

    def render(self, request: Any) -> Any:
        limit = self.ws_factory.limit
        if limit.full():
            limit.refuse(request.getClientAddress(), "a WebSocket")
            request.setResponseCode(503)
            return b"connection limit reached\n"
        request.channel.setTimeout(None)  # the WebSocket has its own handshake deadline
        return super().render(request)


class _Directory(Resource):
    """A path segment on the way to the WebSocket resource; 404 for anything else."""

    def getChild(self, path: bytes, request: Any) -> Any:
        return notFound()


class _Channel(DeadlineChannel):
    """HTTP channel with Nagle off from the first byte (handshake and MQTT are small), and
    an absolute deadline for the upgrade request however it trickles."""

    def connectionMade(self) -> None:
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass  # not a TCP socket
        super().connectionMade()


class _Site(Site):
    """The WebSocket listener's site: a source address over its connection rate is
    refused at TCP accept (the socket closed unanswered, as on MQTT listeners), before
    it costs a request head's parsing and deadline; the connection limit itself counts
    WebSockets, once upgraded."""

    ws_factory: MQTTWebSocketFactory

    def buildProtocol(self, addr: Any) -> Any:
        if not self.ws_factory.limit.within_rate(addr, "a WebSocket connection"):
            return None
        return super().buildProtocol(addr)


def build_site(reactor: Any, broker: Any, settings: Any) -> tuple[Site, Resource,
                                                                  MQTTWebSocketFactory]:
    """The Site serving MQTT over WebSocket at ``path=``; (site, root resource, factory),
    also as ``site.root`` and ``site.ws_factory``."""
    options = WebSocketOptions(settings.extra)
    factory = MQTTWebSocketFactory(reactor, broker, settings, options)
    resource = MQTTWebSocketResource(factory)
    segments = [s.encode() for s in options.path.strip("/").split("/") if s]
    if not segments:
        root: Resource = resource
    else:
        root = _Directory()
        parent = root
        for segment in segments[:-1]:
            child = _Directory()
            parent.putChild(segment, child)
            parent = child
        parent.putChild(segments[-1], resource)
    site = _Site(root, timeout=settings.connectTimeout or None, reactor=reactor)
    site.protocol = _Channel
    site.requestFactory = SafeRequest
    site.request_timeout = getattr(settings, "requestTimeout", 10.0)
    site.min_body_rate = getattr(settings, "minBodyRate", 1024.0)
    site.noisy = False
    site.log = access_log  # type: ignore[method-assign]  # debug lines only
    site.displayTracebacks = False
    site.root, site.ws_factory = root, factory
    return site, root, factory


@implementer(IStreamAdapter, IListenerChecker)
class WebSocketAdapter:
    """MQTT over WebSocket (``ws=tcp:8080``) and secure WebSocket (``ws=ssl:8443:...``)."""

    name = "ws"
    description = "MQTT over WebSocket (ws=tcp:8080) and WSS (ws=ssl:8443:privateKey=...)"
    defaultEndpoint = "tcp:8080"
    options = {**WS_OPTIONS, **tls.TLS_OPTIONS}

    def checkListener(self, settings: Any) -> None:
        """Raise ValueError for bad WebSocket keys or TLS files (start-up check)."""
        WebSocketOptions(settings.extra)
        tls.check_tls(settings.endpoint, settings.extra)

    def buildFactory(self, reactor: Any, broker: Any, settings: Any) -> Site:
        """The twisted.web Site serving one listener (an ``auto=`` listener's WebSockets too)."""
        settings.identityAsUsername = tls.wants_identity_as_username(settings.extra)
        return build_site(reactor, broker, settings)[0]

    def buildListener(self, reactor: Any, broker: Any, endpointDescription: str,
                      settings: Any) -> IService:
        site = self.buildFactory(reactor, broker, settings)
        service = tls.stream_listener(reactor, endpointDescription, site, settings.extra,
                                   header_timeout=settings.connectTimeout)
        # For adapters that share the port (an HTTP API beside /mqtt) and for tests.
        service.site, service.root, service.ws_factory = site, site.root, site.ws_factory
        return service
