"""``sub -F FORMAT``: mosquitto_sub's output format, compiled once and applied per message.

``%`` fields (``%t`` topic, ``%p`` payload, ``%j`` JSON...), ``@`` fields (strftime of the
time of receipt, ``@@`` is ``@``) and backslash escapes (``\\n``, ``\\t``...), with
mosquitto_sub 2.0's letters and JSON layout, so scripts written for it read the same
output.  A letter mosquitto does not know is a usage error when the format is read,
not a surprise on the first message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from mqtt_twisted.cli._options import UsageError
from mqtt_twisted.constants import PropertyId as P

__all__ = ["compile_format", "default_output"]

Field = Callable[[Any, float], bytes]

BACKSLASH = "\\"
_ESCAPES = {"\\": b"\\", "0": b"\0", "a": b"\a", "e": b"\x1b", "n": b"\n", "r": b"\r",
            "t": b"\t", "v": b"\v"}


def _text(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, list):
        return b" ".join(_text(v) for v in value)
    return str(value).encode()


def _prop(pid: int) -> Field:
    return lambda m, now: _text(m.publish.properties.get(pid))


def _user_properties(m: Any, now: float) -> bytes:
    pairs = m.publish.properties.get(P.USER_PROPERTY) or []
    return " ".join(f"{k}:{v}" for k, v in pairs).encode()


def _iso(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))


def _unix(now: float) -> bytes:
    ns = int(now * 1e9)
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}".encode()


#: JSON names of the v5 properties, as mosquitto_sub writes them.
_JSON_PROPERTIES = {
    P.PAYLOAD_FORMAT_INDICATOR: "payload-format-indicator",
    P.MESSAGE_EXPIRY_INTERVAL: "message-expiry-interval",
    P.CONTENT_TYPE: "content-type",
    P.RESPONSE_TOPIC: "response-topic",
    P.CORRELATION_DATA: "correlation-data",
    P.SUBSCRIPTION_IDENTIFIER: "subscription-identifier",
    P.TOPIC_ALIAS: "topic-alias",
}


def to_json(message: Any, now: float, payload_as_json: bool) -> bytes:
    """mosquitto_sub's ``%j`` (payload as a string) and ``%J`` (payload as JSON)."""
    publish = message.publish
    us = int(now * 1e6) % 1_000_000
    local = time.localtime(now)
    tst = (time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{us:06d}Z"
           + time.strftime("%z", local))
    out: dict[str, Any] = {"tst": tst, "topic": message.topic, "qos": publish.qos,
                           "retain": int(publish.retain), "payloadlen": len(message.payload)}
    if publish.qos and publish.packet_id is not None:
        out["mid"] = publish.packet_id
    props: dict[str, Any] = {}
    for pid, value in publish.properties.items():
        if pid == P.USER_PROPERTY:
            props["user-properties"] = {k: v for k, v in value}
        elif pid in _JSON_PROPERTIES:
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            elif isinstance(value, list) and len(value) == 1:
                value = value[0]
            props[_JSON_PROPERTIES[P(pid)]] = value
    if props:
        out["properties"] = props
    payload: Any = message.payload.decode("utf-8", "replace") if message.payload else None
    if payload_as_json and message.payload:
        try:
            payload = json.loads(message.payload)
        except ValueError:
            raise ValueError(
                f"Message payload is not valid JSON on topic {message.topic}") from None
    out["payload"] = payload
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()


_FIELDS: dict[str, Field] = {
    "%": lambda m, now: b"%",
    "A": _prop(P.TOPIC_ALIAS),
    "C": _prop(P.CONTENT_TYPE),
    "D": _prop(P.CORRELATION_DATA),
    "E": _prop(P.MESSAGE_EXPIRY_INTERVAL),
    "F": _prop(P.PAYLOAD_FORMAT_INDICATOR),
    "I": lambda m, now: _iso(now).encode(),
    "j": lambda m, now: to_json(m, now, False),
    "J": lambda m, now: to_json(m, now, True),
    "l": lambda m, now: str(len(m.payload)).encode(),
    "m": lambda m, now: str(m.publish.packet_id or 0).encode(),
    "p": lambda m, now: m.payload,
    "P": _user_properties,
    "q": lambda m, now: str(m.publish.qos).encode(),
    "r": lambda m, now: b"1" if m.publish.retain else b"0",
    "R": _prop(P.RESPONSE_TOPIC),
    "S": _prop(P.SUBSCRIPTION_IDENTIFIER),
    "t": lambda m, now: m.topic.encode(),
    "U": lambda m, now: _unix(now),
    "x": lambda m, now: m.payload.hex().encode(),
    "X": lambda m, now: m.payload.hex().upper().encode(),
}


def _constant(data: bytes) -> Field:
    return lambda m, now: data


def _strftime(letter: str) -> Field:
    return lambda m, now: time.strftime("%" + letter, time.localtime(now)).encode()


def compile_format(fmt: str) -> Callable[[Any, float], bytes]:
    """The formatter of ``fmt``: ``(message, time of receipt) -> bytes`` (no newline)."""
    parts: list[Field] = []
    i = 0
    while i < len(fmt):
        ch = fmt[i]
        nxt = fmt[i + 1] if i + 1 < len(fmt) else ""
        if ch == "%":
            if nxt not in _FIELDS:
                raise UsageError(f"invalid format specifier {'%' + nxt!r}")
            parts.append(_FIELDS[nxt])
            i += 2
        elif ch == "@":
            if not nxt:
                raise UsageError("incomplete format specifier '@' at the end")
            parts.append(_constant(b"@") if nxt == "@" else _strftime(nxt))
            i += 2
        elif ch == "\\":
            if nxt not in _ESCAPES:
                raise UsageError(f"invalid escape specifier {BACKSLASH + nxt!r}")
            parts.append(_constant(_ESCAPES[nxt]))
            i += 2
        else:
            j = i
            while j < len(fmt) and fmt[j] not in "%@\\":
                j += 1
            parts.append(_constant(fmt[i:j].encode()))
            i = j
    return lambda message, now: b"".join(part(message, now) for part in parts)


def default_output(verbose: bool) -> Callable[[Any, float], bytes]:
    """Without -F: the payload, or with -v ``topic payload`` (``(null)`` when empty)."""
    if not verbose:
        return lambda m, now: m.payload
    return lambda m, now: m.topic.encode() + b" " + (m.payload or b"(null)")
