"""Bridge topic rules in Mosquitto's form: ``PATTERN [in|out|both [QOS [LOCAL REMOTE]]]``.

Sans-IO: a rule line in, a :class:`TopicRule` out (or a ``ValueError`` saying what is
wrong), and the topic arithmetic of Mosquitto's ``topic`` line: the local topic is
``LOCAL_PREFIX + PATTERN``, the remote one ``REMOTE_PREFIX + PATTERN``; a message
crossing the bridge has the one prefix replaced by the other.  An empty pattern
(``""``) with prefixes bridges exactly one topic, as in ``mosquitto.conf(5)``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from mqtt_twisted.codec import topic_matches, validate_topic_filter, validate_topic_name
from mqtt_twisted.errors import MQTTError

__all__ = ["DIRECTIONS", "TopicRule", "parse_topic_rule"]

DIRECTIONS = ("out", "in", "both")


@dataclass(frozen=True, slots=True)
class TopicRule:
    """One ``topic`` line of a bridge."""

    pattern: str
    direction: str = "out"
    qos: int = 0
    local_prefix: str = ""
    remote_prefix: str = ""

    @property
    def outgoing(self) -> bool:
        return self.direction in ("out", "both")

    @property
    def incoming(self) -> bool:
        return self.direction in ("in", "both")

    @property
    def local_filter(self) -> str:
        """What the bridge subscribes to in the local broker (direction out)."""
        return self.local_prefix + self.pattern

    @property
    def remote_filter(self) -> str:
        """What the bridge subscribes to on the remote broker (direction in)."""
        return self.remote_prefix + self.pattern

    def to_remote(self, topic: str) -> str | None:
        """The remote topic of local ``topic``, or None if this rule does not carry it."""
        if not self.outgoing or not topic_matches(self.local_filter, topic):
            return None
        return self.remote_prefix + topic[len(self.local_prefix):]

    def to_local(self, topic: str) -> str | None:
        """The local topic of remote ``topic``, or None if this rule does not carry it."""
        if not self.incoming or not topic_matches(self.remote_filter, topic):
            return None
        return self.local_prefix + topic[len(self.remote_prefix):]

    def describe(self) -> str:
        fields = [self.pattern or '""', self.direction, str(self.qos)]
        if self.local_prefix or self.remote_prefix:
            fields += [self.local_prefix or '""', self.remote_prefix or '""']
        return " ".join(fields)


def parse_topic_rule(line: str) -> TopicRule:
    """Parse ``PATTERN [in|out|both [QOS [LOCAL_PREFIX [REMOTE_PREFIX]]]]``; a field may
    be quoted (``""`` is empty).  Raises ``ValueError`` naming the mistake."""
    try:
        fields = shlex.split(line)
    except ValueError as e:
        raise ValueError(f"{line!r}: {e}") from None
    if not fields:
        raise ValueError("empty topic rule: expected PATTERN [in|out|both [QOS "
                         "[LOCAL_PREFIX REMOTE_PREFIX]]]")
    if len(fields) > 5:
        raise ValueError(f"{line!r}: {len(fields)} fields, at most 5: PATTERN in|out|both "
                         f"QOS LOCAL_PREFIX REMOTE_PREFIX")
    defaults = ["", "out", "0", "", ""]
    pattern, direction, qos_text, local, remote = fields + defaults[len(fields):]
    if direction not in DIRECTIONS:
        raise ValueError(f"{line!r}: direction {direction!r} must be in, out or both")
    if qos_text not in ("0", "1", "2"):
        raise ValueError(f"{line!r}: QoS {qos_text!r} must be 0, 1 or 2")
    for name, prefix in (("local prefix", local), ("remote prefix", remote)):
        if "+" in prefix or "#" in prefix:
            raise ValueError(f"{line!r}: the {name} {prefix!r} may not hold wildcards")
    rule = TopicRule(pattern, direction, int(qos_text), local, remote)
    for side, topic in (("local", rule.local_filter), ("remote", rule.remote_filter)):
        if not topic:
            raise ValueError(f"{line!r}: an empty pattern needs a {side} prefix (the "
                             f"topic it bridges)")
        try:
            (validate_topic_filter if pattern else validate_topic_name)(topic)
        except MQTTError as e:
            raise ValueError(f"{line!r}: {side} topic {topic!r}: {e}") from None
    return rule
