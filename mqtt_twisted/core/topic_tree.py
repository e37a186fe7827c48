"""The subscription index: a trie over topic levels with '+' and '#' branches.

Matching walks only the branches a topic can reach, so its cost follows the
number of matching filters and the topic depth, not the number of
subscriptions.  A small cache maps recently published topics to their match
result; any change to the tree clears it.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType
from typing import Any, Generic, TypeVar

V = TypeVar("V")

_CACHE_LIMIT = 4096
#: A node's children or values until it has some: shared, read-only and empty.  A leaf
#: never has children and an inner node rarely has values, so a subscription's new
#: nodes cost one dict each, not two (64 bytes less per node).
_NONE: Any = MappingProxyType({})


class _Node(Generic[V]):
    __slots__ = ("children", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node[V]] = _NONE
        self.values: dict[object, V] = _NONE


class TopicTree(Generic[V]):
    """Maps topic filters to values keyed by owner (a client id, a share group).

    ``match(topic)`` returns a list of ``(owner, value)`` pairs, one per
    matching (filter, owner); an owner with overlapping filters appears once
    per filter and the caller merges.
    """

    __slots__ = ("_root", "_cache", "_count")

    def __init__(self) -> None:
        self._root: _Node[V] = _Node()
        self._cache: dict[str, list[tuple[object, V]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, topic_filter: str, owner: object, value: V) -> bool:
        """Set ``owner``'s value for ``topic_filter``; True if it is new."""
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                if node.children is _NONE:
                    node.children = {}
                child = node.children[level] = _Node()
            node = child
        is_new = owner not in node.values
        if node.values is _NONE:
            node.values = {}
        node.values[owner] = value
        if is_new:
            self._count += 1
        if self._cache:
            self._cache.clear()
        return is_new

    def remove(self, topic_filter: str, owner: object) -> V | None:
        """Remove ``owner``'s entry for ``topic_filter``; return its value or None."""
        path: list[tuple[_Node[V], str]] = []
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return None
            path.append((node, level))
            node = child
        value = node.values.get(owner)  # (_NONE has no pop)
        if value is None:
            return None
        del node.values[owner]
        self._count -= 1
        # Prune empty branches so that dead filters cost nothing later.
        while path and not node.values and not node.children:
            parent, level = path.pop()
            del parent.children[level]
            node = parent
        if self._cache:
            self._cache.clear()
        return value

    def get(self, topic_filter: str, owner: object) -> V | None:
        node = self._root
        for level in topic_filter.split("/"):
            node = node.children.get(level)  # type: ignore[assignment]
            if node is None:
                return None
        return node.values.get(owner)

    def match(self, topic: str) -> list[tuple[object, V]]:
        """Every (owner, value) whose filter matches ``topic`` [MQTT-4.7]."""
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        result: list[tuple[object, V]] = []
        levels = topic.split("/")
        last = len(levels)
        # [MQTT-4.7.2-1] a topic starting with '$' is not matched by a leading wildcard.
        dollar = topic.startswith("$")
        stack: list[tuple[_Node[V], int]] = [(self._root, 0)]
        while stack:
            node, depth = stack.pop()
            children = node.children
            if not children:
                continue
            wild_ok = depth or not dollar
            if wild_ok:
                hash_node = children.get("#")
                if hash_node is not None:
                    # '#' also matches the parent level: 'a/#' matches 'a' [MQTT-4.7.1-2].
                    result.extend(hash_node.values.items())
            if depth == last:
                continue
            child = children.get(levels[depth])
            if child is not None:
                if depth + 1 == last:
                    result.extend(child.values.items())
                stack.append((child, depth + 1))
            if wild_ok:
                plus = children.get("+")
                if plus is not None:
                    if depth + 1 == last:
                        result.extend(plus.values.items())
                    stack.append((plus, depth + 1))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[topic] = result
        return result

    def items(self) -> Iterator[tuple[str, object, V]]:
        """Every (filter, owner, value), for snapshots and $SYS counts."""
        stack: list[tuple[_Node[V], tuple[str, ...]]] = [(self._root, ())]
        while stack:
            node, prefix = stack.pop()
            for owner, value in node.values.items():
                yield "/".join(prefix), owner, value
            for level, child in node.children.items():
                stack.append((child, (*prefix, level)))
