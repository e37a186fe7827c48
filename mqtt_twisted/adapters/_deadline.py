"""Absolute deadlines for the HTTP requests of ``http=`` and ``ws=`` listeners.

twisted.web's channel has an idle timer that every received byte restarts, so a
request head or body trickled one byte every few seconds is never cut off (a
slowloris holds the socket, its buffers and a connection slot forever).  This
channel adds what MQTT listeners already have:

* the whole request head (request line and headers; a WebSocket upgrade request
  too) must arrive within ``request_timeout`` seconds of its first byte, or of
  the connection for the first request;
* a body must keep up ``min_body_rate`` bytes per second, checked every
  ``request_timeout`` seconds until it is complete.

Neither timer is restarted by a byte.  Once a request is complete the channel's
own rules apply again (streams and long polls switch the idle timer off).
A late client gets ``408`` with the API's JSON error body, then the connection
closes.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.http import HTTPChannel
from twisted.web.server import Request

#: MQTT 5's "maximum connect time" (0xA0), the closest reason code to a timeout.
_REASON_CODE = 0xA0


class SafeRequest(Request):
    """A request whose repr survives any bytes a client sent: twisted.web's decodes the
    method and URI as ASCII, and raises on the first byte over 0x7F while its own log
    line for a HEAD request describes the request (a traceback in the log per such
    request; found by tests/test_live_fuzz_http.py)."""

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} at 0x{id(self):x} method={self.method!r} "
                f"uri={self.uri!r} clientproto={self.clientproto!r}>")


class DeadlineChannel(HTTPChannel):
    """An HTTPChannel with an absolute deadline for each request head and a minimum
    body rate.  Its site supplies ``request_timeout`` and ``min_body_rate`` (0: none)."""

    _deadline: Any = None
    _body_seen = 0
    _body_mark = 0
    _timed_out = False

    def _settings(self) -> tuple[float, float]:
        site = getattr(self, "site", None)
        return (getattr(site, "request_timeout", 10.0) or 0.0,
                getattr(site, "min_body_rate", 0.0) or 0.0)

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm_head()

    def dataReceived(self, data: bytes) -> None:
        if self._deadline is None and not self._handlingRequest and not self._timed_out:
            self._arm_head()  # the first byte of a kept-alive connection's next request
        super().dataReceived(data)

    def _arm_head(self) -> None:
        timeout, _ = self._settings()
        if timeout:
            self._deadline = self.callLater(timeout, self._late, "request head")

    def allHeadersReceived(self) -> None:
        self._disarm()
        super().allHeadersReceived()
        timeout, rate = self._settings()
        if timeout and rate and self.length != 0:
            self._body_seen = self._body_mark = 0
            self._deadline = self.callLater(timeout, self._check_body)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._handlingRequest:
            self._body_seen += len(data)
        super().rawDataReceived(data)

    def _check_body(self) -> None:
        timeout, rate = self._settings()
        self._deadline = None
        if self._body_seen - self._body_mark < rate * timeout:
            self._late(f"request body (less than {rate:g} bytes/s)")
            return
        self._body_mark = self._body_seen
        self._deadline = self.callLater(timeout, self._check_body)

    def allContentReceived(self) -> None:
        self._disarm()
        super().allContentReceived()

    def _disarm(self) -> None:
        call, self._deadline = self._deadline, None
        if call is not None and call.active():
            call.cancel()

    def _late(self, what: str) -> None:
        """Answer 408 and close (aborted after the channel's abortTimeout if the peer
        does not read)."""
        self._deadline = None
        self._timed_out = True
        self._log.info("Closing {peer}: {what} not received in time",
                       peer=self.transport.getPeer(), what=what)
        body = json.dumps({"error": f"{what} not received in time",
                           "reason_code": _REASON_CODE}).encode()
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\n"
                             b"Content-Type: application/json\r\n"
                             b"Connection: close\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self.timeoutConnection()

    def connectionLost(self, reason: Any) -> None:
        self._disarm()
        super().connectionLost(reason)
