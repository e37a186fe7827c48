"""Shared subscriptions: ``$share/{group}/{filter}`` [MQTT-4.8.2].

Each message matching a group's filter goes to one member.  The choice is a
strategy, round-robin by default, that prefers members whose client is online
(an offline persistent member queues the message, as Mosquitto and EMQX do).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mqtt_twisted.core.session import Session, SubscriptionOptions
from mqtt_twisted.message import Message


class SharedGroup:
    """The members of one (share name, filter) pair."""

    __slots__ = ("name", "topic_filter", "members", "cursor")

    def __init__(self, name: str, topic_filter: str) -> None:
        self.name = name
        self.topic_filter = topic_filter
        self.members: dict[str, SubscriptionOptions] = {}
        self.cursor = 0

    @property
    def key(self) -> str:
        return f"$share/{self.name}/{self.topic_filter}"


#: A strategy picks the member to receive ``message``; None when nobody can.
Strategy = Callable[[SharedGroup, Message, Mapping[str, Session]], str | None]


def round_robin(group: SharedGroup, message: Message,
                sessions: Mapping[str, Session]) -> str | None:
    """The next member in turn whose client is online, else the next member at all."""
    members = list(group.members)
    count = len(members)
    if not count:
        return None
    start = group.cursor % count
    for i in range(count):
        client_id = members[(start + i) % count]
        session = sessions.get(client_id)
        if session is not None and session.connection is not None:
            group.cursor = start + i + 1
            return client_id
    group.cursor = start + 1
    return members[start]


def random_choice(group: SharedGroup, message: Message,
                  sessions: Mapping[str, Session]) -> str | None:
    """A random online member (or any member if none is online)."""
    import random

    online = [c for c in group.members
              if (s := sessions.get(c)) is not None and s.connection is not None]
    pool = online or list(group.members)
    return random.choice(pool) if pool else None


STRATEGIES: dict[str, Any] = {"round-robin": round_robin, "random": random_choice}
