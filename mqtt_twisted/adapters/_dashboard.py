"""``/dashboard/`` on the HTTP adapter: the operator's live page, for admins.

The page is three static files shipped in the package (``mqtt_twisted/dashboard/``:
HTML, CSS and plain JavaScript, no build step, nothing from a CDN), read once; its
data comes from the admin API and its Server-Sent Events (``_httpadmin.py``).  The
files are served to admins only, as the API is: a browser asked for credentials by
the 401 sends them with the page's own requests too.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.web.server import Request

from mqtt_twisted.adapters._httpadmin import admin_params
from mqtt_twisted.adapters._httpstream import respond
from mqtt_twisted.adapters.http import _Endpoint, not_found

#: The files under /dashboard/ and their content types.
FILES = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"index.html": ("index.html", b"text/html; charset=utf-8"),
    b"dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    b"dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
}
#: What the page may load: its own files and API, nothing inline, nothing elsewhere.
POLICY = (b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
          b"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@cache
def static(name: str) -> bytes:
    """A dashboard file's bytes (read once)."""
    return (files("mqtt_twisted") / "dashboard" / name).read_bytes()


class DashboardResource(_Endpoint):
    """``GET /dashboard`` (redirected to ``/dashboard/``) and its files."""

    methods = {b"GET": "get"}

    def render(self, request: Request) -> Any:
        if len(request.postpath) > 1 or (request.postpath and
                                         request.postpath[0] not in FILES):
            return not_found(request)
        if request.method == b"GET" and not request.postpath:
            # Relative URLs (dashboard.js, ../admin/) need the trailing slash.
            request.setResponseCode(302)
            request.setHeader(b"location", b"/dashboard/")
            request.setHeader(b"content-type", b"application/json")
            return b'{"error":"the dashboard is at /dashboard/","reason_code":0}'
        return super().render(self._as_leaf(request))

    @staticmethod
    def _as_leaf(request: Request) -> Request:
        """_Endpoint answers only its own path: the file's name moves aside."""
        request.dashboard_file = request.postpath[0] if request.postpath else b""
        request.postpath = []
        return request

    @inlineCallbacks
    def get(self, request: Request) -> Any:
        yield admin_params(self.bridge, request)
        name, content_type = FILES[request.dashboard_file]
        request.setHeader(b"content-security-policy", POLICY)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-cache")
        respond(request, 200, static(name), content_type=content_type)
