"""MQTT over any Twisted stream endpoint: TCP, TLS (``ssl:``), UNIX sockets."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.interfaces import IAdapter


class _TransportShim:
    """What the sans-IO connection writes to: the transport's own ``write`` (no extra
    call per packet), and closes that unregister our producer first, so a paused
    producer cannot keep the socket open."""

    __slots__ = ("write", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.write = transport.write

    def loseConnection(self) -> None:
        self._transport.unregisterProducer()
        self._transport.loseConnection()

    def abortConnection(self) -> None:
        self._transport.unregisterProducer()
        self._transport.abortConnection()


@implementer(IPushProducer)
class MQTTStreamProtocol(Protocol):
    """Moves bytes and connection events between a transport and the broker."""

    connection: Any = None

    def connectionMade(self) -> None:
        transport = self.transport
        if hasattr(transport, "setTcpNoDelay"):
            try:
                transport.setTcpNoDelay(True)  # no 40 ms Nagle stalls on small packets
            except OSError:
                pass
        peer = transport.getPeer()
        peer_text = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        self.connection = self.factory.broker.buildConnection(
            _TransportShim(transport), peer_text, self.factory.listener,
            self.factory.certificate_identity(transport),
        )
        transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        self.connection.dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.connection_closed()
        if self.connection is not None:
            self.connection.connectionLost(reason)

    # IPushProducer: the transport tells us when its buffer is full or drained.
    def pauseProducing(self) -> None:
        self.connection.pauseWriting()

    def resumeProducing(self) -> None:
        self.connection.resumeWriting()

    def stopProducing(self) -> None:
        pass


class MQTTStreamFactory(Factory):
    """Builds one protocol per socket, refusing sockets beyond the listener's limit."""

    protocol = MQTTStreamProtocol
    noisy = False
    log = Logger()

    def __init__(self, broker: Any, listener: Any) -> None:
        self.broker = broker
        self.listener = listener
        self.active = 0
        self.refused = 0

    def buildProtocol(self, addr: Any) -> Protocol | None:
        limit = self.listener.maxConnections
        if limit and self.active >= limit:
            self.refused += 1
            self.broker.stats.connections_refused += 1
            self.log.warn("Refusing a connection from {addr}: {limit} connections held on "
                          "{listener}", addr=addr, limit=limit, listener=self.listener.endpoint)
            return None  # Twisted closes the socket at once
        self.active += 1
        return super().buildProtocol(addr)

    def connection_closed(self) -> None:
        self.active -= 1

    def certificate_identity(self, transport: Any) -> str | None:
        """The TLS client certificate's common name, if one was presented."""
        get_cert = getattr(transport, "getPeerCertificate", None)
        if get_cert is None:
            return None
        try:
            cert = get_cert()
        except Exception:
            return None
        if cert is None:
            return None
        subject = cert.get_subject()
        return getattr(subject, "commonName", None) or getattr(subject, "CN", None)


@implementer(IAdapter)
class MQTTAdapter:
    """MQTT 3.1, 3.1.1 and 5.0 over a stream endpoint (``tcp:``, ``ssl:``, ``unix:``)."""

    name = "mqtt"
    description = "MQTT over TCP, TLS (ssl:) or UNIX sockets"
    defaultEndpoint = "tcp:1883"
    options: dict[str, str] = {}

    def buildListener(self, reactor: Any, broker: Any, endpointDescription: str,
                      settings: Any) -> IService:
        endpoint = serverFromString(reactor, endpointDescription)
        factory = MQTTStreamFactory(broker, settings)
        service = StreamServerEndpointService(endpoint, factory)
        service._raiseSynchronously = True  # a port in use fails start-up loudly
        service.factory = factory
        return service
