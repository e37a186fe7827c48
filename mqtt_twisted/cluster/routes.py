"""The cluster's route table: which peer nodes have a subscriber for which filter.

Sans-IO: the node (``node.py``) feeds it a snapshot read from Redis and the change
notifications that follow; the router asks it which nodes a topic goes to.  A
message is sent once per node this returns, never to a node without a matching
filter (no broadcast).  This node's own filters are not in it: the local router
has them.
"""

from __future__ import annotations

from typing import Any

import msgpack

from mqtt_twisted.core.topic_tree import TopicTree

#: Change notifications: a node added a filter, removed one, or forgot all of its own.
ADD, REMOVE, RESET = b"+", b"-", b"="


def encode_change(op: bytes, node: str, topic_filter: str = "") -> bytes:
    """A change notification as it is published on the routes channel."""
    return msgpack.packb([op, node, topic_filter], use_bin_type=True)  # type: ignore[no-any-return]


def decode_change(data: bytes) -> tuple[bytes, str, str]:
    """``(op, node, filter)``; ValueError for anything that is not a notification."""
    try:
        op, node, topic_filter = msgpack.unpackb(data, raw=False)
    except Exception as e:
        raise ValueError(f"not a route change: {data[:40]!r}") from e
    if op not in (ADD, REMOVE, RESET) or type(node) is not str or type(topic_filter) is not str:
        raise ValueError(f"not a route change: {data[:40]!r}")
    return op, node, topic_filter


class RouteTable:
    """Remote filters -> node names, for every node but this one."""

    __slots__ = ("me", "tree", "by_node", "_syncing")

    def __init__(self, me: str) -> None:
        self.me = me
        self.tree: TopicTree[bool] = TopicTree()
        self.by_node: dict[str, set[str]] = {}
        #: Changes heard while a snapshot is being read, applied after it.
        self._syncing: list[tuple[bytes, str, str]] | None = None

    def __len__(self) -> int:
        return len(self.tree)

    def nodes_for(self, topic: str) -> set[str]:
        """The peer nodes with a filter that matches ``topic``."""
        matches = self.tree.match(topic)
        if not matches:
            return set()
        return {node for node, _ in matches}  # type: ignore[misc]

    # --- changes ---

    def apply(self, op: bytes, node: str, topic_filter: str = "") -> None:
        """One change notification; those heard during a resync wait for its snapshot."""
        if node == self.me:
            return
        if self._syncing is not None:
            self._syncing.append((op, node, topic_filter))
            return
        if op == ADD:
            self._add(node, topic_filter)
        elif op == REMOVE:
            self._remove(node, topic_filter)
        elif op == RESET:
            for f in list(self.by_node.get(node, ())):
                self._remove(node, f)

    def _add(self, node: str, topic_filter: str) -> None:
        filters = self.by_node.setdefault(node, set())
        if topic_filter not in filters:
            filters.add(topic_filter)
            self.tree.add(topic_filter, node, True)

    def _remove(self, node: str, topic_filter: str) -> None:
        filters = self.by_node.get(node)
        if filters is not None and topic_filter in filters:
            filters.discard(topic_filter)
            self.tree.remove(topic_filter, node)
            if not filters:
                del self.by_node[node]

    # --- resync ---

    def begin_sync(self) -> None:
        """A snapshot is being read: hold the notifications heard meanwhile."""
        self._syncing = []

    def end_sync(self, snapshot: dict[str, Any]) -> None:
        """Replace the table with ``snapshot`` (node -> filters), then apply what was
        heard while it was read: each node's changes are in order, so the last one
        for a (node, filter) is its state, whichever side of the snapshot it fell."""
        held, self._syncing = self._syncing or [], None
        self.tree = TopicTree()
        self.by_node = {}
        for node, filters in snapshot.items():
            if node != self.me:
                for f in filters:
                    self._add(node, f)
        for change in held:
            self.apply(*change)

    def abort_sync(self) -> None:
        """The snapshot could not be read: apply what was held to the old table."""
        held, self._syncing = self._syncing or [], None
        for change in held:
            self.apply(*change)
