"""``?wait=N``: a write counts as stored once N replicas have it (Redis ``WAIT``).

Redis replication is asynchronous: a master acknowledges a write before its replicas
have it, so a failover (Sentinel promoting a replica) loses the writes the replica
had not received, acknowledged MQTT messages among them.  With ``wait=N`` the writes
of one reactor turn on one connection are followed by one ``WAIT N ms`` (it covers
every earlier write of that connection), and each write's Deferred fires only once
WAIT says N replicas have it; fewer within ``wait_timeout`` fails the writes with
:class:`~mqtt_twisted.errors.StorageError`, so the broker does not acknowledge the
message (the publisher resends it, to the new master).  One WAIT per turn and
connection, not per write: the cost is a round trip from the master to its replicas
per turn, not per message.  docs/stores.md has the measured cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mqtt_twisted.errors import StorageError

_UNSET = object()


class ReplicaWait:
    """Gates one connection's writes on the WAIT that follows them (module docstring).

    ``send_wait(replicas, milliseconds)`` sends ``WAIT`` on that connection and returns
    a Deferred of its reply (the number of replicas that have every earlier write).
    """

    def __init__(self, reactor: Any, replicas: int, timeout: float,
                 send_wait: Callable[[int, int], Deferred[Any]]) -> None:
        self.reactor = reactor
        self.replicas = replicas
        self.timeout = timeout
        self.send_wait = send_wait
        #: This turn's writes: [caller's Deferred, the reply (or _UNSET)].
        self._turn: list[list[Any]] | None = None

    def gate(self, reply: Deferred[Any]) -> Deferred[Any]:
        """A Deferred firing with ``reply``'s result once the turn's WAIT confirms it."""
        turn = self._turn
        if turn is None:
            turn = self._turn = []
            self.reactor.callLater(0, self._wait)
        out: Deferred[Any] = Deferred()
        entry = [out, _UNSET]
        turn.append(entry)
        reply.addBoth(self._replied, entry)
        return out

    def _replied(self, result: Any, entry: list[Any]) -> None:
        if isinstance(result, Failure):  # a refused write fails now, WAIT or not
            entry[0].errback(result)
        else:
            entry[1] = result

    def _wait(self) -> None:
        turn, self._turn = self._turn, None
        d = self.send_wait(self.replicas, int(self.timeout * 1000))
        d.addBoth(self._waited, turn)

    def _waited(self, reply: Any, turn: list[list[Any]]) -> None:
        error: Exception | None = None
        if isinstance(reply, Failure):
            error = StorageError(f"Redis WAIT failed: {reply.getErrorMessage()}")
        elif not isinstance(reply, int) or reply < self.replicas:
            error = StorageError(f"only {reply} of {self.replicas} Redis replicas confirmed "
                                 f"the write within {self.timeout}s")
        for out, result in turn:
            if out.called:
                continue
            if error is None and result is not _UNSET:
                out.callback(result)
            else:
                out.errback(error or StorageError("Redis WAIT answered before the write"))
