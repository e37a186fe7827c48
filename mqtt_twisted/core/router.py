"""The router: which sessions a published message goes to.

It owns the subscription index (plain filters in one topic tree, ``$share`` groups in
another), merges one client's overlapping subscriptions into one delivery, picks one
member of each share group, and hands every delivery to the broker's ``deliver``.

``dispatch(message, origin)`` is the seam a cluster plugs into: ``origin`` is
:data:`LOCAL` for a message published on this node and the name of the peer it came
from otherwise.  The local router treats both alike; a cluster router wraps it, sends
local messages on to its peers and never sends a peer's message back out.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from zope.interface import implementer

from mqtt_twisted.codec.topics import SHARE_PREFIX, parse_shared_filter
from mqtt_twisted.core.session import Outbound, Session, SubscriptionOptions
from mqtt_twisted.core.shared import SharedGroup, Strategy, round_robin
from mqtt_twisted.core.topic_tree import TopicTree
from mqtt_twisted.interfaces import IRouter
from mqtt_twisted.message import Message

#: The origin of a message published through this node's own clients and adapters.
LOCAL = ""

#: ``deliver(session, message, qos, retain, subscription_ids, group)``
Deliver = Callable[[Session, Message, int, bool, "tuple[int, ...] | None", "str | None"], None]


@implementer(IRouter)
class LocalRouter:
    """Subscriptions of this node's sessions, and the deliveries a topic gets."""

    __slots__ = ("sessions", "deliver", "tree", "shared_tree", "shared_groups",
                 "shared_strategy", "qos0_routes")

    def __init__(self, sessions: Mapping[str, Session], deliver: Deliver) -> None:
        self.sessions = sessions
        self.deliver = deliver
        self.tree: TopicTree[SubscriptionOptions] = TopicTree()
        self.shared_tree: TopicTree[SharedGroup] = TopicTree()
        self.shared_groups: dict[str, SharedGroup] = {}
        self.shared_strategy: Strategy = round_robin
        #: Topic -> its plain QoS 0 receivers, tied to the tree's match (core/qos0.py).
        self.qos0_routes: dict[str, Any] = {}

    # --- the index ----------------------------------------------------------------------

    def add(self, clientId: str, topicFilter: str, options: SubscriptionOptions) -> None:
        """Index a subscription (a shared one joins its group); replaces the old options."""
        if topicFilter.startswith(SHARE_PREFIX):
            name, inner = parse_shared_filter(topicFilter)  # type: ignore[misc]
            group = self.shared_groups.get(topicFilter)
            if group is None:
                group = self.shared_groups[topicFilter] = SharedGroup(name, inner)
                self.shared_tree.add(inner, topicFilter, group)
            group.members[clientId] = options
        else:
            self.tree.add(topicFilter, clientId, options)

    def add_many(self, clientId: str,
                 items: Collection[tuple[str, SubscriptionOptions]]) -> None:
        """:meth:`add` for each ``(filter, options)`` of ``items`` in order (one
        SUBSCRIBE's; a list, or a dict's ``items()``): the plain filters go into the
        tree in one pass, which hands the shared ones back."""
        shared: list[tuple[str, SubscriptionOptions]] = []
        self.tree.add_many(clientId, items, shared)
        for topicFilter, options in shared:
            self.add(clientId, topicFilter, options)

    def remove(self, clientId: str, topicFilter: str) -> None:
        if topicFilter.startswith(SHARE_PREFIX):
            group = self.shared_groups.get(topicFilter)
            if group is not None:
                group.members.pop(clientId, None)
                if not group.members:
                    del self.shared_groups[topicFilter]
                    self.shared_tree.remove(group.topic_filter, topicFilter)
        else:
            self.tree.remove(topicFilter, clientId)

    def count(self) -> int:
        """Subscriptions indexed, shared members included ($SYS subscriptions/count)."""
        return len(self.tree) + sum(len(g.members) for g in self.shared_groups.values())

    # --- matching -----------------------------------------------------------------------

    def match(self, topic: str, sender: str | None = None) -> list[
            tuple[str, int, bool, tuple[int, ...] | None]]:
        """The plain subscriptions ``topic`` reaches, one entry per client: ``(client id,
        highest QoS, retain as published, subscription ids)`` [MQTT-3.3.5-1], without
        ``sender``'s own no-local subscriptions.  Share groups are not in it: each of
        their messages goes to one member, chosen when it is dispatched."""
        merged: dict[str, list[Any]] = {}
        for client_id, options in self.tree.match(topic):
            if options.no_local and client_id == sender:
                continue
            entry = merged.get(client_id)  # type: ignore[call-overload]
            if entry is None:
                merged[client_id] = [options.qos, options.retain_as_published,  # type: ignore[index]
                                     [options.subscription_id] if options.subscription_id
                                     else []]
            else:
                if options.qos > entry[0]:
                    entry[0] = options.qos
                entry[1] = entry[1] or options.retain_as_published
                if options.subscription_id:
                    entry[2].append(options.subscription_id)
        return [(c, q, rap, tuple(ids) if ids else None)
                for c, (q, rap, ids) in merged.items()]

    # --- dispatch -----------------------------------------------------------------------

    def dispatch(self, message: Message, origin: str = LOCAL) -> int:
        """Deliver ``message`` to every matching session; return how many it reached."""
        shared = self._dispatch_shared(message) if self.shared_groups else 0
        tree = self.tree
        matches = tree._cache.get(message.topic)  # (TopicTree.match's cache, no call)
        if matches is None:
            matches = tree.match(message.topic)
        if not matches:
            return shared
        sessions = self.sessions
        deliver = self.deliver
        if len(matches) == 1:  # the common case, without the merge
            client_id, options = matches[0]
            if options.no_local and client_id == message.sender:
                return shared
            deliver(sessions[client_id], message,  # type: ignore[index]
                    options.qos if options.qos < message.qos else message.qos,
                    message.retain and options.retain_as_published,
                    (options.subscription_id,) if options.subscription_id else None, None)
            return shared + 1
        deliveries = self.match(message.topic, message.sender)
        for client_id, qos, rap, sub_ids in deliveries:
            deliver(sessions[client_id], message, qos if qos < message.qos else message.qos,
                    message.retain and rap, sub_ids, None)
        return shared + len(deliveries)

    def dispatch_plain(self, message: Message) -> int:
        """Deliver ``message`` to the plain subscriptions only (a cluster router gives
        share groups their message itself, once cluster-wide).  ``dispatch`` has the
        same lines inline: it runs for every message (bench/calls_per_message.py)."""
        matches = self.tree.match(message.topic)
        if not matches:
            return 0
        deliveries = self.match(message.topic, message.sender)
        for client_id, qos, rap, sub_ids in deliveries:
            self.deliver(self.sessions[client_id], message,
                         qos if qos < message.qos else message.qos,
                         message.retain and rap, sub_ids, None)
        return len(deliveries)

    def dispatch_shared(self, message: Message) -> int:
        """Only the share groups' part of :meth:`dispatch` (the $SYS publication
        delivers the plain subscriptions itself, by subscriber)."""
        return self._dispatch_shared(message)

    def _dispatch_shared(self, message: Message) -> int:
        """Give ``message`` to one member of each matching share group [MQTT-4.8.2]."""
        delivered = 0
        for key, group in self.shared_tree.match(message.topic):
            delivered += self.deliver_shared(key, group, message)  # type: ignore[arg-type]
        return delivered

    def deliver_shared(self, key: str, group: SharedGroup, message: Message) -> int:
        """Give ``message`` to one member of ``group`` (its key ``key``); 1, or 0 when
        nobody can take it."""
        sessions = self.sessions
        client_id = self.shared_strategy(group, message, sessions)
        if client_id is None:
            return 0
        options = group.members[client_id]
        self.deliver(sessions[client_id], message,
                     options.qos if options.qos < message.qos else message.qos,
                     message.retain and options.retain_as_published,
                     (options.subscription_id,) if options.subscription_id else None, key)
        return 1

    def hand_over(self, out: Outbound, leaving: str) -> None:
        """A departing member's unacknowledged shared message goes to another member."""
        group = self.shared_groups.get(out.group)  # type: ignore[arg-type]
        if group is None:
            return
        others = [c for c in group.members if c != leaving]
        if not others:
            return
        view = SharedGroup(group.name, group.topic_filter)
        view.members = {c: group.members[c] for c in others}
        view.cursor = group.cursor
        client_id = self.shared_strategy(view, out.message, self.sessions)
        if client_id is None:
            return
        options = group.members[client_id]
        self.deliver(self.sessions[client_id], out.message, min(out.message.qos, options.qos),
                     False, None, out.group)
