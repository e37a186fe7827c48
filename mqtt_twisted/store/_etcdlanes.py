"""The etcd store's ordering: one lane per client id (and one for retained messages),
with the writes queued behind a request in flight sent together as one transaction.

etcd answers requests of different HTTP connections in any order, so the store
cannot send a client's writes side by side as the Redis store does on one
connection.  A lane sends one request at a time, which keeps a client's calls in
the order they were made; what queues up meanwhile leaves as **one** ``/v3/kv/txn``
when the request ahead answers (group commit).  Writes to the same key within a
batch collapse into the last one (a record stored, updated and removed while a
request was under way costs one delete), since a transaction applies all its
operations at once and etcd refuses one that names a key twice.  A batch holds at
most ``max_txn_ops`` keys (etcd's ``--max-txn-ops``, 128 by default) and about
``max_bytes``; more waits for the next request of the lane.

A lane's writes may be *guarded* by a key (a client's session record): the
transaction then applies only while that key exists, which is how writes for a
deleted session are ignored.  Reads and multi-step calls (``saveSession``) take
the lane alone, after the writes queued before them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.python.failure import Failure

from mqtt_twisted.store._etcdhttp import EtcdHTTP, exists


class _Write:
    __slots__ = ("deadline", "deferred", "guard", "ops", "size")

    def __init__(self, ops: list[tuple[bytes, dict[str, Any], int]], guard: bytes | None,
                 deadline: float) -> None:
        self.ops = ops
        self.guard = guard
        self.deadline = deadline
        self.size = sum(size for _, _, size in ops)
        self.deferred: Deferred[None] = Deferred()


class _Call:
    __slots__ = ("deadline", "deferred", "function", "write")

    def __init__(self, function: Callable[[], Any], deadline: float, write: bool) -> None:
        self.function = function
        self.deadline = deadline
        self.write = write
        self.deferred: Deferred[Any] = Deferred()


class _Lane:
    __slots__ = ("busy", "queue")

    def __init__(self) -> None:
        self.queue: deque[_Write | _Call] = deque()
        self.busy = False


class Lanes:
    """Every lane of one store; a lane exists while it has work."""

    def __init__(self, reactor: Any, http: EtcdHTTP, max_ops: int,
                 max_bytes: int = 1 << 20) -> None:
        self.reactor = reactor
        self.http = http
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        self._lanes: dict[Hashable, _Lane] = {}
        #: Transactions sent and write calls batched into them (for the benchmark).
        self.transactions = 0
        self.batched = 0

    def write(self, lane: Hashable, ops: list[tuple[bytes, dict[str, Any], int]],
              guard: bytes | None = None) -> Deferred[None]:
        """Apply ``ops`` (key, RequestOp, size) in one transaction with whatever else the
        lane has queued; fires once etcd has them (or ignored them: ``guard`` absent)."""
        item = _Write(ops, guard, self.reactor.seconds() + self.http.options.timeout)
        self._enqueue(lane, item)
        return item.deferred

    def call(self, lane: Hashable, function: Callable[[], Any],
             write: bool = True) -> Deferred[Any]:
        """Run ``function()`` (returning a Deferred) alone, once the lane's queue before
        it is done; fires with its result."""
        item = _Call(function, self.reactor.seconds() + self.http.options.timeout, write)
        self._enqueue(lane, item)
        return item.deferred

    def quiet(self, kind: Hashable) -> Deferred[None]:
        """Fires once everything queued now in the lanes ``(kind, ...)`` is done."""
        waits = [self.call(key, lambda: None, write=False).addErrback(lambda _: None)
                 for key in list(self._lanes) if isinstance(key, tuple) and key[0] == kind]
        return gatherResults(waits).addCallback(lambda _: None)

    def idle(self) -> Deferred[None]:
        """Fires once every lane has finished what it has queued now."""
        waits = [self.call(key, lambda: None, write=False).addErrback(lambda _: None)
                 for key in list(self._lanes)]
        return gatherResults(waits).addCallback(lambda _: None)

    # --- the pump ----------------------------------------------------------------------

    def _enqueue(self, key: Hashable, item: _Write | _Call) -> None:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.queue.append(item)
        if not lane.busy:
            self._next(key, lane)

    def _next(self, key: Hashable, lane: _Lane) -> None:
        queue = self._expire(lane.queue)
        if not queue:
            if self._lanes.get(key) is lane:
                del self._lanes[key]
            return
        lane.busy = True
        head = queue[0]
        if isinstance(head, _Call):
            queue.popleft()
            d = maybeDeferred(head.function)
            d.addBoth(self._finished, key, lane, [head])
            return
        items, ops = self._batch(queue)
        compare = [exists(head.guard)] if head.guard is not None else []
        self.transactions += 1
        self.batched += len(items)
        d = self.http.call("kv/txn", {"compare": compare, "success": ops})
        d.addCallback(lambda _: None)
        d.addBoth(self._finished, key, lane, items)

    def _batch(self, queue: deque[_Write | _Call]) -> tuple[list[_Write], list[dict[str, Any]]]:
        """Take the writes at the head of ``queue`` that fit in one transaction."""
        first = queue.popleft()
        assert isinstance(first, _Write)
        items = [first]
        merged: dict[bytes, dict[str, Any]] = {}
        size = first.size
        for k, op, _ in first.ops:
            merged.pop(k, None)
            merged[k] = op
        while queue:
            item = queue[0]
            if not isinstance(item, _Write) or item.guard != first.guard:
                break
            new = sum(1 for k, _, _ in item.ops if k not in merged)
            if len(merged) + new > self.max_ops or size + item.size > self.max_bytes:
                break
            queue.popleft()
            items.append(item)
            size += item.size
            for k, op, _ in item.ops:
                merged.pop(k, None)
                merged[k] = op
        return items, list(merged.values())

    def _expire(self, queue: deque[_Write | _Call]) -> deque[_Write | _Call]:
        """Fail the items at the head that waited past their deadline: no call waits
        for more than one request ahead of it once the store's timeout is over."""
        now = self.reactor.seconds()
        while queue and queue[0].deadline < now:
            item = queue.popleft()
            write = item.write if isinstance(item, _Call) else True
            item.deferred.errback(self.http.outage.error(
                f"etcd at {self.http.options.host}:{self.http.options.port}: call not sent "
                f"in {self.http.options.timeout}s", write))
        return queue

    def _finished(self, result: Any, key: Hashable, lane: _Lane,
                  items: list[Any]) -> None:
        for item in items:  # the lane stays busy: what these callbacks queue waits its turn
            if isinstance(result, Failure):
                item.deferred.errback(result)
            else:
                item.deferred.callback(result)
        lane.busy = False
        self._next(key, lane)
