"""The cluster's route table: which peer nodes have a subscriber for which filter.

Sans-IO: the node (``node.py``) feeds it a snapshot read from Redis and the change
notifications that follow; the router asks it which nodes a topic goes to.  A
message is sent once per node this returns, never to a node without a matching
filter (no broadcast).  This node's own filters are not in it: the local router
has them.  Share groups are kept apart (``shared.SharedRoutes``, by group key, with
each node's weight): a group's message goes to one node, not to each.
"""

from __future__ import annotations

from typing import Any

import msgpack

from mqtt_twisted.cluster.shared import SharedRoutes
from mqtt_twisted.codec.topics import SHARE_PREFIX
from mqtt_twisted.core.topic_tree import TopicTree

#: Change notifications: a node added a filter, removed one, or forgot all of its own;
#: SHARE: a node has members of a share group (the filter is the group's key), with a
#: weight (``[op, node, key, weight]``); REMOVE of a group key: it has none any more.
ADD, REMOVE, RESET, SHARE = b"+", b"-", b"=", b"*"


def encode_change(op: bytes, node: str, topic_filter: str = "",
                  weight: int | None = None) -> bytes:
    """A change notification as it is published on the routes channel."""
    change: list[Any] = [op, node, topic_filter]
    if weight is not None:
        change.append(weight)
    return msgpack.packb(change, use_bin_type=True)  # type: ignore[no-any-return]


def decode_change(data: bytes) -> tuple[Any, ...]:
    """``(op, node, filter)``, or ``(SHARE, node, key, weight)``; ValueError for anything
    that is not a notification."""
    try:
        change = msgpack.unpackb(data, raw=False)
        op, node, topic_filter = change[:3]
    except Exception as e:
        raise ValueError(f"not a route change: {data[:40]!r}") from e
    if (op not in (ADD, REMOVE, RESET, SHARE) or type(node) is not str
            or type(topic_filter) is not str or len(change) != (4 if op == SHARE else 3)
            or (op == SHARE and type(change[3]) is not int)):
        raise ValueError(f"not a route change: {data[:40]!r}")
    return tuple(change)


#: Topics whose nodes a route table keeps at once (all forgotten when it is full).
CACHED_TOPICS = 4096


class RouteTable:
    """Remote filters -> node names, for every node but this one."""

    __slots__ = ("me", "tree", "by_node", "shared", "_syncing", "cache")

    def __init__(self, me: str) -> None:
        self.me = me
        self.tree: TopicTree[bool] = TopicTree()
        self.by_node: dict[str, set[str]] = {}
        self.shared = SharedRoutes(me)
        #: Changes heard while a snapshot is being read, applied after it.
        self._syncing: list[tuple[Any, ...]] | None = None
        #: topic -> its nodes and their names comma-separated (:meth:`route`), until the
        #: next change (a publisher's topics repeat: one dictionary look per message
        #: instead of a walk of the tree; the router looks here first, inline).
        self.cache: dict[str, tuple[tuple[str, ...], bytes]] = {}

    def __len__(self) -> int:
        return len(self.tree)

    def route(self, topic: str) -> tuple[tuple[str, ...], bytes]:
        """The peer nodes with a filter that matches ``topic`` (none for a ``$SYS``
        topic; sorted, a tuple: the router iterates it for every message, cheaper
        than a set's iterator), and their names comma-separated (a stream entry's
        ``d`` field, ``moved.py``), cached."""
        hit = self.cache.get(topic)
        if hit is None:
            cache = self.cache
            if len(cache) >= CACHED_TOPICS:
                cache.clear()
            # (A $SYS topic is this node's: never routed, whoever subscribed to it.)
            nodes = () if topic.startswith("$SYS") else tuple(
                sorted({n for n, _ in self.tree.match(topic)}))
            hit = cache[topic] = (nodes, ",".join(nodes).encode("utf-8"))
        return hit

    def nodes_for(self, topic: str) -> set[str]:
        """The peer nodes with a filter that matches ``topic`` (a set of the caller's)."""
        return set(self.route(topic)[0])

    # --- changes ---

    def apply(self, op: bytes, node: str, topic_filter: str = "", weight: int = 0) -> None:
        """One change notification; those heard during a resync wait for its snapshot."""
        if node == self.me:
            return
        if self._syncing is not None:
            self._syncing.append((op, node, topic_filter, weight))
            return
        if op == ADD:
            self._add(node, topic_filter)
        elif op == SHARE:
            self.shared.set(node, topic_filter, weight)
        elif op == REMOVE:
            if topic_filter.startswith(SHARE_PREFIX):
                self.shared.remove(node, topic_filter)
            else:
                self._remove(node, topic_filter)
        elif op == RESET:
            for f in list(self.by_node.get(node, ())):
                self._remove(node, f)
            self.shared.reset(node)

    def _add(self, node: str, topic_filter: str) -> None:
        filters = self.by_node.setdefault(node, set())
        if topic_filter not in filters:
            filters.add(topic_filter)
            self.tree.add(topic_filter, node, True)
            self.cache.clear()

    def _remove(self, node: str, topic_filter: str) -> None:
        filters = self.by_node.get(node)
        if filters is not None and topic_filter in filters:
            filters.discard(topic_filter)
            self.tree.remove(topic_filter, node)
            self.cache.clear()
            if not filters:
                del self.by_node[node]

    # --- resync ---

    def begin_sync(self) -> None:
        """A snapshot is being read: hold the notifications heard meanwhile."""
        self._syncing = []

    def end_sync(self, snapshot: dict[str, Any],
                 shared: dict[str, dict[str, int]] | None = None) -> None:
        """Replace the table with ``snapshot`` (node -> filters) and ``shared`` (node ->
        group key -> weight), then apply what was heard while they were read: each
        node's changes are in order, so the last one for a (node, filter) is its
        state, whichever side of the snapshot it fell."""
        held, self._syncing = self._syncing or [], None
        self.tree = TopicTree()
        self.by_node = {}
        self.cache = {}
        self.shared = SharedRoutes(self.me)
        for node, filters in snapshot.items():
            if node != self.me:
                for f in filters:
                    self._add(node, f)
        for node, groups in (shared or {}).items():
            for key, weight in groups.items():
                self.shared.set(node, key, weight)
        for change in held:
            self.apply(*change)

    def abort_sync(self) -> None:
        """The snapshot could not be read: apply what was held to the old table."""
        held, self._syncing = self._syncing or [], None
        for change in held:
            self.apply(*change)
