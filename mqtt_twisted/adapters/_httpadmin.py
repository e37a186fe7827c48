"""The HTTP adapter's operator paths: ``/metrics`` and the admin API under ``/admin/``.

Every request here is authenticated as the bridge's others are (Basic or Bearer, the
broker's authenticator) and must then be an admin (``Gateway.isAdmin``: an
``--admin-user``, or anyone on an anonymous broker); otherwise 401 or 403 with the
usual JSON error.  The answers come from ``Gateway.admin`` (``mqtt_twisted/admin.py``).
docs/admin-api.md and docs/metrics.md describe them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from mqtt_twisted.adapters import _httpapi as api
from mqtt_twisted.adapters._httpapi import ApiError
from mqtt_twisted.adapters._httpstream import gone, respond
from mqtt_twisted.adapters.http import _Endpoint, _NotFound, not_found
from mqtt_twisted.adapters.metrics import broker_metrics, render
from mqtt_twisted.codec.topics import validate_topic_name
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.errors import MQTTError

#: Default and largest page of the admin lists.
PAGE, PAGE_MAX = 100, 1000
#: Seconds between the stats events of /admin/events.
EVENT_INTERVAL = 1.0


def inputs(request: Request) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    return api.decode_params(request.args), api.decode_headers(request.requestHeaders)


@inlineCallbacks
def admin_params(bridge: Any, request: Request) -> Any:
    """The request's query parameters, once its sender is known to be an admin."""
    params, headers = inputs(request)
    identity = yield bridge.authenticate(request, headers, None)
    if not bridge.service.isAdmin(identity):
        raise ApiError(403, "this path is for admin users (--admin-user)",
                       ReasonCode.NOT_AUTHORIZED)
    return params


class MetricsEndpoint(_Endpoint):
    """``GET /metrics``: the Prometheus metrics, for admins."""

    methods = {b"GET": "get"}

    @inlineCallbacks
    def get(self, request: Request) -> Any:
        yield admin_params(self.bridge, request)
        metrics = yield broker_metrics(self.bridge.service.admin)
        accept = request.getHeader(b"accept")
        body, content_type = render(metrics, accept.decode("latin-1") if accept else None)
        request.setHeader(b"cache-control", b"no-store")
        respond(request, 200, body, content_type=content_type.encode())


def _page(params: api.Params) -> tuple[int, str | None]:
    return api.integer(params, "limit", PAGE, 1, PAGE_MAX), api.one(params, "after")


def _required(params: api.Params, name: str) -> str:
    value = api.one(params, name)
    if not value:
        raise api.bad_request(f"parameter {name!r} is required")
    return value


class ClientsEndpoint(_Endpoint):
    """``GET /admin/clients?search=S&limit=N&after=ID``: a page of sessions."""

    methods = {b"GET": "get"}

    @inlineCallbacks
    def get(self, request: Request) -> Any:
        params = yield admin_params(self.bridge, request)
        limit, after = _page(params)
        answer = self.bridge.service.admin.clients(api.one(params, "search"), limit, after)
        respond(request, 200, api.dumps(answer))


class ClientEndpoint(_Endpoint):
    """``GET /admin/client?client=ID``: one session; ``DELETE``: kick it (``remove=1``:
    and delete its session)."""

    methods = {b"GET": "get", b"DELETE": "delete"}

    @inlineCallbacks
    def get(self, request: Request) -> Any:
        params = yield admin_params(self.bridge, request)
        client = _required(params, "client")
        answer = self.bridge.service.admin.client(client)
        if answer is None:
            raise ApiError(404, f"no session of client {client!r}")
        respond(request, 200, api.dumps(answer))

    @inlineCallbacks
    def delete(self, request: Request) -> Any:
        params = yield admin_params(self.bridge, request)
        client = _required(params, "client")
        remove = api.flag(params, "remove")
        if not self.bridge.service.admin.kick(client, remove):
            raise ApiError(404, f"no session of client {client!r}")
        if remove:
            self.bridge.replay_logs.pop(client, None)
        respond(request, 204)


class SubscriptionsEndpoint(_Endpoint):
    """``GET /admin/subscriptions?prefix=P&limit=N&after=CURSOR``."""

    methods = {b"GET": "get"}

    @inlineCallbacks
    def get(self, request: Request) -> Any:
        params = yield admin_params(self.bridge, request)
        limit, after = _page(params)
        try:
            answer = self.bridge.service.admin.subscriptions(api.one(params, "prefix"),
                                                             limit, after)
        except ValueError as e:
            raise api.bad_request(str(e)) from None
        respond(request, 200, api.dumps(answer))


class AdminRetainedEndpoint(_Endpoint):
    """``GET /admin/retained?topic=F&limit=N&after=T``: retained topics; ``DELETE
    /admin/retained?topic=T``: delete one retained message."""

    methods = {b"GET": "get", b"DELETE": "delete"}

    @inlineCallbacks
    def get(self, request: Request) -> Any:
        params = yield admin_params(self.bridge, request)
        limit, after = _page(params)
        topic_filter = api.topic_filter_param(api.one(params, "topic", "#") or "#")
        answer = yield self.bridge.service.admin.retained(topic_filter, limit, after)
        respond(request, 200, api.dumps(answer))

    @inlineCallbacks
    def delete(self, request: Request) -> Any:
        params = yield admin_params(self.bridge, request)
        topic = _required(params, "topic")
        try:
            validate_topic_name(topic)
        except MQTTError as e:
            raise api.bad_request(f"topic {topic!r}: {e.message}", e.reason_code) from None
        found = yield self.bridge.service.admin.deleteRetained(topic)
        if not found:
            raise ApiError(404, f"no retained message on {topic!r}")
        respond(request, 204)


class StatsEndpoint(_Endpoint):
    """``GET /admin/stats``: counters, gauges, top topics, the last minutes' rates."""

    methods = {b"GET": "get"}

    @inlineCallbacks
    def get(self, request: Request) -> Any:
        yield admin_params(self.bridge, request)
        respond(request, 200, api.dumps(self.bridge.service.admin.stats()))


@implementer(IPushProducer)
class StatsStream:
    """One ``/admin/events`` stream: a stats event a second, skipped while the client's
    transport is full (it is the request's producer), so a reader that stalls costs a
    few events' bytes, not a second's worth each second for as long as it stalls."""

    def __init__(self, request: Request, admin: Any, reactor: Any) -> None:
        self.request = request
        self.admin = admin
        self.paused = False
        self.skipped = 0
        self.loop = LoopingCall(self.tick)
        self.loop.clock = reactor

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.loop.start(EVENT_INTERVAL, now=True)

    def tick(self) -> None:
        if gone(self.request):
            return
        if self.paused:
            self.skipped += 1
            return
        stats = self.admin.stats()
        history = stats.pop("history")
        stats["point"] = history[-1] if history else None
        self.request.write(api.sse(api.dumps(stats), name="stats"))

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.end()

    def end(self) -> None:
        if self.loop.running:
            self.loop.stop()


class EventsEndpoint(_Endpoint):
    """``GET /admin/events``: Server-Sent Events, ``event: stats`` once a second (the
    stats without their history, with the latest point), for the dashboard."""

    methods = {b"GET": "get"}

    @inlineCallbacks
    def get(self, request: Request) -> Any:
        yield admin_params(self.bridge, request)
        bridge = self.bridge
        streams, limit = bridge.streams, bridge.config.max_streams
        if limit and len(streams) >= limit:
            raise ApiError(503, f"{limit} streams open on this listener; try again later",
                           ReasonCode.SERVER_BUSY, {"Retry-After": "5"})
        if gone(request):
            return
        streams.add(request)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        stream = StatsStream(request, bridge.service.admin, bridge.reactor)

        def ended(_: Any) -> None:
            streams.discard(request)
            stream.end()

        request.notifyFinish().addBoth(ended)
        stream.start()


def install(bridge: Any) -> None:
    """Add the operator paths to ``bridge``."""
    from mqtt_twisted.adapters._dashboard import DashboardResource

    bridge.putChild(b"metrics", MetricsEndpoint(bridge))
    admin = Resource()
    for name, endpoint in ((b"clients", ClientsEndpoint), (b"client", ClientEndpoint),
                           (b"subscriptions", SubscriptionsEndpoint),
                           (b"retained", AdminRetainedEndpoint), (b"stats", StatsEndpoint),
                           (b"events", EventsEndpoint)):
        admin.putChild(name, endpoint(bridge))
    admin.getChild = lambda path, request: _NotFound()  # type: ignore[method-assign]
    admin.render = not_found  # type: ignore[method-assign]
    bridge.putChild(b"admin", admin)
    bridge.putChild(b"dashboard", DashboardResource(bridge))
