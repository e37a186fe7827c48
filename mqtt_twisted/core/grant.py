"""What a SUBSCRIBE may be granted: one answer for MQTT and every other adapter.

MQTT SUBSCRIBE and an adapter's subscribe (HTTP, CoAP) both ask here, so that a filter
refused to an MQTT client (a wildcard or shared subscription the operator switched
off, an invalid filter) is refused to every other client too, with the same code.
"""

from __future__ import annotations

from mqtt_twisted.codec.topics import SharedFilter, validate_topic_filter
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core.limits import topic_refusal
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


def granted_qos(settings: BrokerSettings, requested: int) -> int:
    """The QoS a subscription gets: what was asked, at most the broker's maximum."""
    return min(requested, settings.maximum_qos)
