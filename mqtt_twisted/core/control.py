"""SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT and AUTH from a client (sans-IO).

Handlers as functions of the connection, which the packet table in
``connection.py`` calls.  What a SUBSCRIBE is granted is ``core.grant``'s answer,
the same for every adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mqtt_twisted.codec import (
    Auth,
    Disconnect,
    PingResp,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    encode,
)
from mqtt_twisted.codec.topics import validate_topic_filter
from mqtt_twisted.constants import PropertyId, ReasonCode
from mqtt_twisted.core import clientlog, inbound
from mqtt_twisted.core._async import gather
from mqtt_twisted.core.grant import check_filters
from mqtt_twisted.core.states import CONNECTED
from mqtt_twisted.errors import InvalidTopicFilter, ProtocolError
from mqtt_twisted.logs import debugging
from mqtt_twisted.records import SubscriptionOptions

if TYPE_CHECKING:
    from mqtt_twisted.core.connection import MQTTConnection

_P = PropertyId
_PINGRESP = encode(PingResp())


def on_subscribe(conn: MQTTConnection, packet: Subscribe) -> None:
    if conn.version == 5 and packet.packet_id in conn.session.inboundQoS2:  # type: ignore[union-attr]
        codes = [ReasonCode.PACKET_IDENTIFIER_IN_USE] * len(packet.subscriptions)
        conn.send(SubAck(packet.packet_id, codes))
        return
    if debugging():
        clientlog.received_subscribe(conn, [s.topic_filter for s in packet.subscriptions])
    broker = conn.broker
    if broker.authorizer is None:
        subscribe_authorized(conn, packet, None)
        return
    answers = [broker.may_subscribe(conn.session, s.topic_filter)  # type: ignore[arg-type]
               for s in packet.subscriptions]
    if any(hasattr(a, "addCallbacks") for a in answers):
        inbound.wait_for(conn, gather(answers), lambda oks: subscribe_authorized(conn, packet, oks))
    else:
        subscribe_authorized(conn, packet, answers)


def subscribe_authorized(conn: MQTTConnection, packet: Subscribe, allowed: list[Any] | None) -> None:
    # A persistent session's subscriptions are stored before SUBACK.
    (codes, granted), writes = conn.broker.writes_of(subscribe, conn, packet, allowed)
    if granted:
        inbound.reply(conn, SubAck(packet.packet_id, codes), writes,
                      lambda: conn.broker.send_retained_many(conn.session, granted))
    else:
        inbound.reply(conn, SubAck(packet.packet_id, codes), writes)


def subscribe(conn: MQTTConnection, packet: Subscribe,
               allowed: list[Any] | None) -> tuple[list[int], list[Any]]:
    """Grant what the SUBSCRIBE asks for (``allowed``: the authorizer's answers, or
    None for no authorizer); return the SUBACK codes and the granted filters.

    One pass over the packet (:func:`grant`, compiled where built), then one change to
    the index, the session and the store: a SUBSCRIBE of 100 filters costs per packet
    what one of one filter does, plus a loop turn per filter."""
    session = conn.session
    broker = conn.broker
    v5 = conn.version == 5
    sub_id = packet.properties.get(_P.SUBSCRIPTION_IDENTIFIER) if v5 else None
    settings = broker.settings
    subs = packet.subscriptions
    checks = check_filters(settings, _topic_filters(subs), sub_id, broker.stats)
    codes, added, granted = _grant(
        subs, checks, allowed, session.subscriptions,  # type: ignore[union-attr]
        settings.max_subscriptions, settings.maximum_qos, v5, sub_id, broker.stats.limit_hit)
    if added:
        broker.subscribe_many(session, added)  # type: ignore[arg-type]
    return codes, granted


def grant(subs: list[Subscription], checks: list[tuple[int, Any]],
          allowed: list[Any] | None, held: Mapping[str, SubscriptionOptions], limit: int,
          maximum_qos: int, v5: bool, sub_id: int | None,
          limit_hit: Callable[[str], None],
          ) -> tuple[list[int], dict[str, SubscriptionOptions],
                     list[tuple[str, SubscriptionOptions, bool]]]:
    """The loop over one SUBSCRIBE's filters: ``(SUBACK codes, {filter: options}
    to add in order, [(plain filter, options, is new)] granted)``.  ``checks`` are
    ``grant.check_filters``' answers, ``allowed`` the authorizer's (None: no
    authorizer), ``held`` the session's subscriptions, ``limit`` the subscriptions a
    session may hold (0: no limit; a replacement always passes).  The specification of
    its compiled twin (core/_subscribe.pyx)."""
    codes: list[int] = []
    granted: list[tuple[str, SubscriptionOptions, bool]] = []
    added: dict[str, SubscriptionOptions] = {}
    fresh = 0  # filters of ``added`` that the session does not hold
    # One options record per distinct (QoS, no local, retain as published, retain
    # handling) in the packet, shared by its subscriptions (nothing changes a record):
    # no __init__ call per filter, and 72 bytes less per subscription.
    records: dict[tuple[int, bool, bool, int], SubscriptionOptions] = {}
    for i, sub in enumerate(subs):
        refusal, shared = checks[i]
        topic_filter = sub.topic_filter
        if shared is not None and v5 and sub.no_local:
            raise ProtocolError("no local on a shared subscription")  # [MQTT-3.8.3-4]
        if refusal:
            codes.append(refusal if v5 else 0x80)
            continue
        if allowed is not None and not allowed[i]:
            codes.append(ReasonCode.NOT_AUTHORIZED if v5 else 0x80)
            continue
        is_new = topic_filter not in held and topic_filter not in added
        if is_new:
            # Replacing a subscription it holds is always allowed.
            if limit and len(held) + fresh >= limit:
                limit_hit("subscriptions")
                codes.append(ReasonCode.QUOTA_EXCEEDED if v5 else 0x80)
                continue
            fresh += 1
        qos = sub.qos if sub.qos < maximum_qos else maximum_qos
        key = (qos, sub.no_local, sub.retain_as_published, sub.retain_handling)
        options = records.get(key)
        if options is None:
            options = records[key] = SubscriptionOptions(*key, sub_id)
        added[topic_filter] = options
        codes.append(qos)
        if shared is None:
            granted.append((topic_filter, options, is_new))
    return codes, added, granted


def topic_filters(subs: list[Subscription]) -> list[str]:
    """The filters of a SUBSCRIBE's subscriptions, in order."""
    return [s.topic_filter for s in subs]


#: :func:`grant` and :func:`topic_filters`, or their compiled twins (core/_compiled.py
#: binds them).
_grant = grant
_topic_filters = topic_filters


def on_unsubscribe(conn: MQTTConnection, packet: Unsubscribe) -> None:
    session = conn.session
    if conn.version == 5 and packet.packet_id in session.inboundQoS2:  # type: ignore[union-attr]
        conn.send(UnsubAck(packet.packet_id, [ReasonCode.PACKET_IDENTIFIER_IN_USE]
                           * len(packet.topic_filters)))
        return
    if debugging():
        clientlog.received_subscribe(conn, list(packet.topic_filters), unsubscribe=True)
    codes = []
    for topic_filter in packet.topic_filters:
        try:
            validate_topic_filter(topic_filter)
        except InvalidTopicFilter:
            codes.append(ReasonCode.TOPIC_FILTER_INVALID)
            continue
        existed = conn.broker.unsubscribe(session, topic_filter)  # type: ignore[arg-type]
        codes.append(0 if existed else ReasonCode.NO_SUBSCRIPTION_EXISTED)
    conn.send(UnsubAck(packet.packet_id, codes if conn.version == 5 else []))


def on_pingreq(conn: MQTTConnection, packet: Any) -> None:
    conn.transport.write(_PINGRESP)


def on_disconnect(conn: MQTTConnection, packet: Disconnect) -> None:
    session = conn.session
    if conn.version == 5:
        expiry = packet.properties.get(_P.SESSION_EXPIRY_INTERVAL)
        if expiry is not None:
            if session.expiryInterval == 0 and expiry:  # type: ignore[union-attr]
                raise ProtocolError("session expiry changed from 0 on DISCONNECT")
            conn.broker.set_session_expiry(session, expiry)  # type: ignore[arg-type]
    # [MQTT-3.14.4-3] only a normal DISCONNECT (0x00) deletes the will; v5's 0x04 and
    # error codes keep it.
    conn.clean_exit = packet.reason_code == 0
    clientlog.client_disconnect(conn, packet.reason_code)
    conn._shut()


def on_auth(conn: MQTTConnection, packet: Auth) -> None:
    """Enhanced authentication: continue a CONNECT's exchange, or re-authenticate."""
    method = packet.properties.get(_P.AUTHENTICATION_METHOD)
    if conn.auth_method is None or method != conn.auth_method:
        raise ProtocolError("AUTH with no or another authentication method")  # [MQTT-4.12.0-5]
    data = packet.properties.get(_P.AUTHENTICATION_DATA)
    code = packet.reason_code
    if code == ReasonCode.CONTINUE_AUTHENTICATION and conn.auth_pending is not None:
        conn.broker.auth_continue(conn, data)
    elif code == ReasonCode.RE_AUTHENTICATE and conn.state == CONNECTED \
            and conn.auth_pending is None:
        conn.broker.reauthenticate(conn, data)
    else:
        raise ProtocolError("unexpected AUTH")  # [MQTT-4.12.0-2]
