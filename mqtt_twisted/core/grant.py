"""What a SUBSCRIBE may be granted: one answer for MQTT and every other adapter.

MQTT SUBSCRIBE and an adapter's subscribe (HTTP, CoAP) both ask here, so that a filter
refused to an MQTT client (a wildcard or shared subscription the operator switched
off, an invalid filter) is refused to every other client too, with the same code.
"""

from __future__ import annotations

from mqtt_twisted.codec.topics import SharedFilter, validate_topic_filter
from mqtt_twisted.constants import MAX_STRING_LENGTH, ReasonCode
from mqtt_twisted.core.limits import short_topic, topic_refusal
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.core.stats import BrokerStats
from mqtt_twisted.errors import InvalidTopicFilter


def check_filter(settings: BrokerSettings, topic_filter: str,
                 subscription_id: int | None = None,
                 stats: BrokerStats | None = None) -> tuple[int, SharedFilter | None]:
    """``(code, shared)``: 0 or the MQTT 5 reason code refusing ``topic_filter``, and the
    parts of a ``$share/...`` filter (None for a plain one, or an invalid one).  A
    filter over the topic limits counts in ``stats`` (``limit_hits["topic"]``)."""
    try:
        shared = validate_topic_filter(topic_filter)
    except InvalidTopicFilter:
        return ReasonCode.TOPIC_FILTER_INVALID, None
    if topic_refusal(settings, topic_filter) is not None:  # deeper or longer than allowed
        if stats is not None:
            stats.limit_hit("topic")
        return ReasonCode.TOPIC_FILTER_INVALID, None
    if shared is not None and not settings.shared_subscriptions:
        return ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED, shared
    if subscription_id and not settings.subscription_identifiers:
        return ReasonCode.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED, shared
    if not settings.wildcard_subscriptions and ("+" in topic_filter or "#" in topic_filter):
        return ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED, shared
    return 0, shared


_GRANTED: tuple[int, SharedFilter | None] = (0, None)


def _all_plain(filters: list[str]) -> bool:
    """Whether each of ``filters`` (non-empty) is a valid plain filter: not
    ``$share/``, no U+0000, every '+' a whole level and '#' only the whole last level
    [MQTT-4.7.1-2..3].  A few scans of the filters joined, each filter between slashes
    ("/a/+/#/"): a '+' then stands between two slashes and a '#' between a slash and
    the filter's end; each scan runs in C over the packet's filters at once."""
    text = "/" + "/\n/".join(filters) + "/"
    if (text.count("\n") != len(filters) - 1  # a line feed in a filter: one by one
            or "\x00" in text or text.startswith("/$share/") or "\n/$share/" in text):
        return False
    if "+" in text:
        # Twice: the first pass skips every other one of '+/+/+'.
        text = text.replace("/+/", "//").replace("/+/", "//")
        if "+" in text:
            return False
    if "#" in text:
        text = text.replace("/#/\n", "/\n")
        if text.endswith("/#/"):
            text = text[:-2]
        if "#" in text:
            return False
    return True


def usual_filters(filters: list[str], short: int) -> bool:
    """Whether ``filters`` is not empty and each of them is a valid plain filter
    (:func:`_all_plain`) of 1 to ``short`` characters.  The specification of its
    compiled twin (core/_subscribe.pyx: one scan of each filter's characters, no
    joined copy)."""
    return (bool(filters) and 0 < min(map(len, filters)) and max(map(len, filters)) <= short
            and _all_plain(filters))


#: :func:`usual_filters` or its compiled twin (core/_compiled.py binds it).
_usual_filters = usual_filters


def check_filters(settings: BrokerSettings, filters: list[str],
                  subscription_id: int | None = None,
                  stats: BrokerStats | None = None) -> list[tuple[int, SharedFilter | None]]:
    """:func:`check_filter` for each of ``filters`` (one SUBSCRIBE's).  When every
    filter is the usual one (plain, valid, short enough to be within the topic limits
    without counting, using only features switched on) the packet costs a few string
    scans in all (:func:`_all_plain`); otherwise each filter is checked alone, the
    usual ones by the same scans, the others by :func:`check_filter`, whose answer
    this is."""
    short = min(short_topic(settings), MAX_STRING_LENGTH // 4)
    fast = settings.wildcard_subscriptions and (
        not subscription_id or settings.subscription_identifiers)
    if not fast or not filters:
        return [check_filter(settings, f, subscription_id, stats) for f in filters]
    usual = _usual_filters
    if usual(filters, short):
        return [_GRANTED] * len(filters)
    return [_GRANTED if usual([f], short) else check_filter(settings, f, subscription_id, stats)
            for f in filters]


def granted_qos(settings: BrokerSettings, requested: int) -> int:
    """The QoS a subscription gets: what was asked, at most the broker's maximum."""
    return min(requested, settings.maximum_qos)
