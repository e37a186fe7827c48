"""What the log says about clients: connects, disconnects and why, refusals, takeovers,
authentication failures (docs/logging.md lists every event and its fields).

One line per event, at info for MQTT clients (TCP, TLS, WebSocket, ``auto=``), with
structured fields (``client_id``, ``peer``, ``adapter``, ...) and an ``action`` a log
shipper can select on.  The sessions of other adapters (HTTP streams and polls, CoAP
observers) may open and close once per request: theirs are debug lines, except
authentication failures, which are info lines whatever the adapter.  A password or
token is never a field.  Sans-IO: plain functions over a connection's attributes.
"""

from __future__ import annotations

from time import time
from typing import Any

from twisted.logger import Logger, LogLevel

from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.errors import AuthenticationError, AuthorizationError, MQTTError
from mqtt_twisted.logs import enabled, write_line

log = Logger(namespace="mqtt_twisted.clients")

#: MQTT protocol level -> the version an operator knows.
PROTOCOLS = {3: "3.1", 4: "3.1.1", 5: "5.0"}

#: Why the broker closed a connection, by the reason code it closed it with.
CLOSED_BECAUSE = {
    ReasonCode.SESSION_TAKEN_OVER: "takeover",
    ReasonCode.ADMINISTRATIVE_ACTION: "kicked",
    ReasonCode.SERVER_SHUTTING_DOWN: "server shutdown",
    ReasonCode.KEEP_ALIVE_TIMEOUT: "keepalive timeout",
    ReasonCode.MESSAGE_RATE_TOO_HIGH: "rate limit",
    ReasonCode.NOT_AUTHORIZED: "not authorized",
    ReasonCode.SERVER_BUSY: "store failure",
}


#: Why a client was disconnected during a store outage: a debug line (the store logs
#: the outage once, and its end with the count of failed calls).
STORE_OUTAGE = "store outage"


def _emit(level: LogLevel, fmt: str, **event: Any) -> None:
    """``log.emit(level, fmt, **event)`` without its check that ``level`` is a LogLevel
    (it sorts every level on each call: a sixth of a connect line's cost, py-spy on
    bench/conn_memory.py's cycles); the levels given here are.  The event is the
    same, to the same observers.  (The connect and disconnect lines try
    ``logs.write_line`` first: their line straight to the only observer, ours.)"""
    event.update(log_logger=log, log_level=level, log_namespace=log.namespace,
                 log_source=log.source, log_format=fmt, log_time=time())
    log.observer(event)


def _adapter(conn: Any) -> str:
    return getattr(conn.listener, "adapter", None) or "mqtt"


def _level(conn: Any) -> LogLevel:
    return LogLevel.debug if conn.virtual else LogLevel.info


#: The connect line's format, by (session resumed, user name given).
_CONNECTED = {(resumed, named): "{client_id} connected from {peer} (MQTT {protocol} over "
              "{adapter}, {session} session" + (", resumed" if resumed else "") + ", keep "
              "alive {keep_alive} s" + (", user {user})" if named else ")")
              for resumed in (False, True) for named in (False, True)}


def connected(conn: Any, clean: bool, session_present: bool, keep_alive: int) -> None:
    """A client's CONNECT was accepted (CONNACK sent).  The line is an f-string of the
    format's text (``_CONNECTED``: the same line), its fields made into an event only
    when the line cannot be written directly (``logs.write_line``)."""
    level = LogLevel.debug if conn.virtual else LogLevel.info  # (_level, inline)
    if not enabled(level):  # not built when it would not be written
        return
    user = getattr(conn, "username", None)
    client_id, peer, version = conn.client_id, conn.peer, conn.version
    protocol = PROTOCOLS.get(version) or str(version)
    adapter = getattr(conn.listener, "adapter", None) or "mqtt"  # (_adapter)
    session = "clean" if clean else "persistent"
    if write_line(log, level, f"{client_id} connected from {peer} (MQTT {protocol} over "
                  f"{adapter}, {session} session{', resumed' if session_present else ''}"
                  f", keep alive {keep_alive} s{')' if user is None else f', user {user})'}"):
        return
    _emit(level, _CONNECTED[bool(session_present), user is not None], action="connect",
          client_id=client_id, peer=peer, protocol=protocol, adapter=adapter, clean=clean,
          session=session, session_present=session_present, keep_alive=keep_alive,
          user=user)


def closing(conn: Any, reason_code: int | None, detail: str | None = None,
            why: str | None = None) -> None:
    """Note why ``conn`` is about to close, for its disconnect line (the first reason
    given wins): ``why`` (else what the broker's ``reason_code`` means) and a detail."""
    if getattr(conn, "ended", True) is not None:
        return
    if why is None:
        why = CLOSED_BECAUSE.get(reason_code)  # type: ignore[call-overload]
        if why is None:
            why = _code_name(reason_code) if reason_code is not None else "closed by the broker"
    conn.ended = (why, reason_code, detail)


def client_disconnect(conn: Any, reason_code: int) -> None:
    """The client sent DISCONNECT (``reason_code`` 0: normal, 0x04: with its will)."""
    if reason_code == 0:
        conn.ended = ("normal", None, None)
    else:
        conn.ended = ("client DISCONNECT", reason_code, _code_name(reason_code))


def lost(conn: Any, reason: Any) -> None:
    """The transport went without a word from either side."""
    if getattr(conn, "ended", True) is None:
        text = reason.getErrorMessage() if hasattr(reason, "getErrorMessage") else None
        conn.ended = ("connection lost", None, text)


def disconnected(conn: Any) -> None:
    """A connected client's connection ended (logged once: the broker calls this when
    it detaches the connection from its session).  An f-string of the format, as the
    connect line's."""
    reason, code, detail = getattr(conn, "ended", None) or ("closed", None, None)
    level = LogLevel.debug if reason == STORE_OUTAGE or conn.virtual else LogLevel.info
    if not enabled(level):
        return
    client_id, peer = conn.client_id, conn.peer
    reason_code = None if code is None else int(code)
    text = f"{client_id} from {peer} disconnected: {reason}"
    if reason_code is not None:
        text += f" (0x{reason_code:02X})"
    if detail:
        text += f": {detail}"
    if write_line(log, level, text):
        return
    fmt = "{client_id} from {peer} disconnected: {reason}"
    if code is not None:
        fmt += " (0x{reason_code:02X})"
    if detail:
        fmt += ": {detail}"
    _emit(level, fmt, action="disconnect", client_id=client_id, peer=peer,
          adapter=getattr(conn.listener, "adapter", None) or "mqtt", reason=reason,
          reason_code=reason_code, detail=detail)


def refused(conn: Any, error: MQTTError) -> None:
    """A CONNECT (or an adapter's session) was refused with ``error``."""
    code = int(error.reason_code) if getattr(error, "reason_code", None) is not None else None
    user = getattr(conn, "username", None)
    auth = isinstance(error, (AuthenticationError, AuthorizationError))
    if auth:
        fmt = "Authentication failed for {client_id} from {peer} (user {user!r}): {why}"
    else:
        fmt = "Refused CONNECT of {client_id} from {peer}: {why}"
    if code is not None:
        fmt += " (0x{reason_code:02X})"
    log.emit(LogLevel.info if auth else _level(conn), fmt,
             action="auth_failure" if auth else "refuse", client_id=conn.client_id or "?",
             peer=conn.peer, adapter=_adapter(conn), user=user, reason_code=code,
             why=error.message or type(error).__name__)


def auth_failed(credentials: Any, error: Exception) -> None:
    """An adapter's request failed authentication (``Gateway.authenticate``; the
    password is never logged)."""
    code = getattr(error, "reason_code", None)
    log.info("Authentication failed for {client_id} from {peer} (user {user!r}): {why}"
             + (" (0x{reason_code:02X})" if code is not None else ""),
             action="auth_failure", client_id=getattr(credentials, "clientId", None) or "?",
             peer=getattr(credentials, "peer", "") or "", user=getattr(credentials,
                                                                       "username", None),
             adapter=getattr(credentials, "adapter", None) or "?",
             reason_code=None if code is None else int(code),
             why=getattr(error, "message", None) or str(error) or type(error).__name__)


def takeover(old: Any, new: Any) -> None:
    """A CONNECT took the client id of a connected client [MQTT-3.1.4-3]."""
    if not enabled(_level(new)):
        return
    log.emit(_level(new), "{client_id} connected again from {peer}; closing its connection "
             "from {old_peer}", action="takeover", client_id=new.client_id, peer=new.peer,
             old_peer=old.peer, adapter=_adapter(new), old_adapter=_adapter(old))


# --- debug: one line per packet, built only when debug lines are written -------------------


def received_publish(conn: Any, packet: Any, topic: str) -> None:
    """A PUBLISH from a client (as Mosquitto's debug log: flags, topic, size)."""
    log.debug("Received PUBLISH from {client_id} (q{qos}, r{retain:d}, d{dup:d}, m{packet_id}, "
              "{topic!r}, {size} bytes)", action="publish", client_id=conn.client_id,
              qos=packet.qos, retain=packet.retain, dup=packet.dup,
              packet_id=packet.packet_id or 0, topic=topic, size=len(packet.payload))


def received_subscribe(conn: Any, filters: list[str], unsubscribe: bool = False) -> None:
    """A SUBSCRIBE or UNSUBSCRIBE from a client: its topic filters."""
    log.debug("Received {packet} from {client_id}: {filters}", action=(
        "unsubscribe" if unsubscribe else "subscribe"), client_id=conn.client_id,
        packet="UNSUBSCRIBE" if unsubscribe else "SUBSCRIBE", filters=filters)


def _code_name(code: int) -> str:
    try:
        return ReasonCode(code).name.lower().replace("_", " ")
    except ValueError:
        return f"reason 0x{code:02X}"
