"""Retained messages by topic: a dict to store them and to serve ``#``, and a trie of the
topics, built by the first wildcard filter that needs it, so that matching visits only
what can match.

Why not the trie alone (as before): storing a retained message walked and grew the
trie level by level, a third of what a retained PUBLISH cost the broker in Python, for
an index that only a wildcard SUBSCRIBE reads.  Now storing is one dict assignment
until the first wildcard filter other than ``#`` is matched; from then on the trie is
kept up to date, but only for new and deleted topics (replacing the message of a
topic, the steady state of retained status topics, never touches it).  ``#`` needs
no index: it is every topic but the ``$`` ones [MQTT-4.7.2-1], in the dict's order.

That first filter finds its matches by looking at every topic (``topic_matches``) and
builds the trie on the way, lazily like every match: the walk yields None after each
:data:`BUILD_STEP` topics, a chance for its caller to stop for this reactor turn, so
that 100,000 retained topics do not cost the other clients a 100-200 ms stall.  Until
that walk has seen every topic, other wildcard filters look at every topic too; a walk
dropped unfinished drops its partial trie, and the next filter starts again.

Walks go over the dict itself.  A dict cannot be iterated across a change of its size,
so a walk in progress registers with the index, and just before the first such change
the index hands it the topics it still has to visit as a list; from then on it takes
each topic's current message from the dict (deleted ones are skipped).  A walk that is
dropped unfinished (its session went) unregisters as it is collected.
"""

from __future__ import annotations

from collections.abc import Iterator

from mqtt_twisted.codec import topic_matches
from mqtt_twisted.message import Message

#: Topics a first wildcard filter looks at (and adds to the trie) between two Nones.
BUILD_STEP = 256


class _Node:
    __slots__ = ("children", "topic")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.topic: str | None = None  # the retained topic ending here


class RetainedIndex:
    """Topic -> retained Message, matched by filter with '+' and '#' [MQTT-4.7]."""

    __slots__ = ("_messages", "_root", "_complete", "_walks")

    def __init__(self) -> None:
        self._messages: dict[str, Message] = {}
        #: The trie of the topics; None until a wildcard filter (not '#') needs it.
        self._root: _Node | None = None
        #: Whether the trie holds every topic (its first walk has seen them all).
        self._complete = False
        #: '#' walks still iterating over the dict itself: their iterator cells.
        self._walks: dict[int, list[Iterator[str]]] = {}

    def __len__(self) -> int:
        return len(self._messages)

    def set(self, message: Message) -> None:
        topic = message.topic
        messages = self._messages
        if (self._walks or self._root is not None) and topic not in messages:
            if self._walks:
                self._detach_walks()
            if self._root is not None:
                _add(self._root, topic)
        messages[topic] = message

    def get(self, topic: str) -> Message | None:
        return self._messages.get(topic)

    def delete(self, topic: str) -> bool:
        messages = self._messages
        if topic not in messages:
            return False
        if self._walks:
            self._detach_walks()
        del messages[topic]
        if self._root is not None:
            _remove(self._root, topic)
        return True

    def _detach_walks(self) -> None:
        """The dict is about to change size: each walk over it goes on over a list of
        the topics it has left."""
        for cell in self._walks.values():
            cell[0] = iter(list(cell[0]))
        self._walks.clear()

    def match(self, topic_filter: str) -> list[Message]:
        """Every retained message whose topic matches ``topic_filter``."""
        return [m for m in self.iter_match(topic_filter) if m is not None]

    def iter_match(self, topic_filter: str) -> Iterator[Message | None]:
        """The matches one at a time, so that a caller can stop between them (a new
        ``#`` subscriber over 100,000 retained messages is served in slices); None
        now and then while a wildcard filter looks at every topic (no match yet: a
        chance to stop).  The index may change meanwhile: a message deleted since is
        skipped, a topic's new message is the one given."""
        if topic_filter == "#":
            return self._walk(False)
        if "+" not in topic_filter and "#" not in topic_filter:
            message = self._messages.get(topic_filter)
            return iter(() if message is None else (message,))
        if self._complete:
            return self._trie_match(topic_filter)
        return self._scan(topic_filter)

    def __iter__(self) -> Iterator[Message]:
        """Every retained message, ``$`` topics included."""
        return self._walk(True)

    def _walk(self, dollar: bool) -> Iterator[Message]:
        messages = self._messages
        cell: list[Iterator[str]] = [iter(messages)]
        walks = self._walks
        key = id(cell)
        walks[key] = cell
        try:
            while True:
                topics = cell[0]
                for topic in topics:
                    message = messages.get(topic)
                    if message is not None and (dollar or topic[:1] != "$"):
                        yield message
                        if cell[0] is not topics:
                            break  # detached while we were away: go on over the list
                else:
                    return
        finally:
            walks.pop(key, None)

    def _scan(self, topic_filter: str) -> Iterator[Message | None]:
        """Every topic looked at, the trie built on the way unless another walk is
        building it; None after each BUILD_STEP topics."""
        root = None
        if self._root is None:
            root = self._root = _Node()
        seen = 0
        done = False
        try:
            for message in self._walk(True):
                topic = message.topic
                if root is not None:
                    _add(root, topic)
                if topic_matches(topic_filter, topic):
                    yield message
                seen += 1
                if not seen % BUILD_STEP:
                    yield None
            done = True
        finally:
            if root is not None and self._root is root:
                if done:
                    self._complete = True
                else:
                    self._root = None  # dropped unfinished: the next filter builds it

    def _trie_match(self, topic_filter: str) -> Iterator[Message]:
        messages = self._messages
        for topic in _match(self._root, topic_filter):  # type: ignore[arg-type]
            message = messages.get(topic)
            if message is not None:
                yield message


def _add(root: _Node, topic: str) -> None:
    node = root
    for level in topic.split("/"):
        child = node.children.get(level)
        if child is None:
            child = node.children[level] = _Node()
        node = child
    node.topic = topic


def _remove(root: _Node, topic: str) -> None:
    path: list[tuple[_Node, str]] = []
    node = root
    for level in topic.split("/"):
        child = node.children.get(level)
        if child is None:
            return
        path.append((node, level))
        node = child
    node.topic = None
    while path and node.topic is None and not node.children:
        parent, level = path.pop()
        del parent.children[level]
        node = parent


def _match(root: _Node, topic_filter: str) -> Iterator[str]:
    """The topics in the trie that ``topic_filter`` matches.  Each node's children are
    taken as they are when it is reached (the trie may change between two of them)."""
    levels = topic_filter.split("/")
    last = len(levels)
    stack: list[tuple[_Node, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if depth == last:
            if node.topic is not None:
                yield node.topic
            continue
        level = levels[depth]
        # [MQTT-4.7.2-1] wildcards at the first level skip '$' topics.
        skip_dollar = depth == 0
        if level == "#":
            if node.topic is not None and depth:
                yield node.topic  # 'a/#' matches 'a'
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


def _subtree(node: _Node) -> Iterator[str]:
    stack = [node]
    while stack:
        n = stack.pop()
        if n.topic is not None:
            yield n.topic
        stack.extend(n.children.values())
