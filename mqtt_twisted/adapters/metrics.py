"""Prometheus metrics: the ``metrics=`` listener and ``GET /metrics`` of the HTTP adapter.

``--listen metrics=tcp:9100`` serves ``/metrics`` in Prometheus's text format (and
OpenMetrics when the scraper asks for it) with ``prometheus-client``.  Nothing is
counted here: a custom collector reads the broker's plain integers when a scrape
comes (``Gateway.admin.metrics()``, ``core/metrics.py``), so the message path pays
only its increments.  The process's own metrics (CPU, memory, file descriptors)
come with prometheus-client's process collector.  docs/metrics.md lists them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from mqtt_twisted.adapters import tls
from mqtt_twisted.adapters._deadline import DeadlineChannel, SafeRequest
from mqtt_twisted.adapters.kit import ConnectionLimit
from mqtt_twisted.adapters.workermetrics import sharing
from mqtt_twisted.core.metrics import COUNTER, GAUGE, HISTOGRAM, INFO, Family
from mqtt_twisted.interfaces import IListenerChecker, IStreamAdapter

log = Logger()


def to_prometheus(family: Family) -> Metric:
    """One of our families as prometheus-client's metric family."""
    labels = list(family.labels)
    if family.type == HISTOGRAM:
        metric = HistogramMetricFamily(family.name, family.help, labels=labels)
        for values, (buckets, _count, total) in family.samples:
            metric.add_metric(list(values), [(_le(b), n) for b, n in buckets], total)
        return metric
    if family.type == INFO:
        info = InfoMetricFamily(family.name, family.help)
        for values, _ in family.samples:
            info.add_metric([], dict(zip(family.labels, values)))
        return info
    kind = CounterMetricFamily if family.type == COUNTER else GaugeMetricFamily
    assert family.type in (COUNTER, GAUGE), family.type
    metric = kind(family.name, family.help, labels=labels)
    for values, value in family.samples:
        metric.add_metric(list(values), value)
    return metric


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class _Snapshot:
    """A collector over one scrape's metric families (read from the broker just before)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def local_metrics(families: list[Family]) -> list[Metric]:
    """This process's metric families: the broker's ``families``, and the process's own."""
    return [*map(to_prometheus, families), *ProcessCollector(registry=None).collect()]


def render(metrics: list[Metric], accept: str | None) -> tuple[bytes, str]:
    """The body and content type for a scraper that sent ``Accept: accept``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def broker_metrics(admin: Any) -> Deferred[list[Metric]]:
    """What a scrape answers: this process's metrics, or, under ``--workers``, every
    worker's, each labelled with its worker (``workermetrics.py``)."""
    d: Deferred[Any] = admin.metrics()
    d.addCallback(local_metrics)
    workers = sharing()
    if workers is not None:
        d.addCallback(workers.gather)
    return d


def scrape(admin: Any, request: Request) -> Any:
    """Answer ``request`` with the metrics ``admin`` (an IBrokerAdmin) reads now."""
    accept = request.getHeader(b"accept")
    d = broker_metrics(admin)

    def write(metrics: list[Metric]) -> None:
        body, content_type = render(metrics, accept.decode("latin-1") if accept else None)
        if request.finished or request._disconnected:
            return
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        request.write(body)
        request.finish()

    def failed(failure: Any) -> None:
        log.failure("Metrics scrape failed", failure)
        if not request.finished and not request._disconnected:
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(b"metrics failed; see the broker's log\n")
            request.finish()

    d.addCallback(write).addErrback(failed)
    return NOT_DONE_YET


class MetricsResource(Resource):
    """``GET /metrics``, unauthenticated: bind the listener where only your scraper
    reaches it (``interface=127.0.0.1``, a private network) or use TLS keys."""

    isLeaf = True

    def __init__(self, admin: Any) -> None:
        super().__init__()
        self.admin = admin

    def render_GET(self, request: Request) -> Any:
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            return b"not found: the metrics are at /metrics\n"
        return scrape(self.admin, request)


class _Root(Resource):
    """``/``: a pointer to ``/metrics``; anything else 404."""

    def __init__(self, admin: Any) -> None:
        super().__init__()
        self.putChild(b"metrics", MetricsResource(admin))

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if request.path != b"/":
            request.setResponseCode(404)
            return b"not found: the metrics are at /metrics\n"
        return b"mqtt-twisted metrics: /metrics\n"


class MetricsSite(Site):
    """The metrics listener's site: a connection limit and the request deadlines of the
    other HTTP listeners (a scraper is one client; a trickler is cut off)."""

    requestFactory = SafeRequest
    protocol = DeadlineChannel
    noisy = False

    def __init__(self, reactor: Any, service: Any, settings: Any) -> None:
        super().__init__(_Root(service.admin), timeout=30, reactor=reactor)
        self.request_timeout = getattr(settings, "requestTimeout", 10.0)
        self.min_body_rate = getattr(settings, "minBodyRate", 1024.0)
        self.limit = ConnectionLimit(service, settings)

    def buildProtocol(self, addr: Any) -> Any:
        if not self.limit.admit(addr, "a metrics connection"):
            return None
        channel = super().buildProtocol(addr)
        lost = channel.connectionLost

        def connectionLost(reason: Any) -> None:
            self.limit.release()
            lost(reason)

        channel.connectionLost = connectionLost
        return channel


@implementer(IStreamAdapter, IListenerChecker)
class MetricsAdapter:
    """``--listen metrics=tcp:9100``: Prometheus's ``/metrics``."""

    name = "metrics"
    description = "Prometheus metrics at /metrics (docs/metrics.md)"
    defaultEndpoint = "tcp:9100"
    options = dict(tls.TLS_OPTIONS)

    def checkListener(self, settings: Any) -> None:
        tls.check_tls(settings.endpoint, settings.extra)

    def buildFactory(self, reactor: Any, broker: Any, settings: Any) -> MetricsSite:
        return MetricsSite(reactor, broker, settings)

    def buildListener(self, reactor: Any, broker: Any, endpointDescription: str,
                      settings: Any) -> IService:
        site = self.buildFactory(reactor, broker, settings)
        service = tls.stream_listener(reactor, endpointDescription, site, settings.extra,
                                   header_timeout=settings.connectTimeout)
        service.site = site
        return service
