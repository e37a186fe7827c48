"""CoAP over UDP (``--listen coap=udp:5683``): constrained devices publish and observe
topics through the ``/ps/{topic}`` mapping of EMQX's CoAP gateway (docs/coap.md).

The thin Twisted shell around :mod:`mqtt_twisted.coap`: datagrams in, the sans-IO
codec, the reliability layer (retransmission of our CON messages, duplicate
detection of the peers') and the mapping, and every action through the gateway
(:class:`~mqtt_twisted.interfaces.IBrokerService`), so that a CoAP client is
authenticated, authorized and counted like an MQTT one.  Observers are virtual
sessions (:mod:`mqtt_twisted.adapters._coapobserve`).
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import udp
from twisted.internet.defer import succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from mqtt_twisted.adapters import tls
from mqtt_twisted.adapters._coaplean import LeanPublisher
from mqtt_twisted.adapters._coapobserve import CoapClient, Observation
from mqtt_twisted.adapters._coaprequests import OPTIONS, Answer, CoapConfig, CoapRequests
from mqtt_twisted.adapters.kit import DatagramListener, parse_udp
from mqtt_twisted.adapters.listener import check_endpoint
from mqtt_twisted.adapters.options import AdapterOption, declare, option_values
from mqtt_twisted.adapters.udpbatch import BatchedPort
from mqtt_twisted.coap import mapping
from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import options as opt
from mqtt_twisted.coap.exchange import Deduplicator, MessageIds, RateLimiter, Retransmitter
from mqtt_twisted.interfaces import IDatagramAdapter, IEndpointChecker, IListenerChecker

log = Logger()

#: Seconds a CON request may take before it is acknowledged with an empty ACK and
#: answered separately (below ACK_TIMEOUT, so that the client does not resend it).
SEPARATE_AFTER = 1.0
#: The keys of a DTLS listener (``coap=udp:5684:dtlsKey=...:dtlsCert=...``, coaps://).
DTLS_OPTIONS = declare(
    AdapterOption("dtlsKey", str, None, "PEM private key: the udp: listener speaks DTLS "
                  "(coaps://)", metavar="FILE"),
    AdapterOption("dtlsCert", str, None, "PEM certificate (chain) for dtlsKey",
                  metavar="FILE"),
)

#: Bytes asked of the kernel for the listener's receive buffer.
RECEIVE_BUFFER = 4 << 20
#: Notifications remembered so that an RST to one ends its observation.
NOTES_KEPT = 4096


@dataclass(frozen=True)
class UdpPeer:
    """A UDP endpoint as a link (see :mod:`mqtt_twisted.adapters._coaprequests`): equal
    for the same address; notifications go out through the listener."""

    addr: Any
    server: CoapServer = field(compare=False, repr=False)

    @property
    def peer_text(self) -> str:
        return f"{self.addr[0]}:{self.addr[1]}"

    def send_notification(self, client: CoapClient, obs: Observation, note: m.CoapMessage,
                          confirmable: bool) -> None:
        self.server.send_notification(self.addr, client, obs, note, confirmable)


class _Exchange:
    """One request being answered: piggybacked on its ACK if that is quick, else an
    empty ACK first and the response as a CON of its own (§5.2.2)."""

    __slots__ = ("server", "request", "peer", "acked", "timer", "done")

    def __init__(self, server: CoapServer, request: m.CoapMessage, peer: Any) -> None:
        self.server = server
        self.request = request
        self.peer = peer
        self.acked = False
        self.timer: Any = None
        self.done = False

    def ack_now(self) -> None:
        self.timer = None
        if self.done or self.acked:
            return
        self.acked = True
        data = m.empty_ack(self.request.mid)
        self.server.send(data, self.peer)
        self.server.dedup.answered(self.peer, self.request.mid, data)

    def finish(self, answer: m.CoapMessage) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        server, request = self.server, self.request
        if mapping.no_response(request.option(opt.NO_RESPONSE), answer.code):
            # RFC 7967: not wanted.  A CON still gets the ACK that ends its resending.
            if request.type == m.CON and not self.acked:
                data = m.empty_ack(request.mid)
                server.send(data, self.peer)
                server.dedup.answered(self.peer, request.mid, data)
            return
        if self.acked:  # a separate response, confirmable
            mid = server.mids()
            data = m.encode(m.CoapMessage(m.CON, answer.code, mid, request.token,
                                          answer.options, answer.payload))
            server.retransmitter.send_con(self.peer, mid, data)
            return
        response = mapping.reply(request, answer.code, answer.payload, answer.options,
                                 server.mids() if request.type == m.NON else 0)
        data = m.encode(response)
        server.send(data, self.peer)
        server.dedup.answered(self.peer, request.mid, data)


class CoapServer(DatagramProtocol):
    """One CoAP/UDP listener: the exchanges with every endpoint, and its observers."""

    def __init__(self, reactor: Any, service: Any, config: CoapConfig) -> None:
        self.reactor = reactor
        self.requests = CoapRequests(reactor, service, config)
        self.mids = MessageIds()
        self.retransmitter = Retransmitter(reactor, self.send)
        self.dedup = Deduplicator(reactor)
        self.rate = RateLimiter(reactor, config.max_request_rate)
        #: The 4.29 answers to an address over the rate, themselves limited to as many.
        self.refusals = RateLimiter(reactor, config.max_request_rate)
        self.notes: OrderedDict[tuple[Any, int], tuple[CoapClient, Observation]] = OrderedDict()
        self.lean = LeanPublisher(self)
        #: The socket's own sendto on a plain UDP port (not under DTLS): Twisted's
        #: ``write`` checks the address's form on every datagram, and ours come
        #: from ``recvfrom``.
        self.sendto: Any = None

    def startProtocol(self) -> None:
        """A receive buffer for bursts: the kernel's default drops datagrams that come
        faster than one reactor turn reads them (the kernel caps it at rmem_max)."""
        sock = getattr(self.transport, "socket", None)
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            except OSError:
                pass
            if isinstance(self.transport, BatchedPort):  # a read's answers go together
                self.sendto = self.transport.send_datagram
                self.lean.port = self.transport
            elif isinstance(self.transport, udp.Port):
                self.sendto = sock.sendto

    def send(self, data: bytes, peer: Any) -> None:
        sendto = self.sendto
        if sendto is not None:
            try:
                sendto(data, peer)
                return
            except OSError:
                pass  # Twisted's write deals with it (EINTR again, ECONNREFUSED ignored)
        if self.transport is not None:
            self.transport.write(data, peer)

    def link(self, addr: Any) -> UdpPeer:
        """The link (``_coaprequests``) of the endpoint at ``addr``."""
        return UdpPeer(addr, self)

    def datagramsRead(self) -> None:
        """A read's datagrams are handled (``BatchedPort``): its run of publishes goes."""
        self.lean.flush()

    def stopProtocol(self) -> None:
        self.lean.flush()
        self.lean.port = None
        self.sendto = None
        self.retransmitter.stop()
        self.requests.close_all()

    # --- datagrams in -------------------------------------------------------------------

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if data and data[0] & 0x20 == 0:  # a CON or NON (type bits 00/01)
            if not self.rate.allow(addr[0]):
                # From an address over maxRequestRate (ACKs and RSTs are never
                # refused): refused before it is even decoded, so that a flood costs
                # the broker little more than reading it.
                self.refuse(data, addr)
                return
            if self.lean.take(data, addr):  # a plain QoS 0 publish (_coaplean.py)
                return
        if self.lean.run:
            self.lean.flush()  # what the lean path holds goes before anything else does
        try:
            msg = m.decode(data)
        except m.CoapFormatError as e:
            # A CON that cannot be parsed is rejected; anything else is ignored (§4.2-4.3).
            log.debug("CoAP: malformed datagram from {peer}: {why}", peer=addr, why=e.reason)
            if e.type == m.CON and e.mid is not None:
                self.send(m.reset_for(e.mid), addr)
            return
        if msg.type in (m.ACK, m.RST):
            self.answered(msg, addr)
            return
        if not m.is_request(msg.code):
            if msg.type == m.CON:  # a CoAP ping (empty CON), or a response we never asked for
                self.send(m.reset_for(msg.mid), addr)
            return
        seen = self.dedup.check(addr, msg.mid)
        if seen is not None:
            if seen:
                self.send(seen, addr)  # the same answer again, not a second action
            return
        self.follow(self.requests.answer(msg, UdpPeer(addr, self)), msg, addr)

    def datagramTooLong(self, head: bytes, addr: Any) -> None:
        """A datagram longer than the listener reads (``head``: its first bytes, as many
        as it reads): never acted on cut short.  A request gets 4.13 with Size1, the
        payload that would have fit with its options (RFC 7959 §2.9.3: Block1 carries
        more); anything else, or what does not decode, is dropped."""
        try:
            msg = m.decode(head)
        except m.CoapFormatError:
            return
        if msg.type not in (m.CON, m.NON) or not m.is_request(msg.code):
            return
        seen = self.dedup.check(addr, msg.mid)
        if seen is not None:
            if seen:
                self.send(seen, addr)  # a retransmission: the same answer again
            return
        marker = head.find(b"\xff", 4 + (head[0] & 15))
        room = min(len(head) - marker - 1 if marker >= 0 else 0,
                   self.requests.config.max_payload)
        self.follow(succeed((m.CoapMessage(
            m.ACK, m.REQUEST_ENTITY_TOO_LARGE, 0, b"", [(opt.SIZE1, opt.encode_uint(room))],
            f"larger than the {len(head)} bytes a datagram may have here: "
            "send the payload in Block1 pieces".encode()), None)), msg, addr)

    def follow(self, answer: Any, msg: m.CoapMessage, addr: Any) -> None:
        """Send ``answer`` (a Deferred Answer that does not fail) to request ``msg``
        from ``addr`` when it comes: piggybacked if quick, else after an empty ACK."""
        exchange = _Exchange(self, msg, addr)
        answer.addCallback(self._answer, exchange)
        if not exchange.done and msg.type == m.CON:
            exchange.timer = self.reactor.callLater(SEPARATE_AFTER, exchange.ack_now)

    def refuse(self, data: bytes, addr: Any) -> None:
        """A request over the rate: a CON gets 4.29 Too Many Requests with Max-Age 1 (as
        many a second as the rate, then nothing: the flood goes unanswered), a NON
        nothing.  Not remembered as answered: resent later, it is served."""
        if data[0] & 0x30 != 0 or not self.refusals.allow(addr[0]):
            return
        try:
            msg = m.decode(data)
        except m.CoapFormatError:
            return
        if m.is_request(msg.code):
            self.send(m.encode(m.CoapMessage(
                m.ACK, m.TOO_MANY_REQUESTS, msg.mid, msg.token, [(opt.MAX_AGE, b"\x01")],
                b"too many requests: wait a second")), addr)

    def _answer(self, answer: Answer, exchange: _Exchange) -> None:
        response, after = answer
        exchange.finish(response)
        if after is not None:
            after()

    def answered(self, msg: m.CoapMessage, addr: Any) -> None:
        """An ACK or RST to one of our CON messages or notifications."""
        if msg.type == m.ACK:
            self.retransmitter.acknowledged(addr, msg.mid)
            return
        cancelled = self.retransmitter.cancel(addr, msg.mid)
        note = self.notes.pop((addr, msg.mid), None)
        if cancelled and note is not None:
            note[0].acknowledged()
        if note is not None:
            note[0].lost(note[1], "reset by the observer")

    def send_notification(self, addr: Any, client: CoapClient, obs: Observation,
                          note: m.CoapMessage, confirmable: bool) -> None:
        """A notification: NON, or CON resent until acknowledged (the observer is
        dropped if it never is); an RST to either ends the observation."""
        note.type = m.CON if confirmable else m.NON
        note.mid = mid = self.mids()
        data = m.encode(note)
        self.notes[(addr, mid)] = (client, obs)
        while len(self.notes) > NOTES_KEPT:
            self.notes.popitem(last=False)
        if confirmable:
            client.sent_confirmable()

            def failed() -> None:
                client.acknowledged()
                client.lost(obs, "unacknowledged")

            self.retransmitter.send_con(addr, mid, data, on_ack=client.acknowledged,
                                        on_fail=failed)
        else:
            self.send(data, addr)


@implementer(IDatagramAdapter, IEndpointChecker, IListenerChecker)
class CoapAdapter:
    """CoAP (docs/coap.md) over UDP, ``--listen coap=udp:5683``, or over TCP or TLS
    (RFC 8323), ``coap=tcp:5683``, ``coap=ssl:5684:privateKey=...``."""

    name = "coap"
    description = ("CoAP over UDP, TCP or TLS: publish and observe topics at /ps/{topic} "
                   "(docs/coap.md)")
    defaultEndpoint = "udp:5683"
    datagram = True
    options = {**OPTIONS, **DTLS_OPTIONS, **tls.TLS_OPTIONS}

    def checkEndpoint(self, settings: Any) -> None:
        """``udp:PORT[:interface=HOST]``, or a stream endpoint (``tcp:``, ``ssl:``)."""
        if settings.endpoint.startswith("udp:"):
            parse_udp(settings.endpoint)
        else:
            check_endpoint(settings.endpoint)

    def checkListener(self, settings: Any) -> None:
        CoapConfig.from_settings(settings)
        if not settings.endpoint.startswith("udp:"):
            tls.check_tls(settings.endpoint, settings.extra)
        else:
            self._dtls_context(settings)

    @staticmethod
    def _dtls_context(settings: Any) -> Any:
        """The DTLS context the keys ask for (None for plain UDP); ValueError if they
        do not work."""
        v = option_values(DTLS_OPTIONS, getattr(settings, "extra", None) or {})
        if v["dtlsKey"] is None and v["dtlsCert"] is None:
            return None
        if v["dtlsKey"] is None or v["dtlsCert"] is None:
            raise ValueError("dtlsKey and dtlsCert go together")
        from mqtt_twisted.adapters.coap_dtls import build_context

        return build_context(v["dtlsKey"], v["dtlsCert"])

    def buildListener(self, reactor: Any, broker: Any, endpointDescription: str,
                      settings: Any) -> Any:
        config = CoapConfig.from_settings(settings)
        if endpointDescription.startswith("udp:"):
            server = CoapServer(reactor, broker, config)
            context = self._dtls_context(settings)
            protocol: Any = server
            if context is not None:
                from mqtt_twisted.adapters.coap_dtls import DtlsServer

                protocol = DtlsServer(reactor, server, context)
            listener = DatagramListener(reactor, endpointDescription, protocol,
                                        getattr(broker, "stats", None))
            listener.server = server  # type: ignore[attr-defined]
            return listener
        from mqtt_twisted.adapters.coap_tcp import CoapTCPFactory

        factory = CoapTCPFactory(reactor, broker, config)
        service = tls.stream_listener(reactor, endpointDescription, factory, settings.extra,
                                      alpn=(b"coap",),  # RFC 8323 section 8.2
                                      header_timeout=settings.connectTimeout)
        service.site = factory  # type: ignore[attr-defined]
        return service
