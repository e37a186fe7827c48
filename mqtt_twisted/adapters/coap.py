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

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mqtt_twisted.adapters._coapobserve import CoapClient, Observation
from mqtt_twisted.adapters.kit import DatagramListener
from mqtt_twisted.adapters.options import AdapterOption, declare, integer, option_values
from mqtt_twisted.coap import blockwise, mapping
from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import options as opt
from mqtt_twisted.coap.exchange import Deduplicator, MessageIds, Retransmitter
from mqtt_twisted.coap.mapping import CoapError, PsRequest
from mqtt_twisted.coap.options import Block
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.errors import (
    AuthenticationError,
    AuthorizationError,
    ConnectError,
    MQTTError,
    StorageError,
)
from mqtt_twisted.gateway import PUBLISH, SUBSCRIBE
from mqtt_twisted.interfaces import IDatagramAdapter, IListenerChecker
from mqtt_twisted.records import Credentials

log = Logger()

#: The CoAP listener's own keys (``coap=udp:5683:maxObservations=16``).
OPTIONS = declare(
    AdapterOption("maxObservations", integer(low=1), 64,
                  "observations one client id may hold; more get 5.03"),
    AdapterOption("maxPayload", integer(low=0, metavar="BYTES"), 1 << 20,
                  "largest request body in bytes (Block1 pieces put together); larger "
                  "ones get 4.13"),
    AdapterOption("blockSize", integer(low=16, high=1024, metavar="BYTES"), 1024,
                  "largest payload per datagram (16..1024, a power of two): longer answers "
                  "and notifications go out in Block2 pieces"),
    AdapterOption("maxReassembly", integer(low=0, metavar="BYTES"), 8 << 20,
                  "bytes of Block1 bodies being received and Block2 answers being "
                  "fetched, held at most for the whole listener"),
)
#: Seconds a CON request may take before it is acknowledged with an empty ACK and
#: answered separately (below ACK_TIMEOUT, so that the client does not resend it).
SEPARATE_AFTER = 1.0
#: Notifications remembered so that an RST to one ends its observation.
NOTES_KEPT = 4096
#: Response pieces: code, options, payload; and what to do once it is sent.
Answer = tuple[m.CoapMessage, Callable[[], Any] | None]


@dataclass(slots=True)
class CoapConfig:
    """A CoAP listener's settings, from its ``--listen`` keys."""

    max_observations: int = 64
    max_payload: int = 1 << 20
    szx: int = blockwise.MAX_SZX
    max_reassembly: int = 8 << 20
    listener: Any = None

    @classmethod
    def from_settings(cls, settings: Any) -> CoapConfig:
        """The keys' typed values; ValueError names a bad one."""
        v = option_values(OPTIONS, getattr(settings, "extra", None) or {})
        return cls(v["maxObservations"], v["maxPayload"], blockwise.szx_for(v["blockSize"]),
                   v["maxReassembly"], settings)


def peer_of(addr: Any) -> str:
    return f"{addr[0]}:{addr[1]}"


def error_of(error: BaseException) -> CoapError | None:
    """The CoAP answer to an exception from the broker, an authenticator or a store
    (None: unexpected, answered 5.00 and logged)."""
    if isinstance(error, CoapError):
        return error
    text = getattr(error, "message", "") or str(error)
    if isinstance(error, AuthenticationError) or (
            isinstance(error, ConnectError) and error.reason_code in (
                ReasonCode.BAD_USER_NAME_OR_PASSWORD, ReasonCode.BAD_AUTHENTICATION_METHOD)):
        return CoapError(m.UNAUTHORIZED, text or "not authenticated")
    if isinstance(error, AuthorizationError) or (
            isinstance(error, MQTTError) and error.reason_code in (
                ReasonCode.NOT_AUTHORIZED, ReasonCode.BANNED)):
        return CoapError(m.FORBIDDEN, text or "not authorized")
    if isinstance(error, StorageError) or (
            isinstance(error, MQTTError) and error.reason_code in (
                ReasonCode.SERVER_UNAVAILABLE, ReasonCode.SERVER_BUSY)):
        return CoapError(m.SERVICE_UNAVAILABLE, text or "store unavailable")
    if isinstance(error, MQTTError) and error.reason_code not in (
            ReasonCode.UNSPECIFIED_ERROR, ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR):
        return CoapError(m.BAD_REQUEST, text)
    return None


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
        self.service = service  # the gateway (IBrokerService): all the adapter uses
        self.config = config
        self.mids = MessageIds()
        self.retransmitter = Retransmitter(reactor, self.send)
        self.dedup = Deduplicator(reactor)
        self.representations = blockwise.Representations(reactor, config.max_reassembly)
        self.reassembly = blockwise.Reassembly(reactor, config.max_reassembly,
                                               config.max_payload)
        self.clients: dict[str, CoapClient] = {}
        self.opening: dict[str, list[Deferred[CoapClient]]] = {}
        self.notes: OrderedDict[tuple[Any, int], tuple[CoapClient, Observation]] = OrderedDict()

    def send(self, data: bytes, peer: Any) -> None:
        if self.transport is not None:
            self.transport.write(data, peer)

    def stopProtocol(self) -> None:
        self.retransmitter.stop()
        for client in list(self.clients.values()):
            client.close()

    # --- datagrams in -------------------------------------------------------------------

    def datagramReceived(self, data: bytes, addr: Any) -> None:
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
        exchange = _Exchange(self, msg, addr)
        d = maybeDeferred(self.handle, msg, addr)
        d.addErrback(self._failed, msg)
        d.addCallback(self._answer, exchange)
        if not exchange.done and msg.type == m.CON:
            exchange.timer = self.reactor.callLater(SEPARATE_AFTER, exchange.ack_now)

    def _failed(self, failure: Failure, request: m.CoapMessage) -> Answer:
        error = error_of(failure.value)
        if error is None:
            log.failure("CoAP {code} request failed", failure, code=m.code_text(request.code))
            error = CoapError(m.INTERNAL_SERVER_ERROR, "internal error")
        return m.CoapMessage(m.ACK, error.code, 0, b"", error.options,
                             error.text.encode("utf-8")), None

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
        self.retransmitter.cancel(addr, msg.mid)
        note = self.notes.pop((addr, msg.mid), None)
        if note is not None:
            note[0].lost(note[1], "reset by the observer")

    def notified(self, peer: Any, mid: int, client: CoapClient, obs: Observation) -> None:
        self.notes[(peer, mid)] = (client, obs)
        while len(self.notes) > NOTES_KEPT:
            self.notes.popitem(last=False)

    # --- requests -----------------------------------------------------------------------

    @inlineCallbacks
    def handle(self, request: m.CoapMessage, addr: Any) -> Any:
        """The answer to ``request``: Block1 pieces collected first, an answer longer
        than a block cut into Block2 pieces (the later ones served from memory)."""
        mapping.check_options(request)
        block1 = blockwise.block_of(request, opt.BLOCK1)
        if block1 is not None and request.code in (m.POST, m.PUT):
            mapping.topic_of(request)  # 4.04 before anything is held
            body = self.reassembly.add(blockwise.request_key(addr, request), block1,
                                       request.payload, request.uint(opt.SIZE1))
            if body is None:
                return m.CoapMessage(m.ACK, m.CONTINUE, 0, b"", [
                    (opt.BLOCK1, Block(block1.num, True, block1.szx).encode())]), None
            request = m.CoapMessage(request.type, request.code, request.mid, request.token,
                                    request.options, body)
        block2 = blockwise.block_of(request, opt.BLOCK2)
        if block2 is not None and block2.num and request.code == m.GET \
                and request.option(opt.OBSERVE) is None:
            found = self.representations.get(blockwise.request_key(addr, request))
            if found is not None:
                return self.block(found[1], block2.num, min(block2.szx, self.config.szx),
                                  found[0]), None
        answer, after = yield self.act(request, addr)
        if block1 is not None and request.code in (m.POST, m.PUT):
            answer.options.append((opt.BLOCK1, Block(block1.num, False, block1.szx).encode()))
        if request.code == m.GET and answer.code == m.CONTENT:
            szx = min(block2.szx, self.config.szx) if block2 is not None else self.config.szx
            num = block2.num if block2 is not None else 0
            if num or len(answer.payload) > 1 << (szx + 4):
                etag = self.representations.store(blockwise.request_key(addr, request),
                                                  answer.payload)
                block = self.block(answer.payload, num, szx, etag)
                answer.options += block.options
                answer.payload = block.payload
        return answer, after

    def block(self, payload: bytes, num: int, szx: int, etag: bytes) -> m.CoapMessage:
        """One Block2 piece of a representation, with its Size2 and ETag."""
        chunk, block = blockwise.cut(payload, num, szx)
        return m.CoapMessage(m.ACK, m.CONTENT, 0, b"", [
            (opt.BLOCK2, block.encode()), (opt.SIZE2, opt.encode_uint(len(payload))),
            (opt.ETAG, etag)], chunk)

    def first_block(self, key: Any, note: m.CoapMessage) -> None:
        """Cut a notification longer than a block to its first piece; the client fetches
        the others with GETs (RFC 7959 §3.4)."""
        if len(note.payload) <= 1 << (self.config.szx + 4):
            return
        etag = self.representations.store(key, note.payload)
        block = self.block(note.payload, 0, self.config.szx, etag)
        note.options += block.options
        note.payload = block.payload

    @inlineCallbacks
    def act(self, request: m.CoapMessage, addr: Any) -> Any:
        ps = mapping.parse_request(request, self.service.settings)
        if len(request.payload) > self.config.max_payload:
            raise CoapError(m.REQUEST_ENTITY_TOO_LARGE,
                            f"the payload is larger than {self.config.max_payload} bytes",
                            [(opt.SIZE1, opt.encode_uint(self.config.max_payload))])
        client_id = ps.client_id or "coap-" + peer_of(addr)
        credentials = Credentials(client_id, ps.username, ps.password, None, peer_of(addr),
                                  "coap")
        identity = yield self.service.authenticate(credentials)
        if ps.action == mapping.PUBLISH:
            answer = yield self.publish(ps, request, client_id, identity)
        elif ps.action == mapping.OBSERVE:
            answer = yield self.observe(ps, request, addr, client_id, credentials)
        elif ps.action == mapping.DELETE:
            answer = yield self.delete(ps, client_id)
        else:
            if ps.action == mapping.FORGET:
                client = self.clients.get(client_id)
                if client is not None and ps.topic in client.observations:
                    yield self.forget(client, ps.topic)
            answer = yield self.read(ps, client_id, identity)
        return answer

    @inlineCallbacks
    def publish(self, ps: PsRequest, request: m.CoapMessage, client_id: str,
                identity: Any) -> Any:
        allowed = yield self.service.authorize(PUBLISH, identity, client_id, ps.topic)
        if not allowed:
            raise CoapError(m.FORBIDDEN, f"not authorized to publish to {ps.topic!r}")
        d = self.service.publish(mapping.publish_message(ps, request), client_id)
        if ps.qos == 0:  # at most once: answered at once, a store failure only logged
            d.addErrback(lambda f: log.failure("CoAP QoS 0 publish to {topic} failed", f,
                                               topic=ps.topic))
        else:  # 2.04 means the broker holds it
            yield d
        return m.CoapMessage(m.ACK, m.CHANGED), None

    @inlineCallbacks
    def read(self, ps: PsRequest, client_id: str, identity: Any) -> Any:
        allowed = yield self.service.authorize(SUBSCRIBE, identity, client_id, ps.topic)
        if not allowed:
            raise CoapError(m.FORBIDDEN, f"not authorized to read {ps.topic!r}")
        messages = yield self.service.retained(ps.topic)
        if not messages:
            raise CoapError(m.NOT_FOUND, f"no retained message matches {ps.topic!r}")
        first = min(messages, key=lambda msg: msg.topic)
        return m.CoapMessage(m.ACK, m.CONTENT, 0, b"", mapping.notification_options(first),
                             first.payload), None

    @inlineCallbacks
    def observe(self, ps: PsRequest, request: m.CoapMessage, addr: Any, client_id: str,
                credentials: Credentials) -> Any:
        client = yield self.client_for(client_id, credentials)
        if ps.topic not in client.observations and \
                len(client.observations) >= self.config.max_observations:
            self.close_if_idle(client)
            raise CoapError(m.SERVICE_UNAVAILABLE, f"client {client_id!r} holds "
                            f"{self.config.max_observations} observations already")
        obs = client.observations[ps.topic] = Observation(
            ps.topic, request.token, addr, blockwise.request_key(addr, request))
        try:
            granted = yield self.service.subscribe(client_id, ps.topic, ps.qos)
        except BaseException:
            self.drop(client, obs)
            raise
        if client.closed or client.observations.get(ps.topic) is not obs:
            raise CoapError(m.SERVICE_UNAVAILABLE, "the session ended meanwhile")
        if granted >= 0x80:
            self.drop(client, obs)
            if granted == ReasonCode.NOT_AUTHORIZED:
                raise CoapError(m.FORBIDDEN, f"not authorized to observe {ps.topic!r}")
            raise CoapError(m.BAD_REQUEST, f"the broker refused {ps.topic!r} "
                            f"(reason code 0x{granted:02X})")
        obs.qos = granted
        held, obs.held, obs.pending = obs.held, [], False
        first = held[0][0] if held else None
        options = [(opt.OBSERVE, opt.encode_uint(obs.seq))]
        payload = b""
        if first is not None:
            options += mapping.notification_options(first)
            payload = first.payload

        def rest() -> None:
            for message, qos in held[1:]:
                client.notify(obs, message, qos)

        return m.CoapMessage(m.ACK, m.CONTENT, 0, b"", options, payload), rest

    @inlineCallbacks
    def delete(self, ps: PsRequest, client_id: str) -> Any:
        client = self.clients.get(client_id)
        if client is None or ps.topic not in client.observations:
            raise CoapError(m.NOT_FOUND, f"client {client_id!r} does not observe {ps.topic!r}")
        yield self.forget(client, ps.topic)
        return m.CoapMessage(m.ACK, m.DELETED), None

    # --- observers' sessions ------------------------------------------------------------

    def client_for(self, client_id: str, credentials: Credentials) -> Deferred[CoapClient]:
        """The open session of ``client_id`` as a CoapClient, opened if need be."""
        client = self.clients.get(client_id)
        if client is not None and not client.closed:
            return succeed(client)
        d: Deferred[CoapClient] = Deferred()
        waiting = self.opening.get(client_id)
        if waiting is not None:
            waiting.append(d)
            return d
        waiting = self.opening[client_id] = [d]
        client = CoapClient(self, client_id)

        def opened(session: Any) -> None:
            client.conn = session.connection
            self.clients[client_id] = client
            for w in self.opening.pop(client_id, []):
                w.callback(client)

        def refused(failure: Failure) -> None:
            for w in self.opening.pop(client_id, []):
                w.errback(failure)

        self.service.openSession(client_id, client, True, credentials).addCallbacks(
            opened, refused)
        return d

    def forget(self, client: CoapClient, topic_filter: str) -> Deferred[Any]:
        """End one observation: unsubscribe, and close the session when none is left."""
        obs = client.observations.pop(topic_filter, None)
        if obs is None or client.closed:
            return succeed(False)
        d = self.service.unsubscribe(client.client_id, topic_filter)
        d.addErrback(lambda f: f.trap(MQTTError) and False)
        d.addBoth(lambda result: (self.close_if_idle(client), result)[1])
        return d

    def drop(self, client: CoapClient, obs: Observation) -> None:
        if client.observations.get(obs.filter) is obs:
            del client.observations[obs.filter]
        self.close_if_idle(client)

    def close_if_idle(self, client: CoapClient) -> None:
        if not client.observations:
            client.close()

    def client_gone(self, client: CoapClient) -> None:
        if self.clients.get(client.client_id) is client:
            del self.clients[client.client_id]


@implementer(IDatagramAdapter, IListenerChecker)
class CoapAdapter:
    """CoAP over UDP (docs/coap.md): ``--listen coap=udp:5683``."""

    name = "coap"
    description = "CoAP over UDP: publish and observe topics at /ps/{topic} (docs/coap.md)"
    defaultEndpoint = "udp:5683"
    datagram = True
    options = OPTIONS

    def checkListener(self, settings: Any) -> None:
        CoapConfig.from_settings(settings)

    def buildListener(self, reactor: Any, broker: Any, endpointDescription: str,
                      settings: Any) -> DatagramListener:
        server = CoapServer(reactor, broker, CoapConfig.from_settings(settings))
        listener = DatagramListener(reactor, endpointDescription, server)
        listener.server = server  # type: ignore[attr-defined]
        return listener
