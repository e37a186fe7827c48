"""The Redis store's client locks: ``SET NX PX`` with a random token, released by a
compare-and-delete script, with a local DeferredLock per client id in front so that
the waiters of one broker queue in order and only one of them polls Redis at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from mqtt_twisted.errors import StorageError
from mqtt_twisted.interfaces import ILock
from mqtt_twisted.store._rediskeys import KeyLayout
from mqtt_twisted.store._redisscripts import call_script


class RedisLocks:
    """The client locks of one RedisStore: what its ``acquireLock`` does."""

    def __init__(self, reactor: Any, options: Any, keys: KeyLayout,
                 link: Callable[[bytes], Any], log: Any) -> None:
        self.reactor = reactor
        self.options = options
        self.keys = keys
        self.link = link  # the store's link for a client id (a client's calls share one)
        self.log = log
        self._local: dict[str, DeferredLock] = {}

    def acquire(self, client_id: str, timeout: float) -> Deferred[ILock]:
        """The lock of ``client_id``, or StorageError after ``timeout`` seconds."""
        reactor = self.reactor
        deadline = reactor.seconds() + timeout
        local = self._local.get(client_id)
        if local is None:
            local = self._local[client_id] = DeferredLock()
        waiting = local.acquire()
        if not waiting.called:
            call = reactor.callLater(timeout, waiting.cancel)
            waiting.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        result: Deferred[ILock] = Deferred()

        def locally_held(_: Any) -> None:
            self._poll(client_id, local, deadline, 0.005, result)

        def timed_out(failure: Failure) -> None:
            result.errback(StorageError(f"lock for {client_id!r} not acquired in {timeout}s"))

        waiting.addCallbacks(locally_held, timed_out)
        return result

    def _poll(self, client_id: str, local: DeferredLock, deadline: float, delay: float,
              result: Deferred[ILock]) -> None:
        """Try SET NX once; retry with a doubling delay (at most 0.1s) until ``deadline``."""
        cid = self.keys.cid(client_id)
        token = os.urandom(16).hex().encode()
        lease = str(int(self.options.lock_lease * 1000)).encode()
        d = self.link(cid).call((b"SET", self.keys.key(b"lock", cid), token, b"NX", b"PX",
                                 lease))

        def answered(reply: Any) -> None:
            if reply is not None:
                result.callback(RedisLock(self, client_id, token, local))
                return
            remaining = deadline - self.reactor.seconds()
            if remaining <= 0:  # another node holds it
                self._release_local(client_id, local)
                result.errback(StorageError(f"lock for {client_id!r} held elsewhere"))
                return
            self.reactor.callLater(min(delay, remaining), self._poll, client_id, local,
                                   deadline, min(delay * 2, 0.1), result)

        def failed(failure: Failure) -> None:
            self._release_local(client_id, local)
            result.errback(failure)

        d.addCallbacks(answered, failed)

    def release(self, client_id: str, token: bytes, local: DeferredLock) -> Deferred[Any]:
        """Delete the Redis lock if it still holds ``token``, and hand the local lock on."""
        cid = self.keys.cid(client_id)
        # Sent before the next local waiter's SET on the same connection, so it goes first.
        d = call_script(self.link(cid), "release", (self.keys.key(b"lock", cid),), (token,))
        self._release_local(client_id, local)
        return d

    def _release_local(self, client_id: str, local: DeferredLock) -> None:
        local.release()
        if not local.locked and not local.waiting and self._local.get(client_id) is local:
            del self._local[client_id]


@implementer(ILock)
class RedisLock:
    """A client lock held in Redis (and locally, so that local waiters queue in order)."""

    def __init__(self, locks: RedisLocks, client_id: str, token: bytes,
                 local: DeferredLock) -> None:
        self._locks = locks
        self._client_id = client_id
        self._token = token
        self._local: DeferredLock | None = local

    def release(self) -> Deferred[None]:
        local = self._local
        if local is None:
            return succeed(None)
        self._local = None
        d = self._locks.release(self._client_id, self._token, local)
        d.addCallbacks(lambda _: None, self._failed)
        return d

    def _failed(self, failure: Failure) -> None:
        self._locks.log.warn("Releasing the Redis lock of {client} failed (it expires by "
                             "itself): {error}", client=self._client_id,
                             error=failure.getErrorMessage())
