"""The etcd store's way to etcd: the v3 JSON gateway (grpc-gateway) over HTTP/1.1.

Why the gateway and Twisted's ``Agent`` rather than a gRPC client: etcd's Python
clients (python-etcd3, etcd3gw, aetcd) are built on grpcio threads, on requests
(blocking) or on asyncio; none fits the reactor without a thread per call.  The
gateway ships in every etcd 3.4+ server, speaks plain JSON over HTTP on the client
port, and needs nothing but ``twisted.web.client``: an ``Agent`` on a persistent
``HTTPConnectionPool`` keeps ``pool`` connections open, and a semaphore caps the
requests in flight at the same number, so a burst of store calls queues here
instead of opening a socket each.

Keys and values travel base64-encoded; 64-bit numbers come back as strings; fields
at their default value (``false``, ``0``, an empty list) are left out of replies.
Every request fails with :class:`~mqtt_twisted.errors.StorageError` after the
store's ``timeout``; a connection error or timeout starts an outage in the store's
:class:`~mqtt_twisted.store.outage.OutageLog`, the next answer ends it.
"""

from __future__ import annotations

import json
from base64 import b64decode, b64encode
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    DNSLookupError,
    TimeoutError,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from mqtt_twisted.errors import StorageError
from mqtt_twisted.store.outage import OutageLog

_HEADERS = Headers({b"content-type": [b"application/json"]})
#: Failures that mean etcd is away (not that it refused a request).
_AWAY = (ConnectError, ConnectingCancelledError, DNSLookupError, TimeoutError, DeferredTimeout, CancelledError,
         ResponseNeverReceived, RequestTransmissionFailed, ResponseFailed, OSError)


def b64(data: bytes) -> str:
    return b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes:
    return b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


# --- request operations (the JSON of etcd's RequestOp) -------------------------------------


def put(key: bytes, value: bytes, lease: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        op["lease"] = lease
    return {"requestPut": op}


def delete(key: bytes) -> dict[str, Any]:
    return {"requestDeleteRange": {"key": b64(key)}}


def delete_prefix(prefix: bytes) -> dict[str, Any]:
    return {"requestDeleteRange": {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}}


def get(key: bytes) -> dict[str, Any]:
    return {"requestRange": {"key": b64(key)}}


def get_prefix(prefix: bytes, keys_only: bool = False) -> dict[str, Any]:
    rng: dict[str, Any] = {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
    if keys_only:
        rng["keys_only"] = True
    return {"requestRange": rng}


def exists(key: bytes) -> dict[str, Any]:
    """A compare that holds while ``key`` exists."""
    return {"key": b64(key), "target": "CREATE", "result": "GREATER", "create_revision": "0"}


def absent(key: bytes) -> dict[str, Any]:
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def value_is(key: bytes, value: bytes) -> dict[str, Any]:
    return {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}


def kvs(range_response: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of a range response (a txn's ``response_range`` too)."""
    return [(unb64(kv.get("key")), unb64(kv.get("value")))
            for kv in range_response.get("kvs", ())]


def txn_ranges(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """The range responses of a txn reply, in the order of its operations."""
    return [r.get("response_range", {}) for r in reply.get("responses", ())]


class Away(StorageError):
    """etcd did not answer (connection refused, reset, or no reply in time)."""


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory (FileBodyProducer would take a reactor turn)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Reader(Protocol):
    """Collects a response body (``readBody`` warns on the pool's transports)."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.parts: list[bytes] = []
        self.done: Deferred[tuple[int, bytes]] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback((self.code, b"".join(self.parts)))
        else:
            self.done.errback(reason)


class _QuietFactory(_HTTP11ClientFactory):
    """The pool's connection factory without its "Starting factory" line per connection."""

    noisy = False


class EtcdHTTP:
    """POST JSON to etcd's gateway on ``pool`` persistent connections; one outage log."""

    def __init__(self, reactor: Any, options: Any, outage: OutageLog) -> None:
        self.reactor = reactor
        self.options = options
        self.outage = outage
        self.base = f"http://{_host(options.host)}:{options.port}/v3/".encode()
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool._factory = _QuietFactory
        self._pool.maxPersistentPerHost = options.pool
        self._pool.retryAutomatically = False
        self._agent = Agent(reactor, connectTimeout=options.connect_timeout, pool=self._pool)
        self._slots = DeferredSemaphore(options.pool)
        #: Requests not yet answered, and who waits for there to be none (stop()).
        self.active = 0
        self._drain_waiters: list[Deferred[None]] = []

    def call(self, path: str, body: dict[str, Any], write: bool = True,
             timeout: float | None = None, track: bool = True) -> Deferred[Any]:
        """POST ``body`` to ``/v3/<path>``; fires with the decoded reply, or fails with
        StorageError (StoreUnavailable during an outage) after ``timeout`` seconds
        (default: the store's).  ``track=False`` keeps the outage log out of it (the
        start-up probe, which reports on its own)."""
        data = json.dumps(body, separators=(",", ":")).encode()
        d = self._slots.run(self._post, path, data)
        d.addTimeout(timeout or self.options.timeout, self.reactor)
        d.addCallbacks(self._answered, self._failed, callbackArgs=(track,),
                       errbackArgs=(path, write, track))
        self.active += 1
        d.addBoth(self._done)
        return d

    def _post(self, path: str, data: bytes, retry: bool = True) -> Deferred[Any]:
        """One request; sent once more if the connection went before any answer (a pooled
        connection the server had closed).  Every request the store makes may be applied
        twice: puts and deletes are, guarded writes compare again, and a lock already
        holding our id is ours."""
        d = self._agent.request(b"POST", self.base + path.encode(), _HEADERS, _Body(data))

        def body(response: Any) -> Deferred[tuple[int, bytes]]:
            reader = _Reader(response.code)
            response.deliverBody(reader)
            return reader.done

        def again(failure: Failure) -> Deferred[Any]:
            failure.trap(ResponseNeverReceived, RequestTransmissionFailed)
            return self._post(path, data, False)

        d.addCallback(body)
        if retry:
            d.addErrback(again)
        return d

    def _answered(self, result: tuple[int, bytes], track: bool) -> Any:
        code, content = result
        if track:
            self.outage.up("etcd")
        try:
            reply = json.loads(content)
        except ValueError:
            reply = None
        if code == 200 and isinstance(reply, dict):
            return reply
        if isinstance(reply, dict) and "message" in reply:
            raise StorageError(f"etcd refused the request: {reply['message']}")
        what = content[:80].decode("utf-8", "replace").strip()
        raise StorageError(f"etcd gateway answered HTTP {code} ({what}); etcd 3.4 or later "
                           f"serves its JSON gateway at /v3/")

    def _failed(self, failure: Failure, path: str, write: bool, track: bool) -> Any:
        if failure.check(StorageError):
            return failure
        where = f"etcd at {self.options.host}:{self.options.port}"
        if failure.check(*_AWAY):
            why = ("no reply in time"
                   if failure.check(DeferredTimeout, CancelledError, ConnectingCancelledError)
                   else _reason(failure))
            if not track:
                raise Away(f"{where}: {why}")
            self.outage.down("etcd", why)
            raise self.outage.error(f"{where}: {path}: {why}", write)
        raise StorageError(f"{where}: {path}: {_reason(failure)}")

    def _done(self, result: Any) -> Any:
        self.active -= 1
        if not self.active:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        return result

    def drained(self) -> Deferred[None]:
        """Fires once no request is under way (each ends by its timeout)."""
        d: Deferred[None] = Deferred()
        if self.active:
            self._drain_waiters.append(d)
        else:
            d.callback(None)
        return d

    def close(self) -> Deferred[None]:
        return self._pool.closeCachedConnections()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _reason(failure: Failure) -> str:
    error = failure.value
    reasons = getattr(error, "reasons", None)  # ResponseNeverReceived and friends
    if reasons:
        error = reasons[0].value
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
