"""A real broker with MQTT and HTTP (or ``auto``) listeners for the HTTP bridge tests, and
the HTTP clients they use: Twisted's ``Agent``, ``curl`` as a subprocess, a streaming
SSE reader for each, and a check of every answer against docs/openapi.json.

Every answer a test gets through :meth:`HTTPBrokerTestCase.request` or
:meth:`HTTPBrokerTestCase.curl` is checked against the OpenAPI document (status
documented for the operation, JSON body valid against its schema, documented
headers present), and so is the data of every SSE event read: the whole test suite
doubles as the conformance test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers

from mqtt_twisted.adapters.listener import parse_listener
from mqtt_twisted.adapters.mqtt import MQTTAdapter
from mqtt_twisted.core import inspection
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.plugins.http import autoAdapter, httpAdapter
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore

try:
    from tests.pahoclient import TIMEOUT, PahoClient, with_timeout
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from pahoclient import TIMEOUT, PahoClient, with_timeout  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = json.loads((ROOT / "docs" / "openapi.json").read_text())
#: Seconds curl may run before it gives up on its own (no test waits that long).
CURL_MAX_TIME = "10"


# --- OpenAPI conformance -------------------------------------------------------------------


def schema_validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for one schema of the document, its ``#/components`` refs resolvable."""
    return Draft202012Validator({**schema, "components": OPENAPI["components"]})


def check_answer(case: unittest.TestCase, method: str, url: str, status: int,
                 headers: dict[str, str], body: bytes) -> None:
    """Fail ``case`` unless this answer is one docs/openapi.json documents."""
    path = urlsplit(url).path.rstrip("/") or "/"
    operation = OPENAPI["paths"].get(path, {}).get(method.lower())
    content_type = headers.get("content-type", "").split(";")[0].strip()
    if operation is None:
        case.assertIn(status, (404, 405), f"{method} {path} is not documented")
        schema = OPENAPI["components"]["schemas"]["Error"]
        schema_validator(schema).validate(json.loads(body))
        return
    documented = operation["responses"].get(str(status))
    case.assertIsNotNone(documented, f"{method} {path} answered {status}, not documented")
    for name in documented.get("headers", {}):
        case.assertIn(name.lower(), headers, f"{status} without the {name} header")
    if status == 204 or not body:
        case.assertNotIn("content", documented if status == 204 else {}, "204 with a body")
        return
    content = documented.get("content", {})
    case.assertIn(content_type, content, f"{status} {content_type} not documented")
    if content_type == "application/json":
        schema_validator(content[content_type]["schema"]).validate(json.loads(body))


def check_event(name: str | None, data: dict[str, Any]) -> None:
    """An SSE event's data must follow its schema (Message, Subscribed, Closed, or
    StatsEvent for the admin API's stats)."""
    schema = {"subscribed": "Subscribed", "close": "Closed",
              "stats": "StatsEvent"}.get(name or "", "Message")
    schema_validator({"$ref": f"#/components/schemas/{schema}"}).validate(data)


# --- Server-Sent Events ------------------------------------------------------------------


class SSEEvent:
    """One event: its name (None for plain messages), id, data (parsed JSON)."""

    __slots__ = ("name", "id", "data")

    def __init__(self, name: str | None, event_id: str | None, data: Any) -> None:
        self.name = name
        self.id = event_id
        self.data = data

    def __repr__(self) -> str:
        return f"SSEEvent({self.name!r}, {self.id!r}, {self.data!r})"


class SSEParser:
    """Turns a byte stream into events (comments counted, not kept)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.comments = 0

    def feed(self, data: bytes) -> list[SSEEvent]:
        self.buffer += data
        events = []
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            fields: dict[str, str] = {}
            for line in block.decode("utf-8").split("\n"):
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value
            if "data" in fields:
                data = json.loads(fields["data"])
                check_event(fields.get("event"), data)
                events.append(SSEEvent(fields.get("event"), fields.get("id"), data))
        return events


class SSEStream:
    """The events of one SSE response, from curl or from an Agent body."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.parser = SSEParser()
        self.events: DeferredQueue[SSEEvent] = DeferredQueue()
        self.ended: Deferred[None] = Deferred()
        self.stop: Any = None

    def feed(self, data: bytes) -> None:
        for event in self.parser.feed(data):
            self.events.put(event)

    def next(self, timeout: float = TIMEOUT) -> Deferred[SSEEvent]:
        return with_timeout(self.events.get(), self.reactor, timeout)

    @inlineCallbacks
    def expect(self, name: str | None = None, timeout: float = TIMEOUT) -> Any:
        """The next event, which must be named ``name`` (None: a message)."""
        event = yield self.next(timeout)
        if event.name != name:
            raise AssertionError(f"expected event {name!r}, got {event!r}")
        return event

    def wait_ended(self, timeout: float = TIMEOUT) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self.ended.addBoth(lambda r: (waiter.called or waiter.callback(None), r)[1])
        return with_timeout(waiter, self.reactor, timeout)


class _CurlSSE(ProcessProtocol):
    def __init__(self, stream: SSEStream) -> None:
        self.stream = stream
        self.stderr = b""

    def outReceived(self, data: bytes) -> None:
        self.stream.feed(data)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Any) -> None:
        self.stream.ended.callback(None)


class _Collect(Protocol):
    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        if reason is None or reason.check(ResponseDone):
            self.done.callback(self.data)
        else:
            self.done.errback(reason)


def read_body(response: Any) -> Deferred[bytes]:
    """The whole body of an Agent response (readBody without its deprecation warning)."""
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Collect(done))
    return done


class _BodyReader(Protocol):
    def __init__(self, stream: SSEStream) -> None:
        self.stream = stream

    def dataReceived(self, data: bytes) -> None:
        self.stream.feed(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.stream.ended.callback(None)


# --- the test case -----------------------------------------------------------------------------


class HTTPBrokerTestCase(unittest.TestCase):
    """A broker with an MQTT listener and an HTTP one (``auto`` when ``auto`` is set) on
    127.0.0.1, started for each test and stopped after it, with clients cleaned up."""

    settings: BrokerSettings | None = None
    authenticator: Any = None
    authorizer: Any = None
    #: Keys added to the HTTP listener, e.g. {"maxPayload": "1024"}.
    http_keys: dict[str, str] = {}
    auto = False
    #: The endpoint the HTTP (or auto) listener uses, before our keys.
    http_endpoint = "tcp:0:interface=127.0.0.1"
    #: For an ssl: endpoint: the CA (PEM file) that curl and Agent trust.
    ca: str | None = None
    timeout = 30

    def make_store(self) -> Any:
        return MemoryStore(self.reactor)

    @inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.reactor = reactor
        self.service = BrokerService(reactor, self.make_store(), self.settings,
                                     self.authenticator, self.authorizer, 10.0, 0)
        self.broker = self.service.broker
        ports: dict[str, Any] = {}
        name = "auto" if self.auto else "http"
        keys = "".join(f":{k}={v}" for k, v in self.http_keys.items())
        adapter = autoAdapter if self.auto else httpAdapter
        http = parse_listener(f"{name}={self.http_endpoint}{keys}", "mqtt",
                              {name: list(adapter.options)})
        adapter.checkListener(http)
        mqtt = parse_listener("tcp:0:interface=127.0.0.1")
        listeners = {"mqtt": self.service.addListener(MQTTAdapter(), mqtt),
                     name: self.service.addListener(adapter, http)}
        self.service.startService()
        yield self.service.ready
        for key, listener in listeners.items():
            listener._waitingForPort.addCallback(self._record_port, ports, key)
        self.mqtt_port = ports["mqtt"].getHost().port
        self.http_port = ports[name].getHost().port
        factory = listeners[name].factory
        self.site = getattr(factory, "wrappedFactory", factory)  # TLS taken off
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        if self.ca is None:
            self.agent = Agent(reactor, pool=self.pool)
        else:
            from twisted.internet.ssl import Certificate
            from twisted.web.client import BrowserLikePolicyForHTTPS

            with open(self.ca, "rb") as f:
                policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(f.read()))
            self.agent = Agent(reactor, contextFactory=policy, pool=self.pool)

    @inlineCallbacks
    def tearDown(self) -> Any:
        yield self.pool.closeCachedConnections()
        yield self.service.stopService()
        # Closed sockets leave the reactor a turn later: wait, for trial's clean-reactor check.
        yield self.wait_until(lambda: not self._server_connections(), timeout=TIMEOUT)

    @staticmethod
    def _record_port(port: Any, ports: dict[str, Any], name: str) -> Any:
        ports[name] = port
        return port

    def _server_connections(self) -> int:
        held = getattr(self.site, "channels", None)
        if held is None:  # an auto listener: a WebSocket's socket is Autobahn's once open
            from mqtt_twisted.adapters.detect import _open

            held = [p for p in self.site.connections if _open(p.transport)]
        return len(held) + inspection.connection_count(self.broker)

    # --- helpers ---------------------------------------------------------------------------

    def url(self, path: str) -> str:
        if self.ca is None:
            return f"http://127.0.0.1:{self.http_port}{path}"
        return f"https://localhost:{self.http_port}{path}"

    def _curl_tls(self) -> list[str]:
        return [] if self.ca is None else ["--cacert", self.ca]

    def session(self, client_id: str) -> inspection.SessionInfo:
        """A snapshot of ``client_id``'s session, which must exist."""
        info = inspection.session_info(self.broker, client_id)
        if info is None:
            self.fail(f"no session for {client_id!r}")
        return info

    def sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(self.reactor, seconds, lambda: None)

    @inlineCallbacks
    def wait_until(self, predicate: Any, timeout: float = TIMEOUT) -> Any:
        """Poll ``predicate`` on the reactor until true; fail after ``timeout`` seconds."""
        waited = 0.0
        while not predicate():
            if waited >= timeout:
                self.fail(f"condition not met within {timeout}s")
            yield self.sleep(0.01)
            waited += 0.01

    @inlineCallbacks
    def paho(self, client_id: str = "", port: int | None = None, **kwargs: Any) -> Any:
        """A connected paho 3.1.1 client, stopped after the test."""
        client = PahoClient(self.reactor, port or self.mqtt_port, client_id, **kwargs)
        self.addCleanup(client.stop)
        result = yield client.connect()
        self.assertEqual(result.rc, 0)
        return client

    @inlineCallbacks
    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | None = None, check: bool = True) -> Any:
        """An Agent request; fires with ``(status, headers, body)``, the answer checked
        against the OpenAPI document."""
        url = self.url(path)
        producer = FileBodyProducer(_Bytes(body)) if body is not None else None
        response = yield with_timeout(self.agent.request(
            method.encode(), url.encode(), _headers(headers), producer), self.reactor)
        data = yield with_timeout(read_body(response), self.reactor)
        answer = (response.code, _flat(response.headers), data)
        if check:
            check_answer(self, method, url, *answer)
        return answer

    @inlineCallbacks
    def json(self, method: str, path: str, status: int, headers: dict[str, str] | None = None,
             body: bytes | None = None) -> Any:
        """An Agent request that must answer ``status``; fires with its JSON body."""
        code, _, data = yield self.request(method, path, headers, body)
        self.assertEqual(code, status, data)
        return json.loads(data) if data else None

    @inlineCallbacks
    def curl(self, *args: str, path: str, method: str = "GET") -> Any:
        """Run curl against ``path``; fires with ``(status, headers, body)``, checked."""
        from twisted.internet.utils import getProcessOutputAndValue

        url = self.url(path)
        out, err, code = yield getProcessOutputAndValue(
            "curl", ["-s", "-i", "-m", CURL_MAX_TIME, *self._curl_tls(), "-X", method, *args,
                     url],
            env=_curl_env(), reactor=self.reactor)
        self.assertEqual(code, 0, err)
        status, headers, body = _parse_http(out)
        check_answer(self, method, url, status, headers, body)
        return status, headers, body

    def curl_sse(self, path: str, *args: str) -> SSEStream:
        """curl streaming an SSE response (``-N``); killed after the test if still running."""
        stream = SSEStream(self.reactor)
        protocol = _CurlSSE(stream)
        process = self.reactor.spawnProcess(
            protocol, "curl", ["curl", "-s", "-N", "-m", CURL_MAX_TIME, *self._curl_tls(),
                               "-H", "Accept: text/event-stream", *args, self.url(path)],
            env=_curl_env())

        def stop() -> Deferred[None]:
            if not stream.ended.called:
                process.signalProcess("TERM")
            return stream.wait_ended()

        stream.stop = stop
        self.addCleanup(stop)
        return stream

    @inlineCallbacks
    def agent_sse(self, path: str, headers: dict[str, str] | None = None,
                  method: str = "GET", body: bytes | None = None) -> Any:
        """An SSE response read through Agent; fires with the stream once headers arrive.
        ``stream.stop()`` drops the connection."""
        all_headers = {"Accept": "text/event-stream", **(headers or {})}
        producer = FileBodyProducer(_Bytes(body)) if body is not None else None
        response = yield with_timeout(self.agent.request(
            method.encode(), self.url(path).encode(), _headers(all_headers), producer),
            self.reactor)
        self.assertEqual(response.code, 200)
        self.assertTrue(_flat(response.headers)["content-type"].startswith("text/event-stream"))
        stream = SSEStream(self.reactor)
        reader = _BodyReader(stream)
        response.deliverBody(reader)

        def stop() -> Deferred[None]:
            if not stream.ended.called and reader.transport is not None:
                reader.transport.stopProducing()
            return stream.wait_ended()

        stream.stop = stop
        self.addCleanup(stop)
        return stream


class _Bytes:
    """A file over bytes for FileBodyProducer (its length known: Content-Length)."""

    def __init__(self, data: bytes) -> None:
        import io

        self._file = io.BytesIO(data)
        self.read = self._file.read
        self.seek = self._file.seek
        self.tell = self._file.tell
        self.close = self._file.close


def _headers(headers: dict[str, str] | None) -> Headers:
    result = Headers()
    for name, value in (headers or {}).items():
        values = value if isinstance(value, list) else [value]
        result.setRawHeaders(name.encode(), [v.encode("utf-8") for v in values])
    return result


def _flat(headers: Headers) -> dict[str, str]:
    return {k.decode().lower(): v[-1].decode("latin-1") for k, v in headers.getAllRawHeaders()}


def _curl_env() -> dict[str, str]:
    """curl's environment: no proxies, whatever the machine's settings."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = "*"
    return env


def _parse_http(out: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of ``curl -i`` output (a ``100 Continue`` skipped)."""
    while True:
        head, _, body = out.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status != 100:
            break
        out = body
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body
