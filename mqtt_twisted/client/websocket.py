"""MQTT over WebSocket for the client (MQTT 5.0 §6): ``connect_client(reactor, "ws://...")``.

The WebSocket carries one MQTT byte stream, as the broker's ``ws`` adapter
(``adapters/websocket.py``) sees it: the subprotocol is ``mqtt``, every frame is
binary, each frame's payload goes into the client's decoder as it arrives (a
packet may span frames, a frame may hold several packets), and every write of the
client protocol goes out as one binary message.  A text frame from the server
closes the connection with 1003 [MQTT-6.0.0-1].

Autobahn's Twisted ``WebSocketClientProtocol`` does the framing; the TCP (or TLS)
connection comes from a Twisted endpoint, so ``wss://`` verifies the server with
``optionsForClientTLS`` (the platform's trust, or the ``tls`` options given)
rather than Autobahn's unverified default context.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.util import parse_url
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IPushProducer
from twisted.internet.ssl import optionsForClientTLS
from zope.interface import implementer

from mqtt_twisted._wsframes import BinaryFramesOnly

__all__ = ["SUBPROTOCOL", "WebSocketError", "connect_websocket"]

#: The WebSocket subprotocol of MQTT 3.1.1 and 5.0 [MQTT-6.0.0-3].
SUBPROTOCOL = "mqtt"


class WebSocketError(ConnectionError):
    """The WebSocket handshake failed or the server did not speak MQTT over it."""


@implementer(IPushProducer)
class _Transport:
    """What :class:`MQTTClientProtocol` writes to: binary messages on one WebSocket."""

    def __init__(self, ws: MQTTWebSocketClientProtocol) -> None:
        self._ws = ws

    def write(self, data: bytes) -> None:
        if self._ws.state == self._ws.STATE_OPEN:
            self._ws.sendMessage(data, isBinary=True)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self._ws.state == self._ws.STATE_OPEN:
            self._ws.sendClose(1000)
        else:
            self._ws.transport.loseConnection()

    def abortConnection(self) -> None:
        self._ws.transport.abortConnection()

    def pauseProducing(self) -> None:
        self._ws.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._ws.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abortConnection()

    def getPeer(self) -> Any:
        return self._ws.transport.getPeer()

    def getHost(self) -> Any:
        return self._ws.transport.getHost()


class MQTTWebSocketClientProtocol(BinaryFramesOnly, WebSocketClientProtocol):
    """One WebSocket to a broker whose binary frames are the MQTT byte stream."""

    def __init__(self, mqtt: Any, opened: Deferred[Any]) -> None:
        super().__init__()
        self.mqtt = mqtt
        self.opened = opened
        self._made = False

    def onConnect(self, response: Any) -> None:
        if response.protocol != SUBPROTOCOL:
            # Autobahn would accept a server that chose no subprotocol.
            self._fail(f"the server chose subprotocol {response.protocol!r}, not "
                       f"{SUBPROTOCOL!r}")

    def onOpen(self) -> None:
        if self.opened.called:
            return
        self._made = True
        self.mqtt.makeConnection(_Transport(self))
        self.opened.callback(self.mqtt)

    def _fail(self, why: str) -> None:
        if not self.opened.called:
            self.opened.errback(WebSocketError(why))
        self.transport.abortConnection()

    # --- frames in: straight into the MQTT stream, nothing kept per message ---

    def onMessageFrameData(self, payload: bytes) -> None:
        if not self._refused and self._made:
            self.mqtt.dataReceived(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(WebSocketError(
                f"WebSocket handshake failed: {reason or 'connection closed'}"))

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        # Autobahn leaves its close-handshake timer running when the socket goes first.
        call = getattr(self, "closeHandshakeTimeoutCall", None)
        if call is not None and call.active():
            call.cancel()
        self.closeHandshakeTimeoutCall = None
        if self._made:
            self._made = False
            self.mqtt.connectionLost(reason)


class _Timers:
    """Autobahn's timer API on plain reactor calls: its 200 ms batches outlive a
    cancelled timer (a dirty reactor in tests, a late call in programs)."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> Any:
        return self._reactor.callLater(delay, func, *args, **kwargs)


class _Factory(WebSocketClientFactory):
    def __init__(self, reactor: Any, url: str, mqtt: Any, opened: Deferred[Any]) -> None:
        super().__init__(url, protocols=[SUBPROTOCOL], reactor=reactor)
        self._batched_timer = _Timers(reactor)
        self._mqtt = mqtt
        self._opened = opened
        self.setProtocolOptions(tcpNoDelay=True, openHandshakeTimeout=30,
                                closeHandshakeTimeout=5)

    def buildProtocol(self, addr: Any) -> MQTTWebSocketClientProtocol:
        proto = MQTTWebSocketClientProtocol(self._mqtt, self._opened)
        proto.factory = self
        return proto


def connect_websocket(reactor: Any, url: str, mqtt: Any, tls: Any = None) -> Deferred[Any]:
    """Open a WebSocket to ``url`` (``ws://host[:port]/path``, ``wss://...``) and run the
    MQTT protocol ``mqtt`` over it; fires with ``mqtt`` once the handshake is done."""
    try:
        secure, host, port, _, _, _ = parse_url(url)
    except Exception as e:
        raise ValueError(f"{url!r} is not a ws:// or wss:// URL: {e}") from None
    hostname = urlsplit(url).hostname or host
    opened: Deferred[Any] = Deferred()
    endpoint: Any = HostnameEndpoint(reactor, hostname, port)
    if secure:
        endpoint = wrapClientTLS(tls or optionsForClientTLS(hostname), endpoint)
    factory = _Factory(reactor, url, mqtt, opened)

    def failed(failure: Any) -> Any:
        if not opened.called:
            opened.errback(failure)
        return None

    endpoint.connect(factory).addErrback(failed)
    return opened
