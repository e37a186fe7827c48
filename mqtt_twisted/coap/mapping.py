"""The ``/ps/{topic}`` mapping of CoAP requests onto the broker, as EMQX's CoAP gateway
does it (docs/coap.md has the two side by side), without I/O.

:func:`parse_request` reads a request into a :class:`PsRequest` (or raises
:class:`CoapError` with the response code to answer); :func:`publish_message` makes
the broker message a POST/PUT asks for; :func:`notification_options` carries an MQTT
5 Content Type back as a Content-Format.  The adapter does the rest through the
gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import options as opt
from mqtt_twisted.codec.topics import SHARE_PREFIX, validate_topic_filter, validate_topic_name
from mqtt_twisted.constants import MAX_STRING_LENGTH, PropertyId
from mqtt_twisted.errors import MQTTError
from mqtt_twisted.message import Message

#: The options this server acts on; any other critical option gets 4.02 Bad Option.
UNDERSTOOD = frozenset({opt.URI_HOST, opt.URI_PORT, opt.URI_PATH, opt.URI_QUERY,
                        opt.OBSERVE, opt.CONTENT_FORMAT, opt.ACCEPT, opt.SIZE2,
                        opt.SIZE1, opt.BLOCK1, opt.BLOCK2})
#: The first Uri-Path segment of the publish/subscribe resource (EMQX's).
PS = "ps"
#: Query keys understood; others are refused so that a typo does not pass silently.
QUERY_KEYS = frozenset({"clientid", "qos", "retain", "expiry", "username", "password",
                        "token"})
OBSERVE_REGISTER, OBSERVE_DEREGISTER = 0, 1

PUBLISH, READ, OBSERVE, FORGET, DELETE = "publish", "read", "observe", "forget", "delete"


class CoapError(Exception):
    """A request refused: the response ``code``, a diagnostic payload (§5.5.2) and any
    options the answer carries (Size1 with a 4.13)."""

    def __init__(self, code: int, text: str,
                 options: list[tuple[int, bytes]] | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.options = options or []


def bad_request(text: str) -> CoapError:
    return CoapError(m.BAD_REQUEST, text)


@dataclass(slots=True)
class PsRequest:
    """What a request on ``/ps/...`` asks for."""

    action: str
    topic: str
    qos: int = 0
    retain: bool = False
    expiry: int | None = None
    client_id: str | None = None
    username: str | None = None
    password: bytes | None = None
    #: A connection-mode token (``POST /mqtt/connection`` gave it).
    token: str | None = None


def check_options(request: m.CoapMessage, bert: bool = False) -> None:
    """4.02 Bad Option for critical options we do not know, or malformed ones (§5.4.1);
    ``bert``: the request came over TCP, where Block SZX 7 is BERT."""
    bad = opt.bad_critical(request.options, UNDERSTOOD, bert)
    if bad:
        names = ", ".join(opt.name_of(n) for n in dict.fromkeys(bad))
        raise CoapError(m.BAD_OPTION, f"unrecognized or malformed critical option: {names}")


def query(request: m.CoapMessage) -> dict[str, str]:
    """The Uri-Query options as a dict (``key=value``; a key given twice is a 4.00)."""
    out: dict[str, str] = {}
    for item in request.strings(opt.URI_QUERY):
        key, _, value = item.partition("=")
        if key not in QUERY_KEYS:
            raise bad_request(f"unknown query parameter {key!r}")
        if key in out:
            raise bad_request(f"query parameter {key!r} given more than once")
        out[key] = value
    return out


def _qos(text: str | None, maximum: int) -> int:
    if text is None or text == "":
        return 0
    if text not in ("0", "1", "2"):
        raise bad_request(f"qos must be 0, 1 or 2, not {text!r}")
    return min(int(text), maximum)


def _flag(text: str | None, name: str) -> bool:
    lowered = (text or "false").lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise bad_request(f"{name} must be true or false, not {text!r}")


def _expiry(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or int(text) > 0xFFFFFFFF:
        raise bad_request(f"expiry must be 0..4294967295 seconds, not {text!r}")
    return int(text)


def _client_id(text: str | None) -> str | None:
    if text is None:
        return None
    if not text or "\x00" in text or len(text.encode("utf-8")) > MAX_STRING_LENGTH:
        raise bad_request(f"client identifier {text!r} is not valid")
    return text


def topic_of(request: m.CoapMessage) -> str:
    """The topic or filter a ``/ps/...`` request names (CoapError for another path)."""
    path = request.strings(opt.URI_PATH)
    if not path or path[0] != PS:
        raise CoapError(m.NOT_FOUND, "no such resource: the broker serves /ps/{topic}")
    topic = "/".join(path[1:])
    if not topic:
        raise bad_request("no topic: use /ps/{topic}")
    return topic


def parse_connection(request: m.CoapMessage) -> PsRequest:
    """A request on ``/mqtt/connection`` (connection mode): its client id (required),
    credentials and token; the action is the method (POST, PUT, DELETE)."""
    params = query(request)
    client_id = _client_id(params.get("clientid"))
    if client_id is None:
        raise bad_request("connection mode needs a clientid")
    if request.code not in (m.POST, m.PUT, m.DELETE):
        raise CoapError(m.METHOD_NOT_ALLOWED, "use POST (connect), PUT (heartbeat) or "
                        "DELETE (disconnect) on /mqtt/connection")
    password = params.get("password")
    return PsRequest(m.code_text(request.code), "", client_id=client_id,
                     username=params.get("username"),
                     password=password.encode("utf-8") if password is not None else None,
                     token=params.get("token"))


def parse_request(request: m.CoapMessage, settings: Any) -> PsRequest:
    """The ``/ps/`` request in ``request`` (its options already checked)."""
    topic = topic_of(request)
    params = query(request)
    method = request.code
    if method in (m.POST, m.PUT):
        action = PUBLISH
    elif method == m.GET:
        observe = request.uint(opt.OBSERVE)
        action = {None: READ, OBSERVE_REGISTER: OBSERVE,
                  OBSERVE_DEREGISTER: FORGET}.get(observe, READ)  # type: ignore[arg-type]
    elif method == m.DELETE:
        action = DELETE
    else:
        raise CoapError(m.METHOD_NOT_ALLOWED, f"{m.code_text(method)} is not allowed on "
                        "/ps/: use GET, POST, PUT or DELETE")
    try:
        if action == PUBLISH:
            validate_topic_name(topic)
        else:
            validate_topic_filter(topic)
    except MQTTError as e:
        raise bad_request(e.message) from None
    if action == READ and topic.startswith(SHARE_PREFIX):
        raise bad_request("a shared subscription filter matches no retained messages")
    retain = _flag(params.get("retain"), "retain")
    if retain and action == PUBLISH and not settings.retain_available:
        raise bad_request("retained messages are not supported")
    password = params.get("password")
    return PsRequest(action, topic, _qos(params.get("qos"), settings.maximum_qos), retain,
                     _expiry(params.get("expiry")), _client_id(params.get("clientid")),
                     params.get("username"),
                     password.encode("utf-8") if password is not None else None,
                     params.get("token"))


def publish_message(ps: PsRequest, request: m.CoapMessage) -> Message:
    """The broker message a POST/PUT publishes: its payload, the query's QoS, retain
    and expiry, and its Content-Format as an MQTT 5 Content Type."""
    props: dict[int, Any] = {}
    if ps.expiry is not None:
        props[PropertyId.MESSAGE_EXPIRY_INTERVAL] = ps.expiry
    content_format = request.uint(opt.CONTENT_FORMAT)
    if content_format is not None:
        media = opt.CONTENT_FORMATS.get(content_format)
        if media is not None:
            props[PropertyId.CONTENT_TYPE] = media
        if content_format == 0:
            props[PropertyId.PAYLOAD_FORMAT_INDICATOR] = 1
    return Message(ps.topic, request.payload, ps.qos, ps.retain, None, props)


def notification_options(message: Message) -> list[tuple[int, bytes]]:
    """Content-Format for a message whose MQTT 5 Content Type has a CoAP number."""
    media = message.properties.get(PropertyId.CONTENT_TYPE) if message.properties else None
    number = opt.FORMAT_OF_TYPE.get(media) if media is not None else None
    return [] if number is None else [(opt.CONTENT_FORMAT, opt.encode_uint(number))]


def is_wildcard(topic_filter: str) -> bool:
    """True if ``topic_filter`` can match more than one topic (``+`` or ``#``)."""
    return "+" in topic_filter or "#" in topic_filter


def topic_options(topic: str) -> list[tuple[int, bytes]]:
    """The topic a notification's message was published on, for an observer of a
    wildcard filter: Location-Path options ``ps``, then each topic level, i.e. the
    relative URI ``/ps/{topic}`` of the resource the message belongs to (an elective
    option: a client that does not look for it ignores it).  Empty when a level is
    longer than an option may be (255 bytes)."""
    levels = [level.encode("utf-8") for level in topic.split("/")]
    if any(len(level) > 255 for level in levels):
        return []
    return [(opt.LOCATION_PATH, PS.encode("ascii")),
            *((opt.LOCATION_PATH, level) for level in levels)]


def reply(request: m.CoapMessage, code: int, payload: bytes = b"",
          options: list[tuple[int, bytes]] | None = None, mid: int = 0) -> m.CoapMessage:
    """The response to ``request``: piggybacked on the ACK of a CON, or a NON (with
    message id ``mid``) to a NON (§5.2)."""
    if request.type == m.CON:
        return m.CoapMessage(m.ACK, code, request.mid, request.token, options or [], payload)
    return m.CoapMessage(m.NON, code, mid, request.token, options or [], payload)


#: RFC 7967 No-Response bits by response class: no interest in 2.xx, 4.xx, 5.xx.
NO_RESPONSE_BITS = {2: 2, 4: 8, 5: 16}


def no_response(value: bytes | None, code: int) -> bool:
    """Whether a request's No-Response option value (RFC 7967) asks that an answer
    of ``code``'s class not be sent (the device publishes and listens to nothing)."""
    if not value:
        return False
    return bool(opt.decode_uint(value) & NO_RESPONSE_BITS.get(code >> 5, 0))


def error_reply(request: m.CoapMessage, error: CoapError, mid: int = 0) -> m.CoapMessage:
    return reply(request, error.code, error.text.encode("utf-8"), error.options, mid)
