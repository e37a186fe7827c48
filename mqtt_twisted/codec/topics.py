"""Topic name and topic filter rules [MQTT-4.7]."""

from __future__ import annotations

from typing import NamedTuple

from mqtt_twisted.constants import MAX_STRING_LENGTH
from mqtt_twisted.errors import InvalidTopicFilter, InvalidTopicName

SHARE_PREFIX = "$share/"


def is_reserved_topic(topic: str) -> bool:
    """Whether clients may not publish to ``topic``: the broker's own ``$SYS`` tree
    (MQTT 5 §4.7.2: ``$`` topics are for the server's use) and ``$share/...``, which
    names subscriptions, not messages.  Mosquitto refuses the same two."""
    return topic.startswith(("$SYS/", SHARE_PREFIX)) or topic in ("$SYS", "$share")


class SharedFilter(NamedTuple):
    """A ``$share/{group}/{filter}`` subscription split into its parts."""

    group: str
    topic_filter: str


def validate_topic_name(topic: str) -> None:
    """Raise :class:`InvalidTopicName` unless ``topic`` may be published to.

    Non-empty [MQTT-4.7.3-1], no wildcards [MQTT-3.3.2-2], no U+0000, at most
    65,535 bytes.
    """
    if not topic:
        raise InvalidTopicName("topic name is empty")
    if "+" in topic or "#" in topic:
        raise InvalidTopicName(f"topic name holds a wildcard: {topic!r}")
    if "\x00" in topic:
        raise InvalidTopicName("topic name contains U+0000")
    if len(topic) * 4 > MAX_STRING_LENGTH and len(topic.encode("utf-8")) > MAX_STRING_LENGTH:
        raise InvalidTopicName("topic name longer than 65,535 bytes")


def _validate_plain_filter(topic_filter: str) -> None:
    if not topic_filter:
        raise InvalidTopicFilter("topic filter is empty")
    if "\x00" in topic_filter:
        raise InvalidTopicFilter("topic filter contains U+0000")
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            # [MQTT-4.7.1-2] '#' stands alone and last.
            raise InvalidTopicFilter(f"'#' must be the whole last level: {topic_filter!r}")
        if "+" in level and level != "+":
            # [MQTT-4.7.1-3] '+' fills a whole level.
            raise InvalidTopicFilter(f"'+' must fill a whole level: {topic_filter!r}")


def parse_shared_filter(topic_filter: str) -> SharedFilter | None:
    """Split a shared subscription filter; None when ``topic_filter`` is not shared.

    Raises :class:`InvalidTopicFilter` for a malformed one [MQTT-4.8.2-1..2].
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None
    group, sep, rest = topic_filter[len(SHARE_PREFIX):].partition("/")
    if not group or "+" in group or "#" in group:
        raise InvalidTopicFilter(f"bad share name in {topic_filter!r}")
    if not sep or not rest:
        raise InvalidTopicFilter(f"shared subscription without a filter: {topic_filter!r}")
    _validate_plain_filter(rest)
    return SharedFilter(group, rest)


def validate_topic_filter(topic_filter: str) -> SharedFilter | None:
    """Raise :class:`InvalidTopicFilter` unless ``topic_filter`` is valid.

    Returns the parsed parts when it is a shared subscription, else None.
    """
    shared = parse_shared_filter(topic_filter)
    if shared is None:
        _validate_plain_filter(topic_filter)
    if len(topic_filter) * 4 > MAX_STRING_LENGTH and (
        len(topic_filter.encode("utf-8")) > MAX_STRING_LENGTH
    ):
        raise InvalidTopicFilter("topic filter longer than 65,535 bytes")
    return shared


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` (a reference, not the router).

    Topics starting with '$' are not matched by a filter starting with a
    wildcard [MQTT-4.7.2-1].
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)
