"""MQTT over any Twisted stream endpoint: TCP, TLS (``ssl:``), UNIX sockets."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.internet.interfaces import (
    IHalfCloseableDescriptor,
    IHandshakeListener,
    IProtocol,
    IPushProducer,
    ISSLTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.adapters import _leanmqtt, _leanserver, tls
from mqtt_twisted.adapters._accepts import accept_behind
from mqtt_twisted.adapters._cork import CorkedWriter, cork_for
from mqtt_twisted.adapters._leanmqtt import CLIENT_LEFT, GONE, drain
from mqtt_twisted.adapters.kit import ConnectionLimit, origin_of
from mqtt_twisted.interfaces import IListenerChecker, IStreamAdapter


def _drain_then_lose(transport: Any, reason: Any) -> None:
    """``connectionLost`` of a transport class made by :func:`_read_before_reset`."""
    drain(transport)
    type(transport).__bases__[0].connectionLost(transport, reason)


#: Transport class -> its subclass whose connectionLost drains first (one per class).
_DRAINING: dict[type, type] = {}
#: What an MQTT listener's TCP port builds for each connection (no TLS): a lean
#: transport that drains before it is lost, with no class switch per connection.
DrainingServer = _DRAINING[_leanserver.LeanServer] = type(
    "DrainingServer", (_leanserver.LeanServer,), {
        "connectionLost": _drain_then_lose, "__module__": __name__, "__slots__": (),
        "__doc__": "LeanServer reading what the peer sent before it is lost."})


def _read_before_reset(transport: Any) -> None:
    """Make a TCP transport read what the peer sent before it lets the connection go.

    A client that publishes and then closes with unread PUBACKs makes its kernel reset
    the connection.  Twisted then drops the connection (on a failed write, or on the
    hang-up while flow control has reading paused) with the client's last PUBLISHes
    still in our socket, although the kernel kept them.  They were sent before the
    client left: read and route them first.  Only what the kernel says it holds is
    read: ``doRead`` returns None both after a read and on EWOULDBLOCK, so looping
    on it would spend thousands of failing ``recv`` calls on every silent socket.

    The transport becomes an instance of a subclass of its class (made once per
    class) rather than getting a closure over its bound methods: that was 460 bytes
    more per connection, a sixth of an idle connection's memory.
    """
    cls = type(transport)
    if cls in _DRAINING.values():
        return  # already draining
    if not (hasattr(cls, "connectionLost") and hasattr(cls, "doRead")
            and hasattr(transport, "socket")):
        return
    draining = _DRAINING.get(cls)
    if draining is None:
        draining = _DRAINING[cls] = type(cls.__name__, (cls,), {
            "connectionLost": _drain_then_lose, "__module__": cls.__module__,
            "__doc__": f"{cls.__name__} reading what the peer sent before it is lost."})
    try:
        transport.__class__ = draining
    except TypeError:  # pragma: no cover  (a layout that cannot change class)
        pass


def lean_transport(port: Any) -> Any:
    """What :meth:`MQTTAdapter.buildListener` does to a plain TCP listener's port:
    connections that are their transport's protocol (``_leanmqtt.serve``) when it
    listens with an :class:`MQTTStreamFactory` of a broker that allows it, else
    :data:`DrainingServer` transports (also what Twisted's accept builds there, after
    running out of descriptors)."""
    if isinstance(getattr(port, "factory", None), MQTTStreamFactory):
        _leanmqtt.serve(port, port.factory)
    return _leanserver.install(port, DrainingServer)


@implementer(IProtocol, IPushProducer, IHandshakeListener)
class MQTTStreamProtocol(CorkedWriter):
    """Moves bytes and connection events between a transport and the broker.

    It is also what the sans-IO connection writes to (its ``transport``): ``write``
    keeps a read's packets and writes them to the transport as one (``adapters/_cork.py``),
    and closing unregisters this producer first, so that a paused producer cannot keep the socket open.  (One
    object per connection, not a protocol plus a shim.)  It provides ``IProtocol``
    itself rather than subclass ``Protocol``: with ``__slots__`` and no instance
    dict it is 72 bytes instead of 170.
    """

    __slots__ = ("factory", "transport", "connected", "connection", "_out",
                 "_handshake_deadline")

    def __init__(self) -> None:
        self.transport: Any = None
        self.connected = 0
        self.connection: Any = None
        self._out: list[bytes] | None = None
        self._handshake_deadline: Any = None

    def send_joined(self, data: bytes) -> None:
        """What a read wrote, as one write (``CorkedWriter``)."""
        self.transport.write(data)

    def makeConnection(self, transport: Any) -> None:
        self.connected = 1
        self.transport = transport
        self.connectionMade()

    def logPrefix(self) -> str:
        return "MQTTStreamProtocol"

    def connectionMade(self) -> None:
        transport = self.transport
        if hasattr(transport, "setTcpNoDelay") and not isinstance(
                transport, _leanserver.LeanServer):  # (which is so from accept)
            try:
                transport.setTcpNoDelay(True)  # no 40 ms Nagle stalls on small packets
            except OSError:
                pass
        _read_before_reset(transport)
        if ISSLTransport.providedBy(transport):
            # The client certificate is known once the handshake is done (and no data
            # arrives before): the broker connection starts then, under a deadline.
            timeout = self.factory.listener.connectTimeout
            reactor = self.factory.reactor
            if timeout and reactor is not None:
                self._handshake_deadline = reactor.callLater(timeout, transport.abortConnection)
            return
        self._start()

    def handshakeCompleted(self) -> None:
        if self._handshake_deadline is not None and self._handshake_deadline.active():
            self._handshake_deadline.cancel()
        self._handshake_deadline = None
        self._start()

    def _start(self) -> None:
        transport = self.transport
        origin = origin_of(transport, self.factory.listener)  # (certificate: handshake done)
        self.connection = self.factory.broker.buildConnection(
            self, origin.peer, origin.listener, origin.certificateIdentity,
        )
        transport.registerProducer(self, True)

    # What the sans-IO connection calls (besides ``write``).
    def loseConnection(self) -> None:
        """Flush, then close.  A socket closes its write side first (FIN) and reads and
        drops what the client still sends until the client closes too (the connection
        aborts it after its close grace): closing with unread bytes makes the kernel
        send a reset, which can destroy a DISCONNECT the client has not read yet.

        TLS closes with its own close_notify instead.  The class is asked, not the
        object: Twisted's ``ProtocolWrapper.makeConnection`` makes the TLS wrapper
        (``twisted.protocols.tls.BufferingTLSTransport``) declare every interface of
        the TCP transport under it, half-closeable included, and its ``__getattr__``
        hands ``loseWriteConnection`` to that TCP transport: TLS never said
        close_notify, and once the FIN was out, a TLS error in the client's next bytes
        made Twisted close the TCP connection synchronously, in the middle of
        ``TLSMemoryBIOProtocol._flushReceiveBIO``, which then failed ("Unhandled
        Error ... 'NoneType' object has no attribute 'bio_read'")."""
        self.flush()
        transport = self.transport
        transport.unregisterProducer()
        ended = self.connection.ended if self.connection is not None else None
        if ended is not None and ended[0] in CLIENT_LEFT:
            # The client said DISCONNECT: it sends nothing more and we answer nothing,
            # so no reset can hurt; a plain close spares the half-close's shutdown and
            # the reactor turn that waits for the client's FIN.
            transport.loseConnection()
        elif IHalfCloseableDescriptor.implementedBy(type(transport)):
            transport.loseWriteConnection()
            transport.resumeProducing()  # (flow control may have paused reading)
        else:
            transport.loseConnection()

    def abortConnection(self) -> None:
        self._out = None  # an abort drops what is unsent, as the transport's does
        self.transport.unregisterProducer()
        self.transport.abortConnection()

    def pauseReading(self) -> None:
        """Flow control: a subscriber this client feeds is full."""
        self.transport.pauseProducing()

    def resumeReading(self) -> None:
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.factory.cork.read(self.connection.dataReceived, data)

    def connectionLost(self, reason: Any = None) -> None:
        self._out = None
        self.factory.connection_closed()
        connection = self.connection
        if connection is not None:
            connection.connectionLost(reason)
            # The connection's transport is this protocol: left as they are, each closed
            # connection was a reference cycle (8 objects) that only the cyclic collector
            # frees, a few of them promoted to the oldest generation at every young
            # collection under a flood of short connections (issue 14: the live fuzz).
            connection.transport = GONE
            return
        if self._handshake_deadline is not None and self._handshake_deadline.active():
            self._handshake_deadline.cancel()
        if ISSLTransport.providedBy(self.transport):
            self.factory.log.info("TLS handshake with {peer} failed: {error}",
                                  peer=self.transport.getPeer(),
                                  error=reason.getErrorMessage() if reason else "closed")

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

    def __init__(self, broker: Any, listener: Any, reactor: Any = None) -> None:
        self.broker = broker
        self.listener = listener
        self.reactor = reactor if reactor is not None else getattr(broker, "reactor", None)
        self.cork = cork_for(self.reactor)
        self.limit = ConnectionLimit(broker, listener)

    @property
    def active(self) -> int:
        """Sockets held on this listener."""
        return self.limit.active

    @property
    def refused(self) -> int:
        return self.limit.refused

    def buildProtocol(self, addr: Any) -> Protocol | None:
        if not self.limit.admit(addr):
            return None  # Twisted closes the socket at once
        return super().buildProtocol(addr)

    def connection_closed(self) -> None:
        self.limit.release()


@implementer(IStreamAdapter, IListenerChecker)
class MQTTAdapter:
    """MQTT 3.1, 3.1.1 and 5.0 over a stream endpoint (``tcp:``, ``ssl:``, ``unix:``)."""

    name = "mqtt"
    description = "MQTT over TCP, TLS (ssl:) or UNIX sockets"
    defaultEndpoint = "tcp:1883"
    options = dict(tls.TLS_OPTIONS)

    def checkListener(self, settings: Any) -> None:
        """Raise ValueError unless the listener's TLS files and keys work (start-up check)."""
        tls.check_tls(settings.endpoint, settings.extra)

    def buildFactory(self, reactor: Any, broker: Any, settings: Any) -> MQTTStreamFactory:
        """The factory serving one listener (an ``auto=`` listener's MQTT connections too)."""
        settings.identityAsUsername = tls.wants_identity_as_username(settings.extra)
        return MQTTStreamFactory(broker, settings, reactor)

    def buildListener(self, reactor: Any, broker: Any, endpointDescription: str,
                      settings: Any) -> IService:
        factory = self.buildFactory(reactor, broker, settings)
        service = tls.stream_listener(reactor, endpointDescription, factory, settings.extra,
                                   header_timeout=settings.connectTimeout)
        # (TLS reads through its own protocol: its transport does not drain.)
        if service.tls is not None:
            service.whenListening().addCallback(_leanserver.install, _leanserver.LeanServer)
        else:
            service.whenListening().addCallback(lean_transport)
        # New connections wait in the kernel's backlog while CONNECTs wait at the gate.
        gate = getattr(broker, "connect_gate", None)
        if gate is not None:
            service.whenListening().addCallback(accept_behind, gate.__len__)
        service.mqtt_factory = factory  # (service.factory is what listens: TLS around it)
        return service
