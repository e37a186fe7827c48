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
from twisted.web.server import Request

from mqtt_twisted.adapters import _httpapi as api
from mqtt_twisted.adapters._httpapi import ApiError
from mqtt_twisted.adapters.http import _Endpoint
from mqtt_twisted.adapters.metrics import exposition
from mqtt_twisted.constants import ReasonCode


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
        families = yield self.bridge.service.admin.metrics()
        accept = request.getHeader(b"accept")
        body, content_type = exposition(families, accept.decode("latin-1") if accept else None)
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        request.write(body)
        request.finish()


def install(bridge: Any) -> None:
    """Add the operator paths to ``bridge``."""
    bridge.putChild(b"metrics", MetricsEndpoint(bridge))
