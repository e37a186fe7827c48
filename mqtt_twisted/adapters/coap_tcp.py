"""CoAP over TCP and TLS (RFC 8323; ``--listen coap=tcp:5683``, ``coap=ssl:5684:...``):
the same ``/ps/{topic}`` mapping as over UDP, on a stream.

The thin shell around :mod:`mqtt_twisted.coap.tcp` (framing) and
:class:`~mqtt_twisted.adapters._coaprequests.CoapRequests` (what a request asks of
the broker): the stream makes messages reliable, so there are no ACKs, RSTs,
message ids or duplicates, and every notification goes out the same way.  Each side
starts with a CSM (Max-Message-Size, Block-Wise-Transfer); Ping is answered with
Pong; bytes that cannot be parsed, or a first message that is not a CSM, end the
connection with an Abort saying why.  When a connection closes its observations end.
Requests past the listener's ``maxRequestRate`` (per source address, as over UDP) are
answered 4.29 Too Many Requests with Max-Age 1, and the connection is not read for a
second: a client streaming requests is slowed by TCP itself, not by the broker's work.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from mqtt_twisted.adapters._coapobserve import CoapClient, Observation
from mqtt_twisted.adapters._coaprequests import Answer, CoapConfig, CoapRequests
from mqtt_twisted.adapters.kit import ConnectionLimit, peer_text
from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import options as opt
from mqtt_twisted.coap import tcp
from mqtt_twisted.coap.exchange import RateLimiter
from mqtt_twisted.coap.message import CoapFormatError, CoapMessage

log = Logger()

#: Room for a message's header and options beyond its payload, in the Max-Message-Size
#: this side announces.
HEADER_ROOM = 1024


class CoapTCPProtocol(Protocol):
    """One CoAP-over-TCP connection; it is also the link its observations notify."""

    #: Block1 pieces may be BERT (SZX 7: any number of 1024-byte units, RFC 8323 §6),
    #: as the CSM's Block-Wise-Transfer with a Max-Message-Size over 1152 promises.
    bert = True

    def __init__(self, factory: CoapTCPFactory) -> None:
        self.factory = factory
        self.requests = factory.requests
        self.decoder = tcp.StreamDecoder(factory.max_message_size)
        self.peer_max = tcp.DEFAULT_MAX_MESSAGE_SIZE
        self.got_csm = False
        self.closed = False
        self.peer_text = ""
        self.host = ""
        #: The call that reads again after a request past the rate (None: reading).
        self.resume_call: Any = None

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer_text = peer_text(peer)
        self.host = getattr(peer, "host", "") or self.peer_text
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.factory.connections.add(self)
        self.write(tcp.csm(self.factory.max_message_size))

    def write(self, message: CoapMessage) -> None:
        if not self.closed:
            self.transport.write(tcp.encode(message))

    def dataReceived(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except CoapFormatError as e:
            self.abort(e.reason)
            return
        for message in messages:
            if self.closed:
                return
            self.received(message)

    def received(self, msg: CoapMessage) -> None:
        if not self.got_csm:
            if msg.code != tcp.CSM:
                self.abort("the first message must be a CSM (RFC 8323 section 5.3)")
                return
        if tcp.is_signal(msg.code):
            self.signal(msg)
        elif m.is_request(msg.code):
            if not self.factory.rate.allow(self.host):
                self.too_many(msg)
                return
            d = self.requests.answer(msg, self)
            d.addCallback(self.respond, msg)

    def too_many(self, request: CoapMessage) -> None:
        """Past the rate: 4.29 with Max-Age 1, and nothing more is read for a second."""
        self.write(CoapMessage(m.CON, m.TOO_MANY_REQUESTS, 0, request.token,
                               [(opt.MAX_AGE, b"\x01")], b"too many requests: wait a second"))
        if self.resume_call is None and not self.closed:
            self.transport.pauseProducing()
            self.resume_call = self.factory.reactor.callLater(1.0, self._resume)

    def _resume(self) -> None:
        self.resume_call = None
        if not self.closed:
            self.transport.resumeProducing()

    def signal(self, msg: CoapMessage) -> None:
        if msg.code == tcp.CSM:
            self.got_csm = True
            size = msg.uint(tcp.MAX_MESSAGE_SIZE)
            if size is not None:
                self.peer_max = size
        elif msg.code == tcp.PING:
            self.write(CoapMessage(m.CON, tcp.PONG, 0, msg.token))
        elif msg.code in (tcp.RELEASE, tcp.ABORT):
            self.transport.loseConnection()

    def respond(self, answer: Answer, request: CoapMessage) -> None:
        response, after = answer
        self.write(CoapMessage(m.CON, response.code, 0, request.token, response.options,
                               response.payload))
        if after is not None:
            after()

    def send_notification(self, client: CoapClient, obs: Observation, note: CoapMessage,
                          confirmable: bool) -> None:
        """The stream is reliable: CON and NON are the same thing here."""
        self.write(note)

    def abort(self, reason: str) -> None:
        log.info("CoAP over TCP: aborting {peer}: {why}", peer=self.peer_text, why=reason)
        self.write(tcp.abort(reason))
        self.closed = True
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        if self.resume_call is not None and self.resume_call.active():
            self.resume_call.cancel()
        self.resume_call = None
        if self.factory.connections.pop(self, False) is not False:
            self.factory.limit.release()
        for client in list(self.requests.clients.values()):
            for topic_filter, obs in list(client.observations.items()):
                if obs.peer is self:
                    self.requests.forget(client, topic_filter)

    def __hash__(self) -> int:  # a link: equal only to itself
        return id(self)

    def __eq__(self, other: object) -> bool:
        return other is self


class _Connections(dict):  # type: ignore[type-arg]
    """The open connections (a dict as an ordered set)."""

    def add(self, conn: CoapTCPProtocol) -> None:
        self[conn] = True


class CoapTCPFactory(Factory):
    """One CoAP-over-TCP listener: its connections and what they ask of the broker."""

    def __init__(self, reactor: Any, service: Any, config: CoapConfig) -> None:
        self.reactor = reactor
        self.requests = CoapRequests(reactor, service, config)
        self.max_message_size = config.max_payload + HEADER_ROOM
        self.connections = _Connections()
        self.limit = ConnectionLimit(service, config.listener)
        #: Requests per second per source address (``maxRequestRate``; 0: no limit).
        self.rate = RateLimiter(reactor, config.max_request_rate)

    def buildProtocol(self, addr: Any) -> CoapTCPProtocol | None:
        if not self.limit.admit(addr, "a CoAP connection"):
            return None
        return CoapTCPProtocol(self)

    def stopFactory(self) -> None:
        """The listener stopped: close every connection; every observer's session ends."""
        for conn in list(self.connections):
            conn.transport.loseConnection()
        self.requests.close_all()
