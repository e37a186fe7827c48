"""What a CoAP request asks of the broker, whatever carried it (UDP datagrams in
:mod:`mqtt_twisted.adapters.coap`, a TCP or TLS stream in
:mod:`mqtt_twisted.adapters.coap_tcp`): block-wise pieces put together and cut,
the ``/ps/`` mapping acted on through the gateway, observers' sessions kept.

A *link* is where a request came from and where notifications go: hashable (equal
for the same peer), with ``peer_text`` and ``send_notification(client, obs, note,
confirmable)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.adapters._coapconnection import PATH, Connection, Connections
from mqtt_twisted.adapters._coapobserve import CoapClient, Observation
from mqtt_twisted.adapters.options import (
    AdapterOption,
    declare,
    integer,
    number,
    option_values,
    yes_no,
)
from mqtt_twisted.coap import blockwise, mapping
from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import options as opt
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
from mqtt_twisted.records import Credentials

log = Logger(namespace="mqtt_twisted.adapters.coap")

def _block_size(text: str) -> int:
    """16, 32, ... 1024: the block sizes RFC 7959 has."""
    value = integer(low=16, high=1024)(text)
    if value & (value - 1):
        raise ValueError("is not a power of two (16, 32, ... 1024)")
    return value


_block_size.metavar = "BYTES"  # type: ignore[attr-defined]

#: The CoAP listener's own keys (``coap=udp:5683:maxObservations=16``).
OPTIONS = declare(
    AdapterOption("maxObservations", integer(low=1), 64,
                  "observations one client id may hold; more get 5.03"),
    AdapterOption("maxObservationsPerAddress", integer(low=0, metavar="N"), 1024,
                  "observations all client ids of one source address may hold together; "
                  "more get 5.03 (0: no limit)"),
    AdapterOption("nstart", integer(low=1, metavar="N"), 1,
                  "CON notifications a client id may have unacknowledged (RFC 7252 NSTART); "
                  "the broker queues the rest for its session"),
    AdapterOption("maxPayload", integer(low=0, metavar="BYTES"), 1 << 20,
                  "largest request body in bytes (Block1 pieces put together); larger "
                  "ones get 4.13"),
    AdapterOption("blockSize", _block_size, 1024,
                  "largest payload per datagram (16..1024, a power of two): longer answers "
                  "and notifications go out in Block2 pieces"),
    AdapterOption("maxRequestRate", integer(low=0, metavar="N"), 1000,
                  "requests per second one address may make (bursts of as many); more "
                  "get 4.29 Too Many Requests (0: no limit)"),
    AdapterOption("connectionRequired", yes_no, False,
                  "yes: every request must carry a token from POST /mqtt/connection "
                  "(EMQX's connection mode); no: connection mode is optional"),
    AdapterOption("heartbeat", number(low=0.001), 30.0,
                  "seconds between a connection's heartbeats (PUT /mqtt/connection); "
                  "one silent for two expires"),
    AdapterOption("maxReassembly", integer(low=0, metavar="BYTES"), 8 << 20,
                  "bytes of Block1 bodies being received and Block2 answers being "
                  "fetched, held at most for the whole listener"),
)
@dataclass(slots=True)
class CoapConfig:
    """A CoAP listener's settings, from its ``--listen`` keys."""

    max_observations: int = 64
    max_payload: int = 1 << 20
    szx: int = blockwise.MAX_SZX
    max_reassembly: int = 8 << 20
    max_request_rate: int = 1000
    connection_required: bool = False
    heartbeat: float = 30.0
    listener: Any = None
    max_observations_per_address: int = 1024
    nstart: int = 1

    @classmethod
    def from_settings(cls, settings: Any) -> CoapConfig:
        """The keys' typed values; ValueError names a bad one."""
        v = option_values(OPTIONS, getattr(settings, "extra", None) or {})
        return cls(v["maxObservations"], v["maxPayload"], blockwise.szx_for(v["blockSize"]),
                   v["maxReassembly"], v["maxRequestRate"], v["connectionRequired"],
                   v["heartbeat"], settings, v["maxObservationsPerAddress"], v["nstart"])


#: An answer's code, options and payload (type, id and token are the transport's), and
#: what to do once it is sent.
Answer = tuple[m.CoapMessage, Callable[[], Any] | None]


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



def address_of(link: Any) -> str:
    """The source address of a link (``host`` of its ``host:port``): what the
    per-address limits count by, since one host has every port it wants."""
    return link.peer_text.rpartition(":")[0]


def _changed() -> Answer:
    """2.04 Changed, a new message each time (callers may add options to it)."""
    return m.CoapMessage(m.ACK, m.CHANGED), None


class CoapRequests:
    """Requests in, answers out, for one listener: its Block1 bodies and Block2
    representations, and the sessions of the client ids observing through it."""

    def __init__(self, reactor: Any, service: Any, config: CoapConfig) -> None:
        self.reactor = reactor
        self.service = service  # the gateway (IBrokerService): all the adapter uses
        self.config = config
        self.representations = blockwise.Representations(reactor, config.max_reassembly)
        self.reassembly = blockwise.Reassembly(reactor, config.max_reassembly,
                                               config.max_payload)
        self.clients: dict[str, CoapClient] = {}
        #: Observations held per source address (all its client ids together).
        self.per_address: dict[str, int] = {}
        self.opening: dict[str, list[Deferred[CoapClient]]] = {}
        self.connections = Connections(reactor, config.heartbeat)
        self.connections.on_expire = self.disconnect

    def answer(self, request: m.CoapMessage, link: Any) -> Deferred[Answer]:
        """The answer to ``request``, failures included (never fails)."""
        return maybeDeferred(self.handle, request, link).addErrback(self.failed, request)

    def failed(self, failure: Failure, request: m.CoapMessage) -> Answer:
        """The answer to a request whose handling failed (an error answer, or 5.00)."""
        error = error_of(failure.value)
        if error is None:
            log.failure("CoAP {code} request failed", failure, code=m.code_text(request.code))
            error = CoapError(m.INTERNAL_SERVER_ERROR, "internal error")
        return m.CoapMessage(m.ACK, error.code, 0, b"", error.options,
                             error.text.encode("utf-8")), None

    def close_all(self) -> None:
        """The listener stops: every observer's session ends."""
        self.connections.stop()
        for client in list(self.clients.values()):
            client.close()

    def handle(self, request: m.CoapMessage, link: Any) -> Any:
        """The answer to ``request`` (a Deferred, or the answer itself when it needs no
        waiting): Block1 pieces collected first, an answer longer than a block cut into
        Block2 pieces (the later ones served from memory).  Plain callbacks rather than
        inlineCallbacks: this is every request's path."""
        mapping.check_options(request, getattr(link, "bert", False))
        block1 = blockwise.block_of(request, opt.BLOCK1)
        if block1 is not None and request.code in (m.POST, m.PUT):
            mapping.topic_of(request)  # 4.04 before anything is held
            body = self.reassembly.add(blockwise.request_key(link, request), block1,
                                       request.payload, request.uint(opt.SIZE1))
            if body is None:
                return m.CoapMessage(m.ACK, m.CONTINUE, 0, b"", [
                    (opt.BLOCK1, Block(block1.num, True, block1.szx).encode())]), None
            request = m.CoapMessage(request.type, request.code, request.mid, request.token,
                                    request.options, body)
        block2 = blockwise.block_of(request, opt.BLOCK2)
        if block2 is not None and block2.num and request.code == m.GET \
                and request.option(opt.OBSERVE) is None:
            found = self.representations.get(blockwise.request_key(link, request))
            if found is not None:
                return self.block(found[1], block2.num, min(block2.szx, self.config.szx),
                                  found[0]), None
        if block1 is None and block2 is None and request.code != m.GET:
            return self.act(request, link)  # the common case: nothing to add afterwards
        return self.act(request, link).addCallback(self._blocks, request, link, block1,
                                                   block2)

    def _blocks(self, answer: Answer, request: m.CoapMessage, link: Any,
                block1: Block | None, block2: Block | None) -> Answer:
        """The Block1 option of a body's last piece; a long GET answer cut to a piece."""
        response, after = answer
        if block1 is not None and request.code in (m.POST, m.PUT):
            response.options.append((opt.BLOCK1,
                                     Block(block1.num, False, block1.szx).encode()))
        if request.code == m.GET and response.code == m.CONTENT:
            szx = min(block2.szx, self.config.szx) if block2 is not None else self.config.szx
            num = block2.num if block2 is not None else 0
            if num or len(response.payload) > 1 << (szx + 4):
                etag = self.representations.store(blockwise.request_key(link, request),
                                                  response.payload)
                block = self.block(response.payload, num, szx, etag)
                response.options += block.options
                response.payload = block.payload
        return response, after

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

    def act(self, request: m.CoapMessage, link: Any) -> Deferred[Answer]:
        """Who asks (the connection's identity, or the authenticator's answer to the
        request's credentials), then what is asked."""
        if request.strings(opt.URI_PATH) == PATH:
            return self.connection(request, link)
        ps = mapping.parse_request(request, self.service.settings)
        if len(request.payload) > self.config.max_payload:
            raise CoapError(m.REQUEST_ENTITY_TOO_LARGE,
                            f"the payload is larger than {self.config.max_payload} bytes",
                            [(opt.SIZE1, opt.encode_uint(self.config.max_payload))])
        client_id = ps.client_id or "coap-" + link.peer_text
        if ps.token is not None:  # connection mode: authenticated when it connected
            conn = self.connections.check(ps.client_id, ps.token)
            return self.act_as(conn.identity, ps, request, link, client_id, conn.credentials)
        if self.config.connection_required:
            raise CoapError(m.UNAUTHORIZED, "this listener requires connection mode: "
                            "POST /mqtt/connection first, then send clientid and token")
        credentials = Credentials(client_id, ps.username, ps.password, None,
                                  link.peer_text, "coap")
        return self.service.authenticate(credentials).addCallback(
            self.act_as, ps, request, link, client_id, credentials)

    def act_as(self, identity: Any, ps: PsRequest, request: m.CoapMessage, link: Any,
               client_id: str, credentials: Credentials) -> Deferred[Answer]:
        """What ``ps`` asks, for ``identity``."""
        if ps.action == mapping.PUBLISH:
            return self.publish(ps, request, client_id, identity)
        if ps.action == mapping.OBSERVE:
            return self.observe(ps, request, link, client_id, credentials)
        if ps.action == mapping.DELETE:
            self.check_owner(client_id, identity)
            return self.delete(ps, client_id)
        if ps.action == mapping.FORGET:
            client = self.clients.get(client_id)
            if client is not None and ps.topic in client.observations:
                self.check_owner(client_id, identity)
                return self.forget(client, ps.topic).addCallback(
                    lambda _: self.read(ps, client_id, identity))
        return self.read(ps, client_id, identity)

    def check_owner(self, client_id: str, identity: Any) -> None:
        """4.03 unless ``identity`` is who opened ``client_id``'s session: nobody ends
        another user's observations by naming its client id."""
        session = self.service.session(client_id)
        if session is not None and session.identity != identity:
            raise CoapError(m.FORBIDDEN, f"the observations of {client_id!r} are not yours")

    def publish(self, ps: PsRequest, request: m.CoapMessage, client_id: str,
                identity: Any) -> Deferred[Answer]:
        """Authorize, then publish; 2.04 at once at QoS 0, once the broker holds the
        message at QoS 1/2.  (Plain callbacks: the busiest request.)"""
        return self.publish_if(
            self.service.authorize(PUBLISH, identity, client_id, ps.topic), ps, request,
            client_id)

    def publish_if(self, authorized: Deferred[bool], ps: PsRequest, request: m.CoapMessage,
                   client_id: str) -> Deferred[Answer]:
        """:meth:`publish` once ``authorized`` (the authorizer's answer) says yes; the
        lean path (``adapters/_coaplean.py``) hands over here when it is not there yet."""

        def allowed(yes: bool) -> Any:
            if not yes:
                raise CoapError(m.FORBIDDEN, f"not authorized to publish to {ps.topic!r}")
            d = self.service.publish(mapping.publish_message(ps, request), client_id)
            if ps.qos == 0:  # at most once: answered at once, a store failure only logged
                if d.called and isinstance(d.result, Failure):
                    return d  # refused at once (a topic over the limits, a quota): say so
                d.addErrback(lambda f: log.failure("CoAP QoS 0 publish to {topic} failed",
                                                   f, topic=ps.topic))
                return _changed()
            return d.addCallback(lambda _: _changed())

        return authorized.addCallback(allowed)

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
    def observe(self, ps: PsRequest, request: m.CoapMessage, link: Any, client_id: str,
                credentials: Credentials) -> Any:
        client = yield self.client_for(client_id, credentials)
        old = client.observations.get(ps.topic)
        if old is None and len(client.observations) >= self.config.max_observations:
            self.close_if_idle(client)
            raise CoapError(m.SERVICE_UNAVAILABLE, f"client {client_id!r} holds "
                            f"{self.config.max_observations} observations already")
        address = address_of(link)
        limit = self.config.max_observations_per_address
        held = self.per_address.get(address, 0)
        if old is not None and old.address == address:
            held -= 1  # a re-registration replaces it
        if limit and held >= limit:
            self.close_if_idle(client)
            raise CoapError(m.SERVICE_UNAVAILABLE, f"address {address} holds {limit} "
                            "observations already")
        if old is not None:
            self.release(old)
        obs = client.observations[ps.topic] = Observation(
            ps.topic, request.token, link, blockwise.request_key(link, request))
        obs.address = address
        self.per_address[address] = self.per_address.get(address, 0) + 1
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
        obs.last_con = self.reactor.seconds()
        held, obs.held, obs.pending = obs.held, [], False
        first = held[0][0] if held else None
        options = [(opt.OBSERVE, opt.encode_uint(obs.seq))]
        payload = b""
        if first is not None:
            options += mapping.notification_options(first)
            if obs.wildcard:
                options += mapping.topic_options(first.topic)
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

    # --- connection mode -----------------------------------------------------------------

    @inlineCallbacks
    def connection(self, request: m.CoapMessage, link: Any) -> Any:
        """``/mqtt/connection``: POST connects (2.01, the token as payload), PUT is a
        heartbeat (2.04), DELETE disconnects (2.02)."""
        ps = mapping.parse_connection(request)
        client_id = ps.client_id
        assert client_id is not None
        if request.code != m.POST:
            self.connections.check(client_id, ps.token or "")
            if request.code == m.DELETE:
                self.disconnect(client_id)
                return m.CoapMessage(m.ACK, m.DELETED), None
            return m.CoapMessage(m.ACK, m.CHANGED), None
        credentials = Credentials(client_id, ps.username, ps.password, None, link.peer_text,
                                  "coap")
        identity = yield self.service.authenticate(credentials)
        client = yield self.client_for(client_id, credentials)
        conn = Connection(client_id, identity, credentials)
        client.connected = True
        self.connections.add(conn)
        return m.CoapMessage(m.ACK, m.CREATED, 0, b"", [], conn.token.encode("ascii")), None

    def disconnect(self, client_id: str) -> None:
        """End ``client_id``'s connection (DELETE, or expired): its session closes."""
        self.connections.remove(client_id)
        client = self.clients.get(client_id)
        if client is not None:
            client.connected = False
            client.close()

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

    def release(self, obs: Observation) -> None:
        """``obs`` ended: its address may hold another one."""
        address, obs.address = obs.address, None
        if address is not None:
            left = self.per_address[address] - 1
            if left:
                self.per_address[address] = left
            else:
                del self.per_address[address]

    def forget(self, client: CoapClient, topic_filter: str) -> Deferred[Any]:
        """End one observation: unsubscribe, and close the session when none is left."""
        obs = client.observations.pop(topic_filter, None)
        if obs is not None:
            self.release(obs)
        if obs is None or client.closed:
            return succeed(False)
        d = self.service.unsubscribe(client.client_id, topic_filter)
        d.addErrback(lambda f: f.trap(MQTTError) and False)
        d.addBoth(lambda result: (self.close_if_idle(client), result)[1])
        return d

    def drop(self, client: CoapClient, obs: Observation) -> None:
        if client.observations.get(obs.filter) is obs:
            del client.observations[obs.filter]
        self.release(obs)
        self.close_if_idle(client)

    def close_if_idle(self, client: CoapClient) -> None:
        """Close a session with no observation left, unless a connection holds it."""
        if not client.observations and not client.connected:
            client.close()

    def client_gone(self, client: CoapClient) -> None:
        """The session ended (closed, taken over): its connection too."""
        if self.clients.get(client.client_id) is client:
            del self.clients[client.client_id]
            if client.connected:
                self.connections.remove(client.client_id)
