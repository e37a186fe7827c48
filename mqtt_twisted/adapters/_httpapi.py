"""The HTTP bridge's rules, without I/O: request parameters and headers in, messages and
JSON events out.

:mod:`mqtt_twisted.adapters.http` is the thin twisted.web shell around these
functions; they import nothing from ``twisted.internet`` and are tested without a
reactor.  Every refusal is an :class:`ApiError` carrying the HTTP status, a message
for people and the MQTT 5 reason code closest to it.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import os
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

from mqtt_twisted.codec.topics import SHARE_PREFIX, validate_topic_filter, validate_topic_name
from mqtt_twisted.constants import MAX_STRING_LENGTH, PropertyId, ReasonCode
from mqtt_twisted.errors import (
    AuthenticationError,
    AuthorizationError,
    ConnectError,
    MQTTError,
    StorageError,
)
from mqtt_twisted.message import NO_WIRE, Message, forward_properties

_P = PropertyId

#: Long-poll defaults and bounds, in seconds and messages.
DEFAULT_POLL_TIMEOUT = 30.0
MAX_POLL_TIMEOUT = 300.0
DEFAULT_POLL_MAX = 100
MAX_POLL_MAX = 1000
#: Bytes of events a persistent client's replay log keeps at most (the newest event
#: is always kept).
REPLAY_BYTES = 1 << 20

#: Request headers carrying MQTT 5 PUBLISH properties (lower case, as looked up).
H_PAYLOAD_FORMAT = "mqtt-payload-format-indicator"
H_EXPIRY = "mqtt-message-expiry-interval"
H_CONTENT_TYPE = "mqtt-content-type"
H_RESPONSE_TOPIC = "mqtt-response-topic"
H_CORRELATION = "mqtt-correlation-data"
H_USER_PROPERTY = "mqtt-user-property"

#: Params is the query string decoded: name -> every value given, in order.
Params = Mapping[str, list[str]]
#: Headers decoded: lower-case name -> every value given, in order.
Headers = Mapping[str, list[str]]


class ApiError(Exception):
    """A request refused: HTTP ``status``, a message, the closest MQTT 5 reason code."""

    def __init__(self, status: int, error: str, reason_code: int = ReasonCode.UNSPECIFIED_ERROR,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.reason_code = int(reason_code)
        self.headers = headers or {}

    def body(self) -> bytes:
        return dumps({"error": self.error, "reason_code": self.reason_code})


def bad_request(error: str, reason_code: int = ReasonCode.PROTOCOL_ERROR) -> ApiError:
    return ApiError(400, error, reason_code)


#: What a client must send to be authenticated (401 answers carry it).
CHALLENGE = {"WWW-Authenticate": 'Basic realm="mqtt-twisted", Bearer realm="mqtt-twisted"'}


def error_from(error: BaseException, *, anonymous: bool = False) -> ApiError:
    """The HTTP answer to an exception from the broker, an authenticator or a store.

    ``anonymous``: the request sent no credentials, so a refusal to let it in (an
    authenticator's "anonymous access is not allowed") is a 401 asking for them
    (RFC 9110 §15.5.2), not a 403."""
    if isinstance(error, ApiError):
        return error
    if anonymous and (isinstance(error, AuthorizationError) or (
            isinstance(error, ConnectError) and error.reason_code == ReasonCode.NOT_AUTHORIZED)):
        return ApiError(401, error.message or "credentials required", error.reason_code,
                        CHALLENGE)
    if isinstance(error, AuthenticationError) or (
            isinstance(error, ConnectError) and error.reason_code in (
                ReasonCode.BAD_USER_NAME_OR_PASSWORD, ReasonCode.BAD_AUTHENTICATION_METHOD)):
        return ApiError(401, error.message or "not authenticated", error.reason_code, CHALLENGE)
    if isinstance(error, AuthorizationError) or (
            isinstance(error, MQTTError) and error.reason_code in (
                ReasonCode.NOT_AUTHORIZED, ReasonCode.BANNED)):
        return ApiError(403, error.message or "not authorized", error.reason_code)
    if isinstance(error, StorageError) or (
            isinstance(error, MQTTError) and error.reason_code in (
                ReasonCode.SERVER_UNAVAILABLE, ReasonCode.SERVER_BUSY)):
        return ApiError(503, error.message or "store unavailable",
                        ReasonCode.SERVER_UNAVAILABLE, {"Retry-After": "1"})
    if isinstance(error, MQTTError) and error.reason_code not in (
            ReasonCode.UNSPECIFIED_ERROR, ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR):
        return ApiError(400, error.message, error.reason_code)
    return ApiError(500, "internal error", ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR)


def code_error(reason_code: int, what: str) -> ApiError:
    """The HTTP answer to a failure reason code from SUBSCRIBE (granted QoS >= 0x80)."""
    if reason_code == ReasonCode.NOT_AUTHORIZED:
        return ApiError(403, f"not authorized to subscribe to {what!r}", reason_code)
    return ApiError(400, f"subscription to {what!r} refused", reason_code)


# --- parameters -----------------------------------------------------------------------------


def decode_params(raw: Mapping[bytes, list[bytes]]) -> dict[str, list[str]]:
    """twisted.web's ``request.args`` as text; undecodable bytes are a 400."""
    try:
        return {k.decode("utf-8"): [v.decode("utf-8") for v in vs] for k, vs in raw.items()}
    except UnicodeDecodeError:
        raise bad_request("query parameters must be UTF-8", ReasonCode.MALFORMED_PACKET) from None


def decode_headers(raw: Any) -> dict[str, list[str]]:
    """twisted.web ``Headers`` as text (header bytes are taken as UTF-8)."""
    try:
        return {k.decode("latin-1").lower(): [v.decode("utf-8") for v in vs]
                for k, vs in raw.getAllRawHeaders()}
    except UnicodeDecodeError:
        raise bad_request("header values must be UTF-8", ReasonCode.MALFORMED_PACKET) from None


def one(params: Params, name: str, default: str | None = None) -> str | None:
    """The single value of ``name``, or ``default``; given twice is a 400."""
    values = params.get(name)
    if not values:
        return default
    if len(values) > 1:
        raise bad_request(f"parameter {name!r} given more than once")
    return values[0]


def integer(params: Params, name: str, default: int, low: int, high: int) -> int:
    text = one(params, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"parameter {name!r} must be an integer, not {text!r}") from None
    if not low <= value <= high:
        raise bad_request(f"parameter {name!r} must be {low}..{high}, not {value}")
    return value


def number(params: Params, name: str, default: float, low: float, high: float) -> float:
    text = one(params, name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise bad_request(f"parameter {name!r} must be a number, not {text!r}") from None
    if not low <= value <= high:  # NaN fails too
        raise bad_request(f"parameter {name!r} must be {low:g}..{high:g}, not {text}")
    return value


def flag(params: Params, name: str) -> bool:
    text = one(params, name, "0")
    lowered = (text or "").lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise bad_request(f"parameter {name!r} must be 0 or 1, not {text!r}")


def qos_param(params: Params, maximum: int) -> int:
    text = one(params, "qos", "0")
    if text not in ("0", "1", "2"):
        raise bad_request(f"qos must be 0, 1 or 2, not {text!r}", ReasonCode.MALFORMED_PACKET)
    qos = int(text)
    if qos > maximum:
        raise bad_request(f"QoS {qos} is not supported (maximum {maximum})",
                          ReasonCode.QOS_NOT_SUPPORTED)
    return qos


def client_param(params: Params) -> str | None:
    """The ``client`` parameter: a client identifier, or None."""
    client = one(params, "client")
    if client is None:
        return None
    if not client or "\x00" in client or len(client.encode("utf-8")) > MAX_STRING_LENGTH:
        raise bad_request(f"client identifier {client!r} is not valid",
                          ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)
    return client


def topic_filter_param(value: str) -> str:
    try:
        validate_topic_filter(value)
    except MQTTError as e:
        raise bad_request(e.message, e.reason_code) from None
    return value


# --- POST /publish --------------------------------------------------------------------------


def _string(headers: Headers, name: str) -> str | None:
    values = headers.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise bad_request(f"header {name} given more than once")
    if len(values[0].encode("utf-8")) > MAX_STRING_LENGTH:
        raise bad_request(f"header {name} is longer than 65,535 bytes")
    return values[0]


def publish_properties(headers: Headers) -> dict[int, Any]:
    """MQTT 5 PUBLISH properties from the ``MQTT-*`` request headers."""
    props: dict[int, Any] = {}
    indicator = _string(headers, H_PAYLOAD_FORMAT)
    if indicator is not None:
        if indicator not in ("0", "1"):
            raise bad_request(f"MQTT-Payload-Format-Indicator must be 0 or 1, not {indicator!r}")
        props[_P.PAYLOAD_FORMAT_INDICATOR] = int(indicator)
    expiry = _string(headers, H_EXPIRY)
    if expiry is not None:
        if not expiry.isdigit() or int(expiry) > 0xFFFFFFFF:
            raise bad_request(
                f"MQTT-Message-Expiry-Interval must be 0..4294967295 seconds, not {expiry!r}")
        props[_P.MESSAGE_EXPIRY_INTERVAL] = int(expiry)
    content_type = _string(headers, H_CONTENT_TYPE)
    if content_type is not None:
        props[_P.CONTENT_TYPE] = content_type
    response_topic = _string(headers, H_RESPONSE_TOPIC)
    if response_topic is not None:
        try:
            validate_topic_name(response_topic)  # [MQTT-3.3.2-14]
        except MQTTError as e:
            raise bad_request(f"MQTT-Response-Topic: {e.message}", e.reason_code) from None
        props[_P.RESPONSE_TOPIC] = response_topic
    correlation = _string(headers, H_CORRELATION)
    if correlation is not None:
        props[_P.CORRELATION_DATA] = correlation.encode("utf-8")
    pairs = []
    for line in headers.get(H_USER_PROPERTY, ()):
        name, eq, value = line.partition("=")
        if not eq:
            raise bad_request(f"MQTT-User-Property must be name=value, not {line!r}")
        try:
            name = unquote(name.strip(), errors="strict")
            value = unquote(value.strip(), errors="strict")
        except UnicodeDecodeError:
            raise bad_request("MQTT-User-Property: percent-encoded bytes must be UTF-8",
                              ReasonCode.MALFORMED_PACKET) from None
        if len(name.encode("utf-8")) > MAX_STRING_LENGTH or len(
                value.encode("utf-8")) > MAX_STRING_LENGTH:
            raise bad_request("MQTT-User-Property name or value longer than 65,535 bytes")
        pairs.append((name, value))
    if pairs:
        props[_P.USER_PROPERTY] = pairs
    return props


def parse_publish(params: Params, headers: Headers, body: bytes, settings: Any) -> Message:
    """The message a ``POST /publish`` asks for, checked as the broker checks a PUBLISH."""
    coding = _string(headers, "content-encoding")
    if coding is not None and coding.lower() != "identity":
        raise ApiError(415, f"Content-Encoding {coding!r} is not supported; send the payload "
                       "as it is")
    topic = one(params, "topic")
    if topic is None:
        raise bad_request("parameter 'topic' is required", ReasonCode.TOPIC_NAME_INVALID)
    qos = qos_param(params, settings.maximum_qos)
    retain = flag(params, "retain")
    if retain and not settings.retain_available:
        raise bad_request("retained messages are not supported", ReasonCode.RETAIN_NOT_SUPPORTED)
    props = publish_properties(headers)
    if props.get(_P.PAYLOAD_FORMAT_INDICATOR) == 1 and settings.validate_utf8_payload:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request("the payload is not UTF-8", ReasonCode.PAYLOAD_FORMAT_INVALID) \
                from None
    try:
        return Message.create(topic, body, qos, retain, props)
    except MQTTError as e:
        raise bad_request(e.message, e.reason_code) from None


# --- GET/POST /subscribe --------------------------------------------------------------------


class SubscribeRequest:
    """What a ``/subscribe`` request asks for."""

    __slots__ = ("filters", "qos", "client", "timeout", "max", "expiry", "stream", "last_id")

    def __init__(self) -> None:
        self.filters: list[str] = []
        self.qos = 0
        self.client: str | None = None
        self.timeout = DEFAULT_POLL_TIMEOUT
        self.max = DEFAULT_POLL_MAX
        self.expiry: int | None = None
        self.stream = False
        self.last_id: str | None = None


def merge_body(params: dict[str, list[str]], headers: Headers, body: bytes) -> None:
    """Add the parameters of a ``POST /subscribe`` body (JSON or a form) to ``params``."""
    if not body.strip():
        return
    content_type = (_string(headers, "content-type") or "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise bad_request("the form body cannot be parsed", ReasonCode.MALFORMED_PACKET) \
                from None
        for name, values in form.items():
            params.setdefault(name, []).extend(values)
        return
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(415, "a POST /subscribe body must be application/json or "
                       "application/x-www-form-urlencoded")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise bad_request("the JSON body cannot be parsed", ReasonCode.MALFORMED_PACKET) \
            from None
    if not isinstance(data, dict):
        raise bad_request("the JSON body must be an object")
    topics = data.pop("topics", None)
    if topics is not None:
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise bad_request("'topics' must be a list of strings")
        params.setdefault("topic", []).extend(topics)
    for name, value in data.items():
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, str | int | float):
            raise bad_request(f"{name!r} must be a string or a number")
        params.setdefault(name, []).append(str(value))


def parse_subscribe(params: Params, headers: Headers, settings: Any) -> SubscribeRequest:
    """A ``/subscribe`` request's filters, QoS, session and mode."""
    sub = SubscribeRequest()
    sub.filters = [topic_filter_param(f) for f in dict.fromkeys(params.get("topic", ()))]
    if not sub.filters:
        raise bad_request("parameter 'topic' is required", ReasonCode.TOPIC_FILTER_INVALID)
    sub.qos = qos_param(params, settings.maximum_qos)
    sub.client = client_param(params)
    sub.timeout = number(params, "timeout", DEFAULT_POLL_TIMEOUT, 0.0, MAX_POLL_TIMEOUT)
    sub.max = integer(params, "max", DEFAULT_POLL_MAX, 1, MAX_POLL_MAX)
    if one(params, "expiry") is not None:
        if sub.client is None:
            raise bad_request("parameter 'expiry' needs 'client' (a persistent session)")
        sub.expiry = integer(params, "expiry", 0, 0, 0xFFFFFFFF)
    accept = ",".join(headers.get("accept", ()))
    sub.stream = "text/event-stream" in accept.lower()
    last = headers.get("last-event-id")
    sub.last_id = last[-1].strip() if last else None
    return sub


# --- GET /retained, DELETE /session ----------------------------------------------------------


#: ``GET /retained`` pages: messages per page by default and at most, and the payload
#: bytes a page holds before it ends (at least one message is always in it).
RETAINED_PAGE, RETAINED_PAGE_MAX, RETAINED_PAGE_BYTES = 100, 1000, 1 << 20


def parse_retained(params: Params) -> tuple[str, int, str | None]:
    """``(filter, limit, after)``: the page of messages whose topics sort after ``after``."""
    topic_filter = one(params, "topic")
    if topic_filter is None:
        raise bad_request("parameter 'topic' is required", ReasonCode.TOPIC_FILTER_INVALID)
    if topic_filter.startswith(SHARE_PREFIX):
        raise bad_request("a shared subscription filter matches no retained messages",
                          ReasonCode.TOPIC_FILTER_INVALID)
    limit = integer(params, "limit", RETAINED_PAGE, 1, RETAINED_PAGE_MAX)
    return topic_filter_param(topic_filter), limit, one(params, "after")


def retained_page(messages: list[Any], limit: int, after: str | None) -> tuple[list[Any], bool]:
    """The first page of ``messages`` by topic after ``after``, and whether more follow:
    ``limit`` messages or :data:`RETAINED_PAGE_BYTES` of payload, whichever comes first;
    only the page is sorted and encoded, so a filter matching 20,000 large messages
    costs one page, not all of them."""
    if after is not None:
        messages = [m for m in messages if m.topic > after]
    page = heapq.nsmallest(limit, messages, key=lambda m: m.topic)
    size = 0
    for n, message in enumerate(page):
        size += len(message.payload)
        if n and size > RETAINED_PAGE_BYTES:
            return page[:n], True
    return page, len(page) < len(messages)


def parse_session(params: Params) -> str:
    client = client_param(params)
    if client is None:
        raise bad_request("parameter 'client' is required", ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)
    return client


# --- credentials ----------------------------------------------------------------------------


def credentials_from(headers: Headers) -> tuple[str | None, bytes | None]:
    """(username, password) from ``Authorization``: Basic, or Bearer (the token is the
    password, as an MQTT client sends a token); (None, None) without the header."""
    values = headers.get("authorization")
    if not values:
        return None, None
    scheme, _, value = values[-1].strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "basic":
        try:
            text = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise ApiError(401, "malformed Basic credentials", ReasonCode.BAD_USER_NAME_OR_PASSWORD,
                           CHALLENGE) from None
        username, sep, password = text.partition(":")
        if not sep:
            raise ApiError(401, "Basic credentials must be user:password",
                           ReasonCode.BAD_USER_NAME_OR_PASSWORD, CHALLENGE)
        return username, password.encode("utf-8")
    if scheme == "bearer" and value:
        return None, value.encode("utf-8")
    raise ApiError(401, f"unsupported authorization scheme {scheme!r}",
                   ReasonCode.BAD_AUTHENTICATION_METHOD, CHALLENGE)


# --- events out -----------------------------------------------------------------------------


def _text_or_base64(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "plain"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def event(message: Message, qos: int, retain: bool, now: float,
          event_id: str | None = None) -> dict[str, Any]:
    """One routed message as the API shows it (SSE data, long-poll and retained lists)."""
    payload, encoding = _text_or_base64(message.payload)
    out: dict[str, Any] = {}
    if event_id is not None:
        out["id"] = event_id
    out.update(topic=message.topic, qos=qos, retain=retain, payload=payload,
               payload_encoding=encoding)
    if message.properties:
        props = forward_properties(message, None, now)
        shown: dict[str, Any] = {}
        if _P.PAYLOAD_FORMAT_INDICATOR in props:
            shown["payload_format_indicator"] = props[_P.PAYLOAD_FORMAT_INDICATOR]
        if _P.MESSAGE_EXPIRY_INTERVAL in props:
            shown["message_expiry_interval"] = props[_P.MESSAGE_EXPIRY_INTERVAL]
        if _P.CONTENT_TYPE in props:
            shown["content_type"] = props[_P.CONTENT_TYPE]
        if _P.RESPONSE_TOPIC in props:
            shown["response_topic"] = props[_P.RESPONSE_TOPIC]
        if _P.CORRELATION_DATA in props:
            data, data_encoding = _text_or_base64(props[_P.CORRELATION_DATA])
            shown["correlation_data"] = data
            if data_encoding != "plain":
                shown["correlation_data_encoding"] = data_encoding
        if props.get(_P.USER_PROPERTY):
            shown["user_properties"] = [list(pair) for pair in props[_P.USER_PROPERTY]]
        if shown:
            out["properties"] = shown
    return out


#: The last event encoded without its id, and what it was made of (payload, topic,
#: QoS, retain): a message routed to 500 SSE streams is encoded once, not 500 times.
_last_event: list[Any] = [None, None, None, None, b""]


def event_json(message: Message, qos: int, retain: bool, now: float,
               event_id: str) -> bytes:
    """``dumps(event(message, qos, retain, now, event_id))``, the part after the id
    encoded once per message (one without properties: their expiry depends on
    ``now``) and kept with its other encodings (``Message.wire``, not for a stored
    retained message): the SSE writer serves its streams one after the other, each
    with several messages, so the last message alone would rarely be the same; copies
    with another QoS or retain flag (``Message.copy``) share the previous encoding."""
    if message.properties:
        return dumps(event(message, qos, retain, now, event_id))
    wire = message.wire
    if wire is None:
        wire = message.wire = {}
    key = ("sse", qos, retain)
    tail = wire.get(key)  # type: ignore[call-overload]
    if tail is None:
        last = _last_event
        if (last[0] is not message.payload or last[2] != qos or last[3] != retain
                or last[1] != message.topic):
            last[:] = [message.payload, message.topic, qos, retain,
                       dumps(event(message, qos, retain, now))[1:]]
        tail = last[4]
        if wire is not NO_WIRE:
            wire[key] = tail  # type: ignore[index]
    # (Ids are digits, or a hex epoch, a dash and digits: nothing JSON escapes.)
    return b'{"id":"' + event_id.encode() + b'",' + tail


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sse(data: bytes, event_id: str | None = None, name: str | None = None) -> bytes:
    """One Server-Sent Events frame (``data`` is one line of JSON)."""
    head = b""
    if event_id is not None:
        head += b"id: " + event_id.encode() + b"\n"
    if name is not None:
        head += b"event: " + name.encode() + b"\n"
    return head + b"data: " + data + b"\n\n"


def poll_body(client: str, events: list[bytes]) -> bytes:
    """The JSON of a long-poll answer, from already encoded events."""
    return (b'{"client":' + dumps(client) + b',"messages":[' + b",".join(events) + b"]}")


# --- Last-Event-ID resume ---------------------------------------------------------------------


class ReplayLog:
    """The latest events sent to one persistent client, for ``Last-Event-ID`` resume.

    Ids are ``<epoch>-<n>``: the epoch changes with every new log (a new session, a
    restarted broker), so an id from another one replays nothing.  Bounded by count
    and by bytes, oldest first out.
    """

    __slots__ = ("epoch", "next", "events", "size", "limit", "session")

    def __init__(self, limit: int, session: Any = None) -> None:
        self.epoch = os.urandom(4).hex()
        self.next = 1
        self.events: deque[tuple[int, bytes]] = deque()
        self.size = 0
        self.limit = limit
        self.session = session

    def new_id(self) -> tuple[int, str]:
        n = self.next
        self.next += 1
        return n, f"{self.epoch}-{n}"

    def add(self, n: int, encoded: bytes) -> None:
        if not self.limit:
            return
        events = self.events
        events.append((n, encoded))
        self.size += len(encoded)
        while len(events) > 1 and (len(events) > self.limit or self.size > REPLAY_BYTES):
            self.size -= len(events.popleft()[1])

    def after(self, last_id: str | None, before: int) -> list[tuple[int, bytes]]:
        """The events sent after ``last_id`` and before the one numbered ``before`` (none
        for an id of another log)."""
        if not last_id:
            return []
        epoch, _, n = last_id.rpartition("-")
        if epoch != self.epoch or not n.isdigit():
            return []
        last = int(n)
        return [(i, e) for i, e in self.events if last < i < before]
