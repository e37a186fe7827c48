"""A trie of retained topics, so that matching a filter visits only what can match."""

from __future__ import annotations

from collections.abc import Iterator

from mqtt_twisted.message import Message


class _Node:
    __slots__ = ("children", "message")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.message: Message | None = None


class RetainedIndex:
    """Topic -> retained Message, matched by filter with '+' and '#' [MQTT-4.7]."""

    __slots__ = ("_root", "_count")

    def __init__(self) -> None:
        self._root = _Node()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def set(self, message: Message) -> None:
        node = self._root
        for level in message.topic.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if node.message is None:
            self._count += 1
        node.message = message

    def get(self, topic: str) -> Message | None:
        node: _Node | None = self._root
        for level in topic.split("/"):
            node = node.children.get(level)  # type: ignore[union-attr]
            if node is None:
                return None
        return node.message  # type: ignore[union-attr]

    def delete(self, topic: str) -> bool:
        path: list[tuple[_Node, str]] = []
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if node.message is None:
            return False
        node.message = None
        self._count -= 1
        while path and node.message is None and not node.children:
            parent, level = path.pop()
            del parent.children[level]
            node = parent
        return True

    def match(self, topic_filter: str) -> list[Message]:
        """Every retained message whose topic matches ``topic_filter``."""
        return list(self.iter_match(topic_filter))

    def iter_match(self, topic_filter: str) -> Iterator[Message]:
        """The matches one at a time, so that a caller can stop between them (a new
        ``#`` subscriber over 100,000 retained messages is served in slices).  The
        index may change meanwhile: each node's children are taken as they are when it
        is reached, and a message deleted since is skipped."""
        levels = topic_filter.split("/")
        last = len(levels)
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        while stack:
            node, depth = stack.pop()
            if depth == last:
                if node.message is not None:
                    yield node.message
                continue
            level = levels[depth]
            # [MQTT-4.7.2-1] wildcards at the first level skip '$' topics.
            skip_dollar = depth == 0
            if level == "#":
                if node.message is not None and depth:
                    yield node.message  # 'a/#' matches 'a'
                for name, child in list(node.children.items()):
                    if skip_dollar and name.startswith("$"):
                        continue
                    yield from _subtree(child)
            elif level == "+":
                for name, child in node.children.items():
                    if skip_dollar and name.startswith("$"):
                        continue
                    stack.append((child, depth + 1))
            else:
                child = node.children.get(level)
                if child is not None:
                    stack.append((child, depth + 1))

    def __iter__(self) -> Iterator[Message]:
        return _subtree(self._root)


def _subtree(node: _Node) -> Iterator[Message]:
    stack = [node]
    while stack:
        n = stack.pop()
        if n.message is not None:
            yield n.message
        stack.extend(n.children.values())
