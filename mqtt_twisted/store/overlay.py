"""Retained ``$SYS`` messages in the broker's memory, in front of whatever store it uses.

``$SYS`` topics describe one broker process: they change every ``--sys-interval``
and are rebuilt after a restart.  Written to a network store they cost a dozen
writes per interval, fail (and used to fill the log) whenever the store is down,
and show one node's figures to every node sharing the store.  So the broker's
store is a :class:`SysRetainedOverlay`: it keeps retained messages on ``$SYS``
topics in a :class:`RetainedIndex` of its own and hands every other call to the
real store unchanged.  Only a filter whose first level is ``$SYS`` matches a
``$SYS`` topic [MQTT-4.7.2-1], so each SUBSCRIBE asks exactly one of the two.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from zope.interface import alsoProvides, implementer

from mqtt_twisted.interfaces import IBatchedOutboundStore, ISessionInfoStore, IStore
from mqtt_twisted.message import Message
from mqtt_twisted.store.retained_index import RetainedIndex

_RETAINED_CALLS = frozenset(
    ("setRetained", "getRetained", "deleteRetained", "matchRetained", "countRetained"))


def is_sys(topic: str) -> bool:
    """Whether a topic (or filter) has ``$SYS`` as its first level."""
    return topic.startswith("$SYS") and (len(topic) == 4 or topic[4] == "/")


@implementer(IStore)
class SysRetainedOverlay:
    """``store`` with retained ``$SYS`` messages kept in memory instead."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._sys = RetainedIndex()
        # Every other call goes straight to the store's own bound method: no extra call
        # on the per-message path.
        for name in IStore.names(all=True):
            if name not in _RETAINED_CALLS and hasattr(store, name):
                setattr(self, name, getattr(store, name))
        if hasattr(store, "addSubscriptions"):  # optional, not in IStore
            self.addSubscriptions = store.addSubscriptions
        if getattr(store, "setRetainedNow", None) is not None:  # (optional: MemoryStore)
            self.setRetainedNow = self._set_retained_now
        for twin in ("deleteSessionNow", "takeLockNow"):  # (optional too: no $SYS in them)
            if getattr(store, twin, None) is not None:
                setattr(self, twin, getattr(store, twin))
        if ISessionInfoStore.providedBy(store):
            self.saveSessionInfo = store.saveSessionInfo
            alsoProvides(self, ISessionInfoStore)
        if IBatchedOutboundStore.providedBy(store):
            for name in IBatchedOutboundStore.names():
                setattr(self, name, getattr(store, name))
            alsoProvides(self, IBatchedOutboundStore)

    def __repr__(self) -> str:
        return f"<SysRetainedOverlay over {self.store!r}>"

    def setRetained(self, message: Message) -> Deferred[None]:
        if not is_sys(message.topic):
            return self.store.setRetained(message)
        if message.payload:
            self._sys.set(message.copy())
        else:
            self._sys.delete(message.topic)
        return succeed(None)

    def _set_retained_now(self, message: Message) -> None:
        if message.topic[:1] != "$" or not is_sys(message.topic):
            self.store.setRetainedNow(message)
        else:
            self.setRetained(message)

    def getRetained(self, topic: str) -> Deferred[Message | None]:
        if is_sys(topic):
            return succeed(self._sys.get(topic))
        return self.store.getRetained(topic)

    def deleteRetained(self, topic: str) -> Deferred[None]:
        if is_sys(topic):
            self._sys.delete(topic)
            return succeed(None)
        return self.store.deleteRetained(topic)

    def matchRetained(self, topicFilter: str) -> Deferred[list[Message]]:
        if is_sys(topicFilter):
            return succeed(self._sys.match(topicFilter))
        return self.store.matchRetained(topicFilter)

    def iterRetained(self, topicFilter: str) -> Iterator[Message | None] | None:
        """The store's lazy matches (None when it has no ``iterRetained``)."""
        if is_sys(topicFilter):
            return iter(self._sys.match(topicFilter))
        iterate = getattr(self.store, "iterRetained", None)
        return iterate(topicFilter) if iterate is not None else None

    def mayHaveRetained(self, topicFilter: str) -> bool:
        """False when no retained message can match ``topicFilter`` (the store's own
        answer, where it has one; else True)."""
        if is_sys(topicFilter):
            return bool(self._sys)
        may = getattr(self.store, "mayHaveRetained", None)
        return True if may is None else bool(may(topicFilter))

    def countRetained(self) -> Deferred[int]:
        d: Deferred[int] = self.store.countRetained()
        return d.addCallback(lambda n: n + len(self._sys))


def purge_sys_retained(store: Any) -> Deferred[int]:
    """Delete the retained ``$SYS`` messages earlier versions wrote to ``store``; fires
    with how many there were."""
    def delete(messages: list[Message]) -> Deferred[int]:
        d = gatherResults([store.deleteRetained(m.topic) for m in messages],
                          consumeErrors=True)
        return d.addCallback(lambda _: len(messages))

    found: Deferred[list[Message]] = store.matchRetained("$SYS/#")  # "$SYS" too
    return found.addCallback(delete)
