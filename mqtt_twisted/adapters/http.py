"""The HTTP bridge on twisted.web: publish, subscribe (SSE or long poll), retained messages
and session removal, for clients that speak HTTP rather than MQTT.

``--listen http=tcp:8081`` (or ``http=ssl:...``).  The request rules live in
:mod:`mqtt_twisted.adapters._httpapi`; this module is the thin shell: resources,
the bounded request body, the streams and the listener.  Each subscription is a
virtual session in the broker (:meth:`IBrokerService.openSession`), closed when
its HTTP client goes away.  docs/http-api.md describes the API.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from twisted.application.service import IService
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from mqtt_twisted.adapters import _httpapi as api
from mqtt_twisted.adapters import tls
from mqtt_twisted.adapters._deadline import DeadlineChannel, SafeRequest
from mqtt_twisted.adapters._httpapi import ApiError
from mqtt_twisted.adapters._httpretained import paced_answer, paced_page
from mqtt_twisted.adapters._httpstream import (
    CutOffs,
    Openings,
    Subscription,
    gone,
    respond,
)
from mqtt_twisted.adapters._ssewriter import DropLog, Heartbeat, StreamWriter
from mqtt_twisted.adapters.kit import ConnectionLimit, access_log, origin_of
from mqtt_twisted.adapters.options import AdapterOption, declare, integer, number, option_values
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.gateway import PUBLISH, SUBSCRIBE
from mqtt_twisted.interfaces import IListenerChecker, IStreamAdapter
from mqtt_twisted.records import Credentials

log = Logger()

#: The HTTP listener's own keys (``http=tcp:8081:maxPayload=65536``).
OPTIONS = declare(
    AdapterOption("maxPayload", integer(metavar="BYTES"), 1 << 20,
                  "largest request body in bytes; larger ones get 413"),
    AdapterOption("heartbeat", number(), 15.0,
                  "seconds between SSE comment lines that keep idle streams open (0: none)"),
    AdapterOption("stallTimeout", number(), 30.0, "seconds an SSE client may leave the "
                  "stream unread before it is cut off (0: never)"),
    AdapterOption("maxStreams", integer(), 1000,
                  "SSE streams and long polls open at once on this listener; more get 503 "
                  "(0: no limit)"),
    AdapterOption("replay", integer(), 100,
                  "events kept per persistent client for Last-Event-ID resume"),
)


@dataclass(slots=True)
class HTTPConfig:
    """An HTTP listener's settings, from its ``--listen`` keys."""

    max_payload: int = 1 << 20
    heartbeat: float = 15.0
    stall_timeout: float = 30.0
    replay: int = 100
    idle_timeout: float = 10.0
    #: Streams and long polls open at once; more get 503 (0: no limit).
    max_streams: int = 1000
    #: The listener (its connection limit, TLS identity keys: adapters.kit).
    listener: Any = None

    @classmethod
    def from_settings(cls, settings: Any) -> HTTPConfig:
        """The keys' typed values; ValueError names a bad one (``replay='x' is not ...``)."""
        v = option_values(OPTIONS, getattr(settings, "extra", None) or {})
        return cls(v["maxPayload"], v["heartbeat"], v["stallTimeout"], v["replay"],
                   getattr(settings, "connectTimeout", 10.0), max_streams=v["maxStreams"],
                   listener=settings)


# --- responses --------------------------------------------------------------------------------


def respond_error(request: Request, failure: Failure) -> None:
    """Answer with the JSON error for ``failure``; unexpected ones are logged as well
    (not those of a request whose client left: its session went from under it)."""
    if gone(request):
        return
    error = api.error_from(failure.value)
    if error.status == 500:
        log.failure("HTTP {method} {path} failed", failure,
                    method=request.method, path=request.path)
    respond(request, error.status, error.body(), error.headers)


def _ask_for_credentials(failure: Failure) -> Failure:
    """A request without credentials that the authenticator would not let in gets 401
    and the challenge, not 403 (other failures pass as they are)."""
    error = api.error_from(failure.value, anonymous=True)
    if error.status == 401:
        raise error
    return failure


def run(request: Request, work: Callable[[], Any]) -> Any:
    """Call ``work`` (may return a Deferred); any failure becomes a JSON error answer."""
    d = maybeDeferred(work)
    d.addErrback(lambda f: respond_error(request, f))
    return NOT_DONE_YET


class BridgeRequest(SafeRequest):
    """A request whose body is held in memory up to the listener's ``maxPayload``; a larger
    one is answered 413 at once (from its Content-Length, or as its chunks come in) and
    the connection closed, without reading the rest."""

    _received = 0
    _refused = False

    def _limit(self) -> int:
        return self.channel.site.config.max_payload

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        if length is not None and length > self._limit():
            # No "100 Continue" for a body we refuse anyway.
            self.requestHeaders.removeHeader(b"expect")
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._limit():
            self._refuse()
            return
        self.content.write(data)

    def _refuse(self) -> None:
        self._refused = True
        self.content = io.BytesIO()
        error = ApiError(413, f"the body is larger than {self._limit()} bytes",
                         ReasonCode.PACKET_TOO_LARGE)
        body = error.body()
        channel = self.channel
        channel.transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        channel.loseConnection()

    def process(self) -> None:
        if not self._refused:
            super().process()


# --- resources --------------------------------------------------------------------------------


class _Endpoint(Resource):
    """One API path: JSON 404 below it, JSON 405 for other methods."""

    isLeaf = True
    methods: dict[bytes, str] = {}

    def __init__(self, bridge: Bridge) -> None:
        super().__init__()
        self.bridge = bridge

    def render(self, request: Request) -> Any:
        if request.postpath not in ([], [b""]):
            return not_found(request)
        name = self.methods.get(request.method)
        if name is None:
            allowed = ", ".join(m.decode() for m in self.methods)
            request.setHeader(b"allow", allowed.encode())
            error = ApiError(405, f"{request.method.decode('latin-1')} is not allowed here; "
                             f"use {allowed}")
            request.setResponseCode(405)
            request.setHeader(b"content-type", b"application/json")
            return error.body()
        return run(request, lambda: getattr(self, name)(request))


def not_found(request: Request) -> bytes:
    request.setResponseCode(404)
    request.setHeader(b"content-type", b"application/json")
    return ApiError(404, f"no such resource: {request.path.decode('latin-1')}").body()


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return not_found(request)


def _inputs(request: Request) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    return api.decode_params(request.args), api.decode_headers(request.requestHeaders)


class PublishResource(_Endpoint):
    """``POST /publish?topic=T&qos=Q&retain=R``: the body is the payload."""

    methods = {b"POST": "post"}

    @inlineCallbacks
    def post(self, request: Request) -> Any:
        bridge = self.bridge
        params, headers, client, identity = yield bridge.caller(request)
        message = api.parse_publish(params, headers, request.content.getvalue(),
                                    bridge.service.settings)
        yield bridge.authorize(PUBLISH, identity, client, message.topic)
        count = yield bridge.service.publish(message, client)
        code = ReasonCode.SUCCESS if count else ReasonCode.NO_MATCHING_SUBSCRIBERS
        respond(request, 200, api.dumps({
            "topic": message.topic, "qos": message.qos, "retain": message.retain,
            "subscribers": count, "reason_code": int(code)}))


class RetainedResource(_Endpoint):
    """``GET /retained?topic=F[&limit=N][&after=T]``: a page of the retained messages
    matching a filter, by topic."""

    methods = {b"GET": "get"}

    @inlineCallbacks
    def get(self, request: Request) -> Any:
        bridge = self.bridge
        params, _, client, identity = yield bridge.caller(request)
        topic_filter, limit, after = api.parse_retained(params)
        yield bridge.authorize(SUBSCRIBE, identity, client, topic_filter)
        # Taken lazily where the store can, and chosen and encoded a slice per reactor
        # turn: 20,000 large matches cost other clients no more than a slice's wait.
        lazily = getattr(bridge.service, "iterRetained", None)
        messages = lazily(topic_filter) if lazily is not None else None
        if messages is None:
            messages = yield bridge.service.retained(topic_filter)
        reactor = bridge.reactor
        page, more = yield paced_page(reactor, messages, limit, after)
        # "next": the next page is after=<the last topic of this one>
        respond(request, 200, (yield paced_answer(reactor, page, more, reactor.seconds())))


class SessionResource(_Endpoint):
    """``DELETE /session?client=X``: disconnect client X (any adapter), remove its session."""

    methods = {b"DELETE": "delete"}

    @inlineCallbacks
    def delete(self, request: Request) -> Any:
        bridge = self.bridge
        params, headers = _inputs(request)
        client = api.parse_session(params)
        identity = yield bridge.authenticate(request, headers, None)
        if bridge.service.session(client) is None:
            raise ApiError(404, f"no session of client {client!r}")
        yield bridge.may_remove(identity, client)
        bridge.service.closeSession(client, remove=True)
        bridge.replay_logs.pop(client, None)
        respond(request, 204)


class OpenAPIResource(_Endpoint):
    """``GET /openapi.json``: this API's OpenAPI 3 description."""

    methods = {b"GET": "get"}

    def get(self, request: Request) -> None:
        from mqtt_twisted.adapters._openapi import document_bytes

        respond(request, 200, document_bytes())


class SubscribeResource(_Endpoint):
    """``GET``/``POST /subscribe?topic=F``: Server-Sent Events, or a long poll."""

    methods = {b"GET": "subscribe", b"POST": "subscribe"}

    def subscribe(self, request: Request) -> Any:
        bridge = self.bridge
        params, headers = _inputs(request)
        if request.method == b"POST":
            api.merge_body(params, headers, request.content.getvalue())
        sub = api.parse_subscribe(params, headers, bridge.service.settings)
        username, password = api.credentials_from(headers)
        streams, limit = bridge.streams, bridge.config.max_streams
        if limit and len(streams) >= limit:
            # Each holds a socket and a virtual session for as long as it lasts.
            raise api.ApiError(503, f"{limit} streams open on this listener; try again later",
                               ReasonCode.SERVER_BUSY, {"Retry-After": "5"})
        stream = Subscription(bridge, request, sub, username, password)
        streams.add(stream)  # until it ends (Subscription._finished, .end)
        stream.watch()
        return bridge.openings.add(stream)  # a slice of openings a reactor turn


# --- the bridge ---------------------------------------------------------------------------------

#: Replay logs per broker service, shared by all its HTTP listeners.
_REPLAY_LOGS: WeakKeyDictionary[Any, dict[str, api.ReplayLog]] = WeakKeyDictionary()


class Bridge(Resource):
    """The root resource: the API paths, and what they share (broker, config, streams)."""

    def __init__(self, reactor: Any, service: Any, config: HTTPConfig) -> None:
        super().__init__()
        self.reactor = reactor
        self.service = service  # the gateway (IBrokerService): all the bridge uses
        self.config = config
        self.subscriptions: set[Subscription] = set()
        #: The /subscribe streams and polls not ended yet (maxStreams), opening ones
        #: included, and /admin/events requests.
        self.streams: set[Any] = set()
        self.replay_logs = _REPLAY_LOGS.setdefault(service, {})
        #: Streams that went unread for stallTimeout, cut off a few a reactor turn.
        self.cutoffs = CutOffs(reactor)
        #: New streams and polls, opened a slice a reactor turn.
        self.openings = Openings(reactor)
        #: Their "not keeping up" lines, one a second at most.
        self.drop_log = DropLog(reactor)
        #: Live SSE streams' events, written a slice per reactor turn.
        self.writer = StreamWriter(reactor)
        #: Their keep-alive comment lines, one timer for all.
        self.heartbeat = Heartbeat(reactor, config.heartbeat, self.writer)
        self.putChild(b"publish", PublishResource(self))
        self.putChild(b"subscribe", SubscribeResource(self))
        self.putChild(b"retained", RetainedResource(self))
        self.putChild(b"session", SessionResource(self))
        self.putChild(b"openapi.json", OpenAPIResource(self))
        from mqtt_twisted.adapters._httpadmin import install

        install(self)  # /metrics, /admin/..., /dashboard (for admins)

    def getChild(self, path: bytes, request: Request) -> Resource:
        return _NotFound()

    def render(self, request: Request) -> bytes:
        return not_found(request)

    # --- sessions and replay logs -----------------------------------------------------

    def new_client_id(self) -> str:
        return "http-" + os.urandom(8).hex()

    def replay_log(self, client_id: str, fresh: bool = False) -> api.ReplayLog:
        logs = self.replay_logs
        found = logs.get(client_id)
        if found is None or fresh:
            for stale in [c for c in logs if self.service.session(c) is None]:
                del logs[stale]
            found = logs[client_id] = api.ReplayLog(self.config.replay)
        return found

    def forget_log_ifgone(self, client_id: str) -> None:
        if self.service.session(client_id) is None:
            self.replay_logs.pop(client_id, None)

    def end_all(self, reason: int) -> None:
        for stream in list(self.subscriptions):
            stream.end(reason)
        self.writer.stop()
        self.heartbeat.stop()
        self.openings.stop()  # not opened yet: their connections are closed with the rest

    # --- authentication and authorization ------------------------------------------------

    def credentials(self, request: Request, client_id: str | None, username: str | None,
                    password: bytes | None) -> Credentials:
        origin = origin_of(request.channel.transport, self.config.listener, "http")
        return Credentials(client_id or "", origin.username(username), password,
                           origin.certificateIdentity, origin.peer, origin.adapter)

    def caller(self, request: Request) -> Deferred[tuple[Any, Any, str | None, Any]]:
        """``(params, headers, client, identity)`` of a request: its inputs decoded, and
        who the authenticator says sent it (``client`` is the ``client`` parameter)."""
        params, headers = _inputs(request)
        client = api.client_param(params)
        d = self.authenticate(request, headers, client)
        return d.addCallback(lambda identity: (params, headers, client, identity))

    def authenticate(self, request: Request, headers: api.Headers,
                     client_id: str | None) -> Deferred[Any]:
        """The identity the authenticator gives the request's credentials (the user name
        when the broker is anonymous)."""
        username, password = api.credentials_from(headers)
        d = self.service.authenticate(self.credentials(request, client_id, username, password))
        if username is None and password is None:
            d.addErrback(_ask_for_credentials)
        return d

    def authorize(self, question: str, identity: Any, client_id: str | None,
                  topic: str) -> Deferred[None]:
        """Ask whether ``identity`` may ``"publish"``/``"subscribe"``; 403 unless so."""

        def check(allowed: bool) -> None:
            if not allowed:
                verb = "publish to" if question == PUBLISH else "subscribe to"
                raise ApiError(403, f"not authorized to {verb} {topic!r}",
                               ReasonCode.NOT_AUTHORIZED)

        return self.service.authorize(question, identity, client_id, topic).addCallback(check)

    def may_remove(self, identity: Any, client_id: str) -> Deferred[None]:
        """403 unless ``identity`` may end ``client_id``'s session (the gateway's rule)."""

        def check(allowed: bool) -> None:
            if not allowed:
                raise ApiError(403, f"not authorized to remove the session of {client_id!r}",
                               ReasonCode.NOT_AUTHORIZED)

        return self.service.mayRemoveSession(identity, client_id).addCallback(check)


class BridgeChannel(DeadlineChannel):
    """A connection of the bridge's site: its site counts it while it is open (the
    listener's connection limit; the connections its stop closes).  Methods of a class,
    not two closures set on each channel: those were about ten objects more per open
    connection (an SSE stream's lifetime) for every full collection to walk."""

    def makeConnection(self, transport: Any) -> None:
        self.site.channels[self] = transport
        super().makeConnection(transport)

    def connectionLost(self, reason: Any) -> None:
        site = self.site
        if site.channels.pop(self, False) is not False:
            site.limit.release()
        super().connectionLost(reason)


class BridgeSite(Site):
    """The bridge's site: bounded bodies, a connection limit, an idle deadline, and the
    connections it holds closed when the listener stops."""

    requestFactory = BridgeRequest
    protocol = BridgeChannel
    noisy = False
    log = staticmethod(access_log)  # debug lines, not twisted.web's info line a request

    def __init__(self, bridge: Bridge, reactor: Any) -> None:
        config = bridge.config
        super().__init__(bridge, timeout=config.idle_timeout or None, reactor=reactor,
                         parsePOSTFormSubmission=False)
        # Absolute, unlike the idle timeout that each trickled byte restarts.
        self.request_timeout = getattr(config.listener, "requestTimeout", 10.0)
        self.min_body_rate = getattr(config.listener, "minBodyRate", 1024.0)
        self.bridge = bridge
        self.config = config
        self.limit = ConnectionLimit(bridge.service, config.listener)
        #: Each open connection's channel and its transport (BridgeChannel).
        self.channels: dict[Any, Any] = {}

    def buildProtocol(self, addr: Any) -> Any:
        if not self.limit.admit(addr, "an HTTP connection"):
            return None
        return super().buildProtocol(addr)

    def stopFactory(self) -> None:
        """The listener stopped: end every stream and poll (SSE clients get ``event:
        close``, 0x8B) and close the connections held."""
        self.bridge.end_all(ReasonCode.SERVER_SHUTTING_DOWN)
        for transport in list(self.channels.values()):
            if transport is not None:
                transport.loseConnection()
        super().stopFactory()


def build_site(reactor: Any, service: Any, settings: Any) -> BridgeSite:
    """The HTTP bridge as a twisted.web site for ``service`` (also used by ``auto=``)."""
    return BridgeSite(Bridge(reactor, service, HTTPConfig.from_settings(settings)), reactor)


@implementer(IStreamAdapter, IListenerChecker)
class HTTPAdapter:
    """The HTTP bridge (docs/http-api.md) over a stream endpoint (``tcp:``, ``ssl:``)."""

    name = "http"
    description = ("HTTP bridge: publish, subscribe by SSE or long poll, retained, "
                   "sessions (docs/http-api.md)")
    defaultEndpoint = "tcp:8081"
    options = {**OPTIONS, **tls.TLS_OPTIONS}

    def checkListener(self, settings: Any) -> None:
        """Raise ValueError for a bad key of ours or TLS files that do not work."""
        HTTPConfig.from_settings(settings)
        tls.check_tls(settings.endpoint, settings.extra)

    def buildFactory(self, reactor: Any, broker: Any, settings: Any) -> BridgeSite:
        settings.identityAsUsername = tls.wants_identity_as_username(settings.extra)
        return build_site(reactor, broker, settings)

    def buildListener(self, reactor: Any, broker: Any, endpointDescription: str,
                      settings: Any) -> IService:
        site = self.buildFactory(reactor, broker, settings)
        service = tls.stream_listener(reactor, endpointDescription, site, settings.extra,
                                   header_timeout=settings.connectTimeout)
        service.site = site  # (service.factory is what listens: TLS around it, for ssl:)
        return service
