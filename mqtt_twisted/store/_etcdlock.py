"""The etcd store's client locks: keys attached to the broker's lease, kept alive.

As etcd's own ``concurrency.Session`` does, a broker holds **one** lease (granted at
start with a TTL of ``lock_lease`` seconds and kept alive every third of it) and
attaches every client lock it takes to it: the keep-alive costs one request per
interval whatever the number of locks, and when the broker dies without releasing
them, etcd deletes them all once the lease runs out.

A lock is the key ``P/lock/<client id>`` holding the store's random instance id,
created by a transaction only while the key is absent.  In front of it, a local
DeferredLock per client id queues this broker's waiters in order, so only the
first of them polls etcd; and since no other waiter of this broker can hold the
lock meanwhile, a key that already holds our own id (a release that failed) is
simply ours again.  Release deletes the key only while it holds our id.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from mqtt_twisted.errors import StorageError
from mqtt_twisted.interfaces import ILock
from mqtt_twisted.store import _etcdhttp as op


class NodeLease:
    """The broker's lease: granted at start, kept alive, granted again if it expired."""

    def __init__(self, reactor: Any, http: op.EtcdHTTP, ttl: float, log: Any) -> None:
        self.reactor = reactor
        self.http = http
        self.ttl = max(1, round(ttl))
        self.log = log
        self.id: str | None = None
        self._loop: LoopingCall | None = None
        #: Called after each keep-alive that etcd answered.
        self.renewed: Any = lambda: None

    def start(self) -> Deferred[None]:
        d = self._grant()
        d.addCallback(self._keep_alive)
        return d

    def _grant(self) -> Deferred[None]:
        d = self.http.call("lease/grant", {"TTL": self.ttl})
        d.addCallback(lambda reply: setattr(self, "id", reply["ID"]))
        return d

    def _keep_alive(self, _: Any) -> None:
        self._loop = LoopingCall(self._renew)
        self._loop.clock = self.reactor
        self._loop.start(self.ttl / 3, now=False).addErrback(
            lambda f: self.log.failure("The etcd lease keep-alive stopped", f))

    def _renew(self) -> Deferred[None]:
        d = self.http.call("lease/keepalive", {"ID": self.id}, write=False)

        def answered(reply: dict[str, Any]) -> Any:
            if int(reply.get("result", {}).get("TTL", 0)) > 0:
                self.renewed()
                return None
            self.log.warn("The etcd lease of this broker expired (etcd unreachable for more "
                          "than {ttl}s?): the client locks it held are gone; granting a new "
                          "one", ttl=self.ttl)
            return self._grant()

        d.addCallback(answered)
        d.addErrback(lambda _: None)  # etcd away: the outage is logged; try again next time
        return d

    def stop(self) -> Deferred[None]:
        """Stop the keep-alive and revoke the lease, which deletes every lock left on it."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.id is None:
            return succeed(None)
        d = self.http.call("lease/revoke", {"ID": self.id})
        self.id = None
        d.addErrback(lambda _: None)  # unreachable: the lease runs out by itself
        return d


class EtcdLocks:
    """The client locks of one EtcdStore: what its ``acquireLock`` does."""

    def __init__(self, reactor: Any, http: op.EtcdHTTP, lease: NodeLease, key_of: Any,
                 log: Any) -> None:
        self.reactor = reactor
        self.http = http
        self.lease = lease
        self.key_of = key_of  # client id -> lock key
        self.log = log
        self.holder = os.urandom(12).hex().encode()
        self._local: dict[str, DeferredLock] = {}
        #: Client ids whose release failed: the key stays on our live lease, so it is
        #: deleted again after each keep-alive until that works.
        self.stale: set[str] = set()
        lease.renewed = self.retry_releases

    def acquire(self, client_id: str, timeout: float) -> Deferred[ILock]:
        """The lock of ``client_id``, or StorageError after ``timeout`` seconds."""
        deadline = self.reactor.seconds() + timeout
        local = self._local.get(client_id)
        if local is None:
            local = self._local[client_id] = DeferredLock()
        waiting = local.acquire()
        if not waiting.called:
            call = self.reactor.callLater(timeout, waiting.cancel)
            waiting.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        result: Deferred[ILock] = Deferred()

        def locally_held(_: Any) -> None:
            self._try(client_id, local, deadline, 0.005, result)

        def timed_out(failure: Failure) -> None:
            result.errback(StorageError(f"lock for {client_id!r} not acquired in {timeout}s"))

        waiting.addCallbacks(locally_held, timed_out)
        return result

    def _try(self, client_id: str, local: DeferredLock, deadline: float, delay: float,
             result: Deferred[ILock]) -> None:
        """Create the key if absent; retry with a doubling delay (at most 0.1s)."""
        key = self.key_of(client_id)
        d = self.http.call("kv/txn", {
            "compare": [op.absent(key)],
            "success": [op.put(key, self.holder, self.lease.id)],
            "failure": [op.get(key)],
        })

        def answered(reply: dict[str, Any]) -> None:
            held = op.kvs(op.txn_ranges(reply)[0]) if not reply.get("succeeded") else []
            if reply.get("succeeded") or (held and held[0][1] == self.holder):
                result.callback(EtcdLock(self, client_id, local))
                return
            remaining = deadline - self.reactor.seconds()
            if remaining <= 0:  # another broker holds it
                self._release_local(client_id, local)
                result.errback(StorageError(f"lock for {client_id!r} held elsewhere"))
                return
            self.reactor.callLater(min(delay, remaining), self._try, client_id, local,
                                   deadline, min(delay * 2, 0.1), result)

        def failed(failure: Failure) -> None:
            self._release_local(client_id, local)
            result.errback(failure)

        d.addCallbacks(answered, failed)

    def release(self, client_id: str, local: DeferredLock) -> Deferred[Any]:
        """Delete the key if it still holds our id, then hand the local lock on."""
        key = self.key_of(client_id)
        d = self.http.call("kv/txn", {"compare": [op.value_is(key, self.holder)],
                                      "success": [op.delete(key)]})
        d.addBoth(lambda r: (self._release_local(client_id, local), r)[1])
        return d

    def retry_releases(self) -> None:
        """Delete the keys whose release failed, each under its local lock (so that a
        CONNECT taking it meanwhile is not undone)."""
        for client_id in list(self.stale):
            self.stale.discard(client_id)
            local = self._local.get(client_id)
            if local is None:
                local = self._local[client_id] = DeferredLock()
            d = local.acquire()
            d.addCallback(lambda _, c=client_id, lk=local: self.release(c, lk))
            d.addErrback(lambda _, c=client_id: self.stale.add(c))

    def _release_local(self, client_id: str, local: DeferredLock) -> None:
        local.release()
        if not local.locked and not local.waiting and self._local.get(client_id) is local:
            del self._local[client_id]


@implementer(ILock)
class EtcdLock:
    """A client lock held in etcd (and locally, so that local waiters queue in order)."""

    def __init__(self, locks: EtcdLocks, client_id: str, local: DeferredLock) -> None:
        self._locks = locks
        self._client_id = client_id
        self._local: DeferredLock | None = local

    def release(self) -> Deferred[None]:
        local = self._local
        if local is None:
            return succeed(None)
        self._local = None
        d = self._locks.release(self._client_id, local)
        d.addCallbacks(lambda _: None, self._failed)
        return d

    def _failed(self, failure: Failure) -> None:
        self._locks.stale.add(self._client_id)
        self._locks.log.warn("Releasing the etcd lock of {client} failed (tried again after "
                             "each lease keep-alive): {error}", client=self._client_id,
                             error=failure.getErrorMessage())
