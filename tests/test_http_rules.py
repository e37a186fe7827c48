"""The HTTP bridge's request rules and its OpenAPI document, without a reactor; and the
document as the server serves it."""

from __future__ import annotations

import base64
import json
from typing import Any

from openapi_spec_validator import validate as validate_spec
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.adapters import _httpapi as api
from mqtt_twisted.adapters._openapi import document, document_bytes
from mqtt_twisted.constants import PropertyId
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.errors import AuthenticationError, AuthorizationError, ConnectError, StorageError
from mqtt_twisted.message import Message

try:
    from tests.httpbroker import OPENAPI, ROOT, HTTPBrokerTestCase, check_event
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from httpbroker import OPENAPI, ROOT, HTTPBrokerTestCase, check_event  # type: ignore[no-redef]

_P = PropertyId


def headers(**values: Any) -> dict[str, list[str]]:
    return {k.replace("_", "-").lower(): v if isinstance(v, list) else [v]
            for k, v in values.items()}


class PublishRuleTests(SynchronousTestCase):
    """parse_publish and the MQTT-* headers."""

    def test_properties_from_headers(self) -> None:
        """Each MQTT-* header maps to its v5 property; user properties keep order and
        percent-decoding."""
        props = api.publish_properties(headers(
            mqtt_payload_format_indicator="1", mqtt_message_expiry_interval="30",
            mqtt_content_type="text/plain", mqtt_response_topic="r/1",
            mqtt_correlation_data="ü-1", mqtt_user_property=["a=1", "b%3D=%20x", "a=2"]))
        self.assertEqual(props, {
            _P.PAYLOAD_FORMAT_INDICATOR: 1, _P.MESSAGE_EXPIRY_INTERVAL: 30,
            _P.CONTENT_TYPE: "text/plain", _P.RESPONSE_TOPIC: "r/1",
            _P.CORRELATION_DATA: "ü-1".encode(),
            _P.USER_PROPERTY: [("a", "1"), ("b=", " x"), ("a", "2")]})

    def test_message(self) -> None:
        """A valid request makes the message the broker routes."""
        message = api.parse_publish({"topic": ["a/b"], "qos": ["2"], "retain": ["1"]}, {},
                                    b"\x00", BrokerSettings())
        self.assertEqual(message, Message("a/b", b"\x00", 2, True))

    def test_refusals(self) -> None:
        """Bad header values are 400s naming the header."""
        for name, value in (("mqtt-message-expiry-interval", "4294967296"),
                            ("mqtt-user-property", "%ff=x"),
                            ("mqtt-content-type", "x" * 65536),
                            ("mqtt-content-type", ["a", "b"])):
            with self.assertRaises(api.ApiError) as caught:
                api.publish_properties({name: value if isinstance(value, list) else [value]})
            self.assertEqual(caught.exception.status, 400, name)


class SubscribeRuleTests(SynchronousTestCase):
    """parse_subscribe and POST bodies."""

    def test_defaults_and_mode(self) -> None:
        """Filters are de-duplicated in order; SSE when Accept names text/event-stream."""
        sub = api.parse_subscribe({"topic": ["a/#", "b", "a/#"]},
                                  headers(accept="text/html, text/event-stream",
                                          last_event_id="e-3"), BrokerSettings())
        self.assertEqual((sub.filters, sub.qos, sub.client, sub.stream, sub.last_id),
                         (["a/#", "b"], 0, None, True, "e-3"))
        self.assertEqual((sub.timeout, sub.max), (api.DEFAULT_POLL_TIMEOUT, api.DEFAULT_POLL_MAX))

    def test_bodies(self) -> None:
        """JSON (topics, numbers, booleans) and form bodies add to the query parameters."""
        params: dict[str, list[str]] = {"topic": ["q"]}
        api.merge_body(params, headers(content_type="application/json; charset=utf-8"),
                       b'{"topics": ["x", "y"], "qos": 1, "timeout": 2.5}')
        api.merge_body(params, headers(content_type="application/x-www-form-urlencoded"),
                       b"topic=z%2F%23&max=3")
        self.assertEqual(params, {"topic": ["q", "x", "y", "z/#"], "qos": ["1"],
                                  "timeout": ["2.5"], "max": ["3"]})
        with self.assertRaises(api.ApiError) as caught:
            api.merge_body({}, headers(content_type="text/plain"), b"topic=a")
        self.assertEqual(caught.exception.status, 415)


class CredentialRuleTests(SynchronousTestCase):
    """credentials_from and error_from."""

    def test_schemes(self) -> None:
        """Basic gives user and password, Bearer the token as the password."""
        basic = base64.b64encode(b"al:ice:pw").decode()
        self.assertEqual(api.credentials_from(headers(authorization=f"Basic {basic}")),
                         ("al", b"ice:pw"))
        self.assertEqual(api.credentials_from(headers(authorization="bearer abc.def")),
                         (None, b"abc.def"))
        self.assertEqual(api.credentials_from({}), (None, None))

    def test_errors_to_status(self) -> None:
        """Authentication 401 (with a challenge), authorization 403, store 503."""
        cases = [(AuthenticationError("no"), 401), (AuthorizationError("no"), 403),
                 (ConnectError("banned", 0x8A), 403), (StorageError("down"), 503),
                 (ConnectError("busy", 0x89), 503), (ValueError("bug"), 500),
                 (ConnectError("internal error"), 500), (ConnectError("id", 0x85), 400)]
        for error, status in cases:
            self.assertEqual(api.error_from(error).status, status, error)
        self.assertIn("WWW-Authenticate", api.error_from(AuthenticationError()).headers)


class EventRuleTests(SynchronousTestCase):
    """event(): how a message is shown."""

    def test_properties_and_encodings(self) -> None:
        """Text stays text, binary is base64 with a marker; expiry is what is left."""
        message = Message("t", b"\xff", 1, False, None, {
            _P.MESSAGE_EXPIRY_INTERVAL: 60, _P.CORRELATION_DATA: b"\xfe",
            _P.CONTENT_TYPE: "x/y", _P.USER_PROPERTY: [("k", "v")],
            _P.PAYLOAD_FORMAT_INDICATOR: 0, _P.RESPONSE_TOPIC: "r"}, received_at=100.0)
        shown = api.event(message, 1, True, 110.0, "e-1")
        check_event(None, shown)
        self.assertEqual(shown, {
            "id": "e-1", "topic": "t", "qos": 1, "retain": True, "payload": "/w==",
            "payload_encoding": "base64", "properties": {
                "payload_format_indicator": 0, "message_expiry_interval": 50,
                "content_type": "x/y", "response_topic": "r", "correlation_data": "/g==",
                "correlation_data_encoding": "base64", "user_properties": [["k", "v"]]}})
        self.assertEqual(api.sse(api.dumps({"a": 1}), "e-1", "x"),
                         b'id: e-1\nevent: x\ndata: {"a":1}\n\n')


class ReplayLogTests(SynchronousTestCase):
    """ReplayLog: what Last-Event-ID can bring back."""

    def test_after_and_bounds(self) -> None:
        """Events after the id (and before the limit) come back; old ones fall out; an id
        of another log brings nothing."""
        log = api.ReplayLog(3)
        ids = []
        for n in range(5):
            number, event_id = log.new_id()
            log.add(number, b"%d" % n)
            ids.append(event_id)
        self.assertEqual([e for _, e in log.after(ids[1], log.next)], [b"2", b"3", b"4"])
        self.assertEqual([e for _, e in log.after(ids[3], 5)], [])
        self.assertEqual(log.after("other-1", log.next), [])
        self.assertEqual(log.after(None, log.next), [])
        log.add(log.new_id()[0], b"x" * (api.REPLAY_BYTES + 1))
        self.assertEqual(len(log.events), 1)


class OpenAPIDocumentTests(SynchronousTestCase):
    """docs/openapi.json."""

    def test_valid_openapi(self) -> None:
        """The document is valid OpenAPI 3.1, and docs/ holds exactly what is served."""
        validate_spec(document())
        self.assertEqual((ROOT / "docs" / "openapi.json").read_bytes(), document_bytes())
        self.assertEqual(OPENAPI, json.loads(document_bytes()))


class ServedDocumentTests(HTTPBrokerTestCase):
    """GET /openapi.json."""

    @inlineCallbacks
    def test_served(self) -> Any:
        """The server serves the document, as JSON, without credentials (Agent and curl)."""
        answer = yield self.json("GET", "/openapi.json", 200)
        self.assertEqual(answer, document())
        status, headers, body = yield self.curl(path="/openapi.json")
        self.assertEqual((status, headers["content-type"], body),
                         (200, "application/json", document_bytes()))
