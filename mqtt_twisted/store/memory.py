"""The in-process store: the default, with nothing to set up.

Every call answers with an already-fired Deferred, so the broker's code path
is the same as with a network store.  It holds copies of what the broker
gives it, never the broker's live objects, so what it returns is what was
stored, as with any other backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, gatherResults, succeed
from zope.interface import implementer

from mqtt_twisted.errors import StorageError
from mqtt_twisted.interfaces import ILock, ISessionState, IStore
from mqtt_twisted.message import NO_WIRE, Message
from mqtt_twisted.records import Outbound
from mqtt_twisted.store.retained_index import RetainedIndex


@implementer(ISessionState)
class StoredSession:
    """A session as a store returns it: a detached copy."""

    def __init__(self, clientId: str) -> None:
        self.clientId = clientId
        self.subscriptions: dict[str, Any] = {}
        self.will: Message | None = None
        self.willDelay: float = 0
        self.expiryInterval: float | None = 0
        self.disconnectedAt: float | None = None
        self.outbound: list[Any] = []
        self.inboundQoS2: set[int] = set()
        self.owner: str | None = None
        #: Sequence numbers for new messages start at least here (0: after the last
        #: record's); the Redis store's ``sent`` mark can say more than its records.
        self.nextSeq = 0

    @classmethod
    def copy_of(cls, state: Any) -> StoredSession:
        new = cls(state.clientId)
        new.subscriptions = dict(state.subscriptions)
        new.will = state.will
        new.willDelay = state.willDelay
        new.expiryInterval = state.expiryInterval
        new.disconnectedAt = state.disconnectedAt
        new.outbound = [_copy_outbound(o) for o in state.outbound]
        new.inboundQoS2 = set(state.inboundQoS2)
        new.owner = getattr(state, "owner", None)  # a state from an older plugin has none
        return new


def _copy_outbound(out: Any) -> Any:
    """A detached copy of an Outbound record (the broker updates its own in place)."""
    if type(out) is Outbound:  # one call, not a getattr and a setattr per field
        return Outbound(out.message, out.qos, out.retain, out.subscription_ids,
                        out.packet_id, out.state, out.group, out.seq)
    new = out.__class__.__new__(out.__class__)
    for name in out.__class__.__slots__:
        setattr(new, name, getattr(out, name))
    return new


@implementer(ILock)
class _HeldLock:
    def __init__(self, locks: dict[str, DeferredLock], clientId: str, lock: DeferredLock):
        self._locks = locks
        self._clientId = clientId
        self._lock: DeferredLock | None = lock

    def release(self) -> Deferred[None]:
        self.releaseNow()
        return succeed(None)

    def releaseNow(self) -> None:
        """``release`` without the Deferred (done when it returns), for a caller that
        knows this lock: the broker's CONNECT (``core/connect.py``)."""
        lock = self._lock
        if lock is not None:
            self._lock = None
            if lock.waiting:
                lock.release()  # (the next waiter gets it)
            else:  # DeferredLock.release with nobody waiting, inline (a call less)
                lock.locked = False
            if not lock.locked and not lock.waiting and self._locks.get(self._clientId) is lock:
                del self._locks[self._clientId]


@implementer(IStore)
class MemoryStore:
    """Sessions, retained messages and client locks in dictionaries."""

    name = "memory"
    persistsMessages = False

    def __init__(self, clock: Any = None) -> None:
        self._clock = clock
        self._sessions: dict[str, StoredSession] = {}
        self._outbound: dict[str, dict[int, Any]] = {}
        self._retained = RetainedIndex()
        self._locks: dict[str, DeferredLock] = {}
        # A subclass that changes a call with a synchronous twin (holds or fails the
        # write, waits for the lock) must be asked through it: no twin then.
        cls = type(self)
        if cls.setRetained is not MemoryStore.setRetained:
            self.setRetainedNow = None  # type: ignore[assignment]
        if cls.deleteSession is not MemoryStore.deleteSession:
            self.deleteSessionNow = None  # type: ignore[assignment]
        if cls.acquireLock is not MemoryStore.acquireLock:
            self.takeLockNow = None  # type: ignore[assignment]

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        return succeed(None)

    def stop(self) -> Deferred[None]:
        return succeed(None)

    # --- sessions ----------------------------------------------------------------------

    def loadSession(self, clientId: str) -> Deferred[StoredSession | None]:
        stored = self._sessions.get(clientId)
        if stored is None:
            return succeed(None)
        copy = StoredSession.copy_of(stored)
        # The records as storeOutbound/removeOutbound left them, in delivery (seq) order.
        held = self._outbound.get(clientId, {})
        copy.outbound = [_copy_outbound(held[seq]) for seq in sorted(held)]
        return succeed(copy)

    def saveSession(self, state: Any) -> Deferred[None]:
        stored = self._sessions[state.clientId] = StoredSession.copy_of(state)
        self._outbound[state.clientId] = {o.seq: o for o in stored.outbound}
        return succeed(None)

    def deleteSession(self, clientId: str) -> Deferred[None]:
        MemoryStore.deleteSessionNow(self, clientId)
        return succeed(None)

    def deleteSessionNow(self, clientId: str) -> None:
        """``deleteSession`` without the Deferred, which the broker calls where a store
        has it (optional, as ``setRetainedNow``): every clean session's end."""
        self._sessions.pop(clientId, None)
        self._outbound.pop(clientId, None)

    def listSessions(self) -> Deferred[list[str]]:
        return succeed(list(self._sessions))

    def addSubscription(self, clientId: str, topicFilter: str, options: Any) -> Deferred[None]:
        stored = self._sessions.get(clientId)
        if stored is not None:
            stored.subscriptions[topicFilter] = options
        return succeed(None)

    def addSubscriptions(self, clientId: str, subscriptions: dict[str, Any]) -> Deferred[None]:
        """Record one SUBSCRIBE's subscriptions at once (optional: the broker calls
        ``addSubscription`` for each where a store has no ``addSubscriptions``).  A
        subclass (or instance) with its own ``addSubscription`` gets that called for
        each: what it does on top is not skipped."""
        one = self.addSubscription
        if getattr(one, "__func__", None) is not MemoryStore.addSubscription:
            writes = [one(clientId, f, o) for f, o in subscriptions.items()]
            if len(writes) == 1:
                return writes[0]  # type: ignore[no-any-return]
            done = gatherResults(writes, consumeErrors=True)
            return done.addCallbacks(lambda _: None, lambda f: f.value.subFailure)
        stored = self._sessions.get(clientId)
        if stored is not None:
            stored.subscriptions.update(subscriptions)
        return succeed(None)

    def removeSubscription(self, clientId: str, topicFilter: str) -> Deferred[None]:
        stored = self._sessions.get(clientId)
        if stored is not None:
            stored.subscriptions.pop(topicFilter, None)
        return succeed(None)

    def storeOutbound(self, clientId: str, outbound: Any) -> Deferred[None]:
        held = self._outbound.get(clientId)
        if held is not None:
            held[outbound.seq] = _copy_outbound(outbound)
        return succeed(None)

    def removeOutbound(self, clientId: str, seq: int) -> Deferred[None]:
        held = self._outbound.get(clientId)
        if held is not None:
            held.pop(seq, None)
        return succeed(None)

    def addInboundQoS2(self, clientId: str, packetId: int) -> Deferred[None]:
        stored = self._sessions.get(clientId)
        if stored is not None:
            stored.inboundQoS2.add(packetId)
        return succeed(None)

    def removeInboundQoS2(self, clientId: str, packetId: int) -> Deferred[None]:
        stored = self._sessions.get(clientId)
        if stored is not None:
            stored.inboundQoS2.discard(packetId)
        return succeed(None)

    # --- retained ------------------------------------------------------------------------

    def setRetained(self, message: Message) -> Deferred[None]:
        MemoryStore.setRetainedNow(self, message)
        return succeed(None)

    def setRetainedNow(self, message: Message) -> None:
        """``setRetained`` without the Deferred, which the broker calls where a store
        has it (optional: an in-process store's, done when it returns; None on a
        subclass that overrides ``setRetained``)."""
        if message.payload:
            # A copy: the routed message carries per-send caches the store need not
            # keep, and the copy keeps none either (NO_WIRE).
            props = message.properties
            held = Message(message.topic, message.payload, message.qos, message.retain,
                           message.packet_id, dict(props) if props else None,
                           message.received_at, message.sender)
            held.wire = NO_WIRE
            self._retained.set(held)
        else:
            self._retained.delete(message.topic)

    def getRetained(self, topic: str) -> Deferred[Message | None]:
        return succeed(self._retained.get(topic))

    def deleteRetained(self, topic: str) -> Deferred[None]:
        self._retained.delete(topic)
        return succeed(None)

    def matchRetained(self, topicFilter: str) -> Deferred[list[Message]]:
        return succeed(self._retained.match(topicFilter))

    def iterRetained(self, topicFilter: str) -> Iterator[Message | None]:
        """The matches one at a time, without building the list first: the broker
        serves a new subscription's retained messages in slices (optional; a store
        without it is asked ``matchRetained``).  None now and then: no match yet, a
        chance to stop for this reactor turn (store/retained_index.py)."""
        return self._retained.iter_match(topicFilter)

    def mayHaveRetained(self, topicFilter: str) -> bool:
        """False when no retained message can match ``topicFilter``: the broker skips
        the search for each filter of a SUBSCRIBE while there are none (optional)."""
        return len(self._retained) > 0

    def countRetained(self) -> Deferred[int]:
        return succeed(len(self._retained))

    # --- locks ------------------------------------------------------------------------------

    def takeLockNow(self, clientId: str) -> ILock | None:
        """The client's lock when nobody holds it or waits for it (the usual CONNECT),
        taken at once; None otherwise: ask ``acquireLock`` and wait.  Optional, as
        ``setRetainedNow``: the broker's CONNECT takes it without a Deferred, ``when``
        and its callbacks where a store has it (None on a subclass that overrides
        ``acquireLock``)."""
        if clientId in self._locks:
            return None
        lock = self._locks[clientId] = DeferredLock()
        lock.locked = True
        return _HeldLock(self._locks, clientId, lock)

    def acquireLock(self, clientId: str, timeout: float) -> Deferred[ILock]:
        """A per-client lock; waiters queue in order, and give up after ``timeout``."""
        lock = self._locks.get(clientId)
        if lock is None:
            # Nobody holds it or waits: taken at once, without the acquire Deferred and
            # its callbacks (a dozen calls per connection).
            return succeed(MemoryStore.takeLockNow(self, clientId))
        d = lock.acquire()
        if not d.called and self._clock is not None and timeout:
            call = self._clock.callLater(timeout, d.cancel)
            d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])

        def held(_: Any) -> _HeldLock:
            return _HeldLock(self._locks, clientId, lock)

        def timed_out(failure: Any) -> None:
            raise StorageError(f"lock for {clientId!r} not acquired in {timeout}s")

        d.addCallbacks(held, timed_out)
        return d
