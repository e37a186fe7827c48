"""Limits on what one client may make the broker hold: topic depth and length, its
subscriptions, the retained messages and the sessions of everyone (docs/limits.md).

The protocol allows 65,535-level topics and as many subscriptions and retained
messages as memory lasts; every level is a node in the topic tree or the retained
index (about 240 bytes each, measured), so a few hundred deep topics cost gigabytes.
These checks run where such things enter the broker, for MQTT and every adapter
alike.  A short topic (the usual case) costs one length compare on the PUBLISH path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mqtt_twisted.constants import PropertyId
from mqtt_twisted.core.settings import BrokerSettings

if TYPE_CHECKING:
    from mqtt_twisted.codec.packets import Connect
    from mqtt_twisted.message import Message

#: What one level of a retained topic costs in the index, in bytes (measured with
#: tracemalloc: a dict entry and a node with slots); counted against the retained bytes.
LEVEL_COST = 256


def short_topic(settings: BrokerSettings) -> int:
    """Topics up to this many characters are within both limits without looking at
    them: a topic of n characters has at most n + 1 levels and 4n UTF-8 bytes."""
    return max(0, min(settings.max_topic_levels - 1, settings.max_topic_length // 4))


def topic_refusal(settings: BrokerSettings, topic: str) -> str | None:
    """Why ``topic`` (a topic name or filter) is over the limits, or None."""
    levels = topic.count("/") + 1
    if levels > settings.max_topic_levels:
        return f"{levels} topic levels (at most {settings.max_topic_levels})"
    if len(topic) * 4 > settings.max_topic_length:
        size = len(topic.encode("utf-8"))
        if size > settings.max_topic_length:
            return f"topic of {size} bytes (at most {settings.max_topic_length})"
    return None


def over_subscription_quota(settings: BrokerSettings, subscriptions: dict,
                            topic_filter: str) -> bool:
    """Whether a session holding ``subscriptions`` may not add ``topic_filter`` (replacing
    one it has is always allowed)."""
    limit = settings.max_subscriptions  # 0: no limit
    return bool(limit) and len(subscriptions) >= limit and topic_filter not in subscriptions


def outlives_connection(settings: BrokerSettings, packet: Connect, clean: bool) -> bool:
    """Whether the session a CONNECT creates would be kept after its connection ends."""
    cap = settings.max_session_expiry
    if cap == 0:
        return False
    if packet.protocol_level == 5:
        return bool(packet.properties.get(PropertyId.SESSION_EXPIRY_INTERVAL, 0))
    return not clean and settings.persistent_session_expiry != 0


def over_session_quota(settings: BrokerSettings, held: int, packet: Connect,
                       clean: bool) -> bool:
    """Whether a CONNECT may not create a new session while the broker holds ``held``.
    Only sessions that outlive their connection are refused: the others end with it,
    and connections are bounded per listener already."""
    limit = settings.max_sessions  # 0: no limit
    return bool(limit) and held >= limit and outlives_connection(settings, packet, clean)


def retained_cost(topic: str, payload: bytes) -> int:
    """What a retained message is counted at: its bytes and its levels in the index."""
    return len(payload) + len(topic) + LEVEL_COST * (topic.count("/") + 1)


class RetainedQuota:
    """The retained messages set through this broker, in number and bytes, in all and
    per client (issue 14: one client must not be able to take the whole quota and
    leave every other client refused).

    A refused message is not retained (nor routed: the publisher is told, v5 0x97).
    What a store already held at start-up is not counted: the quota bounds what
    clients can add while the broker runs.  A retained message counts to the client
    that set it last (``Message.sender``), until it is replaced, deleted or expires;
    a client's count outlives its connection, as its messages do.
    """

    __slots__ = ("settings", "sizes", "count", "bytes", "owners", "clients")

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.sizes: dict[str, int] = {}
        self.count = 0
        self.bytes = 0
        #: topic -> the client that set it; client -> [count, bytes] (no entry at 0).
        self.owners: dict[str, str] = {}
        self.clients: dict[str, list[int]] = {}

    def allows(self, topic: str, payload: bytes, client_id: str | None = None) -> bool:
        """Whether retaining ``payload`` on ``topic`` (set by ``client_id``) stays within
        the limits (a deletion, an empty payload, always does)."""
        if not payload:
            return True
        old = self.sizes.get(topic)
        count = self.count + (old is None)
        # retained_cost inline: this runs for every retained PUBLISH.
        cost = len(payload) + len(topic) + LEVEL_COST * (topic.count("/") + 1)
        size = self.bytes - (old or 0) + cost
        settings = self.settings
        max_count = settings.max_retained_messages  # 0: no limit
        max_bytes = settings.max_retained_bytes
        if (max_count and count > max_count) or (max_bytes and size > max_bytes):
            return False
        if client_id is None or not (settings.max_retained_per_client
                                     or settings.max_retained_bytes_per_client):
            return True
        return self._client_allows(topic, client_id, cost)

    def _client_allows(self, topic: str, client_id: str, cost: int) -> bool:
        settings = self.settings
        max_count = settings.max_retained_per_client
        max_bytes = settings.max_retained_bytes_per_client
        used = self.clients.get(client_id)
        if used is None:
            return not max_bytes or cost <= max_bytes
        if self.owners.get(topic) == client_id:  # a replacement of its own
            count = used[0]
            size = used[1] - self.sizes[topic] + cost
        else:
            count = used[0] + 1
            size = used[1] + cost
        return (not max_count or count <= max_count) and (not max_bytes or size <= max_bytes)

    def admit(self, message: Message) -> bool:
        """``allows`` and the counting in one: count ``message`` (or its topic's
        deletion) if it stays within the limits; False (nothing counted) if not."""
        topic = message.topic
        payload = message.payload
        sizes = self.sizes
        old = sizes.get(topic)
        if not payload:
            if old is not None:
                self.forget(topic)
            return True
        size = len(payload) + len(topic) + LEVEL_COST * (topic.count("/") + 1)
        count = self.count + (old is None)
        total = self.bytes - (old or 0) + size
        settings = self.settings
        if ((settings.max_retained_messages and count > settings.max_retained_messages)
                or (settings.max_retained_bytes and total > settings.max_retained_bytes)):
            return False
        sender = message.sender
        if (sender is not None and (settings.max_retained_per_client
                                    or settings.max_retained_bytes_per_client)
                and not self._client_allows(topic, sender, size)):
            return False
        if old is not None:
            self._release(topic, old)
        sizes[topic] = size
        self.count = count
        self.bytes = total
        if sender is not None:
            self.owners[topic] = sender
            used = self.clients.get(sender)
            if used is None:
                self.clients[sender] = [1, size]
            else:
                used[0] += 1
                used[1] += size
        return True

    def forget(self, topic: str) -> None:
        """A retained message went another way (deleted, expired)."""
        old = self.sizes.pop(topic, None)
        if old is not None:
            self.count -= 1
            self.bytes -= old
            self._release(topic, old)

    def _release(self, topic: str, size: int) -> None:
        """``topic``'s message (``size``) no longer counts to the client that set it."""
        owner = self.owners.pop(topic, None)
        if owner is None:
            return
        used = self.clients[owner]
        if used[0] == 1:
            del self.clients[owner]  # nothing kept for a client that holds nothing
        else:
            used[0] -= 1
            used[1] -= size

    def held_by(self, client_id: str) -> tuple[int, int]:
        """(count, bytes) of the retained messages ``client_id`` set that are held."""
        used = self.clients.get(client_id)
        return (used[0], used[1]) if used is not None else (0, 0)
