"""The subscription index: a trie over topic levels with '+' and '#' branches.

Matching walks only the branches a topic can reach, so its cost follows the
number of matching filters and the topic depth, not the number of
subscriptions.  A small cache maps recently published topics to their match
result; any change to the tree clears it.

The trie is made of dictionaries only (issue 19: a million subscriptions, most of
them adding a level or two of their own).  A node is a ``dict`` from a level to
what is below it: another node, or a :class:`_Leaf` (the values of a filter that
ends there, when nothing is below it, which is the usual end of a filter).  A node
under which a filter also ends holds those values under the key ``None`` (no level
is None).  So a new level costs one dictionary, not an object and a dictionary, and
the cyclic garbage collector has a third fewer containers to walk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

V = TypeVar("V")

_CACHE_LIMIT = 4096


class _Leaf(dict):  # type: ignore[type-arg]
    """``owner -> value`` for a filter ending at a level that has nothing below it,
    in its parent node in place of a node (``type(x) is _Leaf`` tells them apart)."""

    __slots__ = ()


#: The values of a node that are also filters' ends ("a/b" beside "a/b/c").
_VALUES = None
_EMPTY: dict[Any, Any] = {}


def insert(root: dict[Any, Any], owner: object, items: Iterable[tuple[str, Any]],
           skipped: list[tuple[str, Any]] | None = None) -> int:
    """Set ``owner``'s value for each ``(topic_filter, value)`` of ``items`` in the
    tree at ``root``, in order; return how many are new.  No call per filter or per
    new level.  With a ``skipped`` list, a ``$share/`` filter is appended to it
    instead (the router's other tree takes it).  The compiled twin
    (core/_subscribe.pyx) builds the same tree; it also takes each new leaf off the
    cyclic collector's lists while it is empty, which Python cannot (the leaf goes
    back on them as soon as a value that is on them goes in).  See docs/speedups.md."""
    new = 0
    for topic_filter, value in items:
        if skipped is not None and topic_filter.startswith("$share/"):
            skipped.append((topic_filter, value))
            continue
        levels = topic_filter.split("/")
        tail = levels.pop()
        node = root
        for level in levels:
            child = node.get(level)
            if child is None:
                child = node[level] = {}
            elif type(child) is _Leaf:  # a filter ends here: now a node holding it
                child = node[level] = {_VALUES: child}
            node = child
        entry = node.get(tail)
        if entry is None:
            values = node[tail] = _Leaf()
        elif type(entry) is _Leaf:
            values = entry
        else:
            values = entry.get(_VALUES)
            if values is None:
                values = entry[_VALUES] = _Leaf()
        if owner not in values:
            new += 1
        values[owner] = value
    return new


#: :func:`insert` or its compiled twin (core/_compiled.py binds it).
_insert = insert


def _values_of(entry: dict[Any, Any]) -> dict[Any, Any] | None:
    """The values held by a node's entry (a leaf, or a node's own)."""
    return entry if type(entry) is _Leaf else entry.get(_VALUES)


class TopicTree(Generic[V]):
    """Maps topic filters to values keyed by owner (a client id, a share group).

    ``match(topic)`` returns a list of ``(owner, value)`` pairs, one per
    matching (filter, owner); an owner with overlapping filters appears once
    per filter and the caller merges.
    """

    __slots__ = ("_root", "_cache", "_count")

    def __init__(self) -> None:
        self._root: dict[Any, Any] = {}
        self._cache: dict[str, list[tuple[object, V]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, topic_filter: str, owner: object, value: V) -> bool:
        """Set ``owner``'s value for ``topic_filter``; True if it is new."""
        return self.add_many(owner, ((topic_filter, value),)) == 1

    def add_many(self, owner: object, items: Iterable[tuple[str, V]],
                 skipped: list[tuple[str, V]] | None = None) -> int:
        """Set ``owner``'s value for each ``(topic_filter, value)`` of ``items``, in
        order (a later one replaces an earlier one of the same filter); return how many
        are new.  One SUBSCRIBE's filters in one pass (:func:`insert`, compiled where
        built), the match cache cleared once.  With a ``skipped`` list, the
        ``$share/`` filters go there instead of into the tree."""
        new = _insert(self._root, owner, items, skipped)
        self._count += new
        if self._cache:
            self._cache.clear()
        return new

    def remove(self, topic_filter: str, owner: object) -> V | None:
        """Remove ``owner``'s entry for ``topic_filter``; return its value or None."""
        levels = topic_filter.split("/")
        tail = levels.pop()
        path: list[tuple[dict[Any, Any], str]] = []
        node = self._root
        for level in levels:
            child = node.get(level)
            if child is None or type(child) is _Leaf:
                return None
            path.append((node, level))
            node = child
        entry = node.get(tail)
        values = _values_of(entry) if entry is not None else None
        value = values.get(owner) if values else None
        if value is None:
            return None
        del values[owner]  # type: ignore[union-attr]
        self._count -= 1
        if not values:
            # Prune empty branches so that dead filters cost nothing later.
            if type(entry) is not _Leaf:
                del entry[_VALUES]  # type: ignore[index]
            if not entry or type(entry) is _Leaf:
                del node[tail]
                while path and not node:
                    parent, level = path.pop()
                    del parent[level]
                    node = parent
        if self._cache:
            self._cache.clear()
        return value  # type: ignore[no-any-return]

    def get(self, topic_filter: str, owner: object) -> V | None:
        levels = topic_filter.split("/")
        tail = levels.pop()
        node = self._root
        for level in levels:
            node = node.get(level)  # type: ignore[assignment]
            if node is None or type(node) is _Leaf:
                return None
        entry = node.get(tail)
        values = _values_of(entry) if entry is not None else None
        return values.get(owner) if values else None

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
        stack: list[tuple[dict[Any, Any], int]] = [(self._root, 0)]
        while stack:
            node, depth = stack.pop()
            wild_ok = depth or not dollar
            if wild_ok:
                hashed = node.get("#")
                if hashed is not None:
                    # '#' also matches the parent level: 'a/#' matches 'a' [MQTT-4.7.1-2].
                    # (It is the last level of a valid filter: a leaf.)
                    result.extend((hashed if type(hashed) is _Leaf
                                   else hashed.get(_VALUES, _EMPTY)).items())
            if depth == last:
                continue
            depth += 1
            child = node.get(levels[depth - 1])
            if child is not None:
                if type(child) is _Leaf:
                    if depth == last:
                        result.extend(child.items())
                else:
                    if depth == last:
                        result.extend(child.get(_VALUES, _EMPTY).items())
                    stack.append((child, depth))
            if wild_ok:
                plus = node.get("+")
                if plus is not None:
                    if type(plus) is _Leaf:
                        if depth == last:
                            result.extend(plus.items())
                    else:
                        if depth == last:
                            result.extend(plus.get(_VALUES, _EMPTY).items())
                        stack.append((plus, depth))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[topic] = result
        return result

    def items(self) -> Iterator[tuple[str, object, V]]:
        """Every (filter, owner, value), for snapshots and $SYS counts."""
        stack: list[tuple[dict[Any, Any], tuple[str, ...]]] = [(self._root, ())]
        while stack:
            node, prefix = stack.pop()
            for level, child in node.items():
                if level is _VALUES:
                    topic_filter = "/".join(prefix)
                    for owner, value in child.items():
                        yield topic_filter, owner, value
                elif type(child) is _Leaf:
                    topic_filter = "/".join((*prefix, level))
                    for owner, value in child.items():
                        yield topic_filter, owner, value
                else:
                    stack.append((child, (*prefix, level)))
